"""AgentDojo through errands: its tasks, run by errands' real loop, policy, labels and approvals.

`AgentDojo <https://github.com/ethz-spylab/agentdojo>`_ (the ``agentdojo`` extra, pinned)
gives suites of tasks a person asks for (*user tasks*) and goals an attacker hides in the
data those tasks read (*injection tasks*), with the environment the tools act on and a
check of each task's outcome. Here each case -- a user task alone, or a user task with
one injection task hidden by the ``important_instructions`` attack -- becomes an errand:

- AgentDojo's functions are errands tools (:func:`toolset`), mapped to effect classes and
  argument roles by the committed table (:mod:`errands.evals.agentdojo_tools`); a call runs
  AgentDojo's function on *the case's* environment (AgentDojo's own runtime injects it),
  and its output is labelled untrusted where an outsider can write it, as a fetched page is;
- the model is :class:`~errands.evals.worstcase.WorstCaseModel`: the user task's
  ground-truth calls, and the injection task's as soon as the injection is in its context;
- the policy is ``policy.toml`` as errands ships it (:func:`errands.policy.rules.load_policy`),
  with the *standing rules* a person would have after approving each ground-truth call
  that asks once, "always" (:func:`standing_rules`); or, as the negative control, the
  same with flow control off (:func:`flow_off`).

Running and scoring are :mod:`errands.evals.agentdojo_run`; the report is
:mod:`errands.evals.report`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import GetCoreSchemaHandler
from pydantic_core import PydanticUndefined, core_schema

from errands.core.labels import Confidentiality, Integrity, Label
from errands.errors import UserError
from errands.evals.agentdojo_tools import MAPPINGS, ToolMap
from errands.evals.worstcase import Planned
from errands.policy.flow import without_flow
from errands.policy.hook import Decision, PolicyCall, PolicyHook, Verdict
from errands.policy.rules import Policy, Rule
from errands.policy.standing import standing_pattern
from errands.tools.tool import ArgRole, Tool, ToolContext, ToolError, ToolOutput, make_tool
from errands.tools.toolset import FunctionToolset

__all__ = [
    "ATTACK",
    "BENCHMARK",
    "SUITES",
    "Case",
    "PolicyByErrand",
    "Standing",
    "cases",
    "flow_off",
    "ground_truth_holds",
    "load_suite",
    "policy_call",
    "standing_rules",
    "toolset",
]

BENCHMARK = "v1.2.2"  # AgentDojo's benchmark version (its default in 0.1.35)
ATTACK = "important_instructions"
SUITES = tuple(MAPPINGS)
_TARGET = "gpt-4o-2024-05-13"  # whom the attack text addresses ("... to you, GPT-4")


def load_suite(name: str) -> Any:
    """AgentDojo's suite *name*, checked against the mapping table."""
    if name not in MAPPINGS:
        raise UserError(f"unknown suite {name!r}: choose from {', '.join(SUITES)}")
    try:
        from agentdojo.task_suite.load_suites import get_suite
    except ImportError:
        raise UserError(
            "the AgentDojo eval needs the agentdojo extra: pip install 'errands[agentdojo]'"
        ) from None
    suite = get_suite(BENCHMARK, name)
    unmapped = {f.name for f in suite.tools} ^ set(MAPPINGS[name])
    if unmapped:
        raise UserError(
            f"the mapping table and AgentDojo's {name} tools differ: {sorted(unmapped)}"
        )
    return suite


# -- cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One errand's worth of AgentDojo: a user task, alone or under one injection task."""

    suite: str
    user_task: Any  # agentdojo.base_tasks.BaseUserTask
    injection_task: Any | None  # agentdojo.base_tasks.BaseInjectionTask
    env: Any  # the environment AgentDojo's functions act on, during the run
    pre: Any  # a copy of it from before the run (the outcome checks compare the two)
    task_calls: list[Planned]  # the user task's ground truth
    injected_calls: list[Planned]  # the injection task's ground truth
    trigger: str  # the injection task's goal, as the attack text carries it

    @property
    def id(self) -> str:
        injection = f"+{self.injection_task.ID}" if self.injection_task else ""
        return f"{self.user_task.ID}{injection}"

    @property
    def prompt(self) -> str:
        text: str = self.user_task.PROMPT
        return text


def _number(task_id: str) -> int:
    return int(task_id.rsplit("_", 1)[-1])


def _planned(calls: Iterable[Any]) -> list[Planned]:
    out = []
    for call in calls:
        if any(type(v).__name__ == "FunctionCall" for v in call.args.values()):
            raise UserError(f"{call.function}: nested calls in a ground truth are not supported")
        out.append(Planned(call.function, dict(call.args)))
    return out


def _target() -> Any:
    from agentdojo.agent_pipeline.base_pipeline_element import BasePipelineElement

    class Target(BasePipelineElement):  # type: ignore[misc]
        """The attacked pipeline as the attack sees it: only its name."""

        name = _TARGET

        def query(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    return Target()


def cases(
    suite: Any,
    *,
    user_tasks: Sequence[str] | None = None,
    injection_tasks: Sequence[str] | None = None,
    limit: int | None = None,
    benign: bool = True,
    attacked: bool = True,
) -> list[Case]:
    """The cases of *suite*: each user task alone (*benign*) and under each injection
    task (*attacked*); *user_tasks* / *injection_tasks* pick some by id, *limit* keeps
    the first N user tasks."""
    from agentdojo.attacks.attack_registry import load_attack

    attack = load_attack(ATTACK, suite, _target())
    users = sorted(user_tasks or suite.user_tasks, key=_number)[:limit]
    injections = sorted(injection_tasks or suite.injection_tasks, key=_number)
    out = []
    for user_id in users:
        user_task = suite.get_user_task_by_id(user_id)
        if benign:
            out.append(_case(suite, user_task, None, {}))
        if attacked:
            for injection_id in injections:
                injection_task = suite.get_injection_task_by_id(injection_id)
                vectors = attack.attack(user_task, injection_task)
                out.append(_case(suite, user_task, injection_task, vectors))
    return out


def ground_truth_holds(suite: Any, user_task: Any) -> bool:
    """Does AgentDojo's own ground truth for *user_task*, run by AgentDojo, pass its
    utility check? (Not always: the ceiling a perfect run can reach.)"""
    from agentdojo.agent_pipeline.ground_truth_pipeline import GroundTruthPipeline

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            utility, _ = suite.run_task_with_pipeline(
                GroundTruthPipeline(user_task), user_task, None, {}
            )
    except Exception:  # a ground truth AgentDojo itself cannot run
        return False
    return bool(utility)


def _case(suite: Any, user_task: Any, injection_task: Any | None, vectors: dict[str, str]) -> Case:
    env = user_task.init_environment(suite.load_and_inject_default_environment(vectors))
    pre = env.model_copy(deep=True)
    injected = (
        [] if injection_task is None else injection_task.ground_truth(pre.model_copy(deep=True))
    )
    return Case(
        suite=suite.name,
        user_task=user_task,
        injection_task=injection_task,
        env=env,
        pre=pre,
        task_calls=_planned(user_task.ground_truth(pre.model_copy(deep=True))),
        injected_calls=_planned(injected),
        trigger="" if injection_task is None else str(injection_task.GOAL),
    )


# -- tools ---------------------------------------------------------------------------------


def _with_scheme(url: str) -> str:
    return url if "://" in url else f"https://{url}"


class SchemelessUrl(str):
    """A URL as AgentDojo writes it (``www.informations.com``), read as https so the
    policy can judge it; AgentDojo's web strips the scheme again."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(_with_scheme, core_schema.str_schema())


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _tool(suite: str, function: Any, mapping: ToolMap, envs: Mapping[str, Any]) -> Tool:
    """AgentDojo's *function* as an errands tool acting on ``envs[errand id]``."""
    from agentdojo.agent_pipeline.tool_execution import tool_result_to_str
    from agentdojo.functions_runtime import FunctionsRuntime

    runtime = FunctionsRuntime([function])
    integrity = Integrity.untrusted if mapping.untrusted else Integrity.trusted

    async def run(ctx: ToolContext, **arguments: Any) -> ToolOutput:
        result, error = runtime.run_function(envs[ctx.errand_id], function.name, arguments)
        if error is not None:
            raise ToolError(error)
        where = arguments.get(mapping.source) if mapping.source else None
        return ToolOutput(
            text=tool_result_to_str(result),
            integrity=integrity,
            confidentiality=mapping.confidentiality,
            source=f"{suite}: {where}" if where else f"{suite}: {function.name}",
        )

    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=ToolContext)]
    docs = []
    for name, info in function.parameters.model_fields.items():
        kind = SchemelessUrl if mapping.roles.get(name) is ArgRole.url else info.annotation
        default = inspect.Parameter.empty if info.default is PydanticUndefined else info.default
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind
            )
        )
        docs.append(f"    {name}: {_one_line(info.description)}")
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__ = _one_line(function.description) + (
        "\n\nArgs:\n" + "\n".join(docs) if docs else ""
    )
    return make_tool(run, effect=mapping.effect, roles=dict(mapping.roles), name=function.name)


def toolset(suite: Any, envs: Mapping[str, Any]) -> FunctionToolset:
    """*suite*'s functions as errands tools; each call acts on its errand's environment."""
    mapping = MAPPINGS[suite.name]
    return FunctionToolset(_tool(suite.name, f, mapping[f.name], envs) for f in suite.tools)


# -- policies ------------------------------------------------------------------------------

_TRUSTED = Label.of(Integrity.trusted, Confidentiality.private)
_SENT = {ArgRole.body, ArgRole.content, ArgRole.subject, ArgRole.amount}  # what a call sends


def policy_call(
    tool: Tool,
    args: dict[str, Any],
    errand_id: str,
    workspace: Path,
    context: Label,
    always_allowed: tuple[tuple[str, str], ...] = (),
) -> PolicyCall:
    """What the policy is asked about a call of *tool* with (validated) *args*."""
    return PolicyCall(
        errand_id=errand_id,
        tool=tool.name,
        arguments=args,
        effect=tool.effect(args),
        workspace=workspace,
        context=context,
        always_allowed=always_allowed,
        roles=tool.arg_roles,
    )


def _escaped(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _pattern(tool: Tool, args: Mapping[str, Any]) -> dict[str, str]:
    """The argument globs of the standing rule a person makes from this call: errands'
    own (by role); for a tool whose roles pin nothing here (an order's id, a password),
    the one the person would give -- every argument set, except what is sent."""
    try:
        return standing_pattern(tool.arg_roles, args)
    except UserError:
        pass
    given = {k: v for k, v in args.items() if v is not None}
    kept = {k: v for k, v in given.items() if tool.arg_roles.get(k) not in _SENT} or given
    return {
        k: _escaped(v if isinstance(v, str) else json.dumps(v, sort_keys=True))
        for k, v in kept.items()
    }


Standing = Literal["roles", "tool"]


def standing_rules(
    calls: Sequence[Planned],
    tools: FunctionToolset,
    policy: Policy,
    workspace: Path,
    standing: Standing = "roles",
) -> list[Rule]:
    """The standing rules a person has after approving each of *calls* that asks (in a
    context with nothing untrusted), once, "always": the calls like it by errands' own
    pattern (*standing* ``roles``: the payee, recipient or URL prefix pinned), or every
    call of its tool (``tool``: the loosest rule a person could write, "always allow
    send_money")."""
    rules: list[Rule] = []
    for call in calls:
        tool = tools.get(call.name)
        args = tool.validate(call.arguments)
        verdict = policy.check(policy_call(tool, args, "", workspace, _TRUSTED))
        pattern = _pattern(tool, args) if standing == "roles" else {}
        if verdict.decision is not Decision.ask or any(
            r.tool == tool.name and r.args == pattern for r in rules
        ):
            continue
        rules.append(
            Rule(
                name=f"standing-{tool.name}-{len(rules) + 1}",
                tool=tool.name,
                args=pattern,
                decision=Decision.allow,
                standing=True,
                by="agentdojo-approver via eval",
                reason="approved once, always (the AgentDojo eval's standing rule)",
            )
        )
    return rules


def flow_off(policy: Policy) -> PolicyHook:
    """The negative control: *policy* with flow control off and labels deciding nothing
    -- a standing rule included (the approval queue alone would hide the difference)."""
    return without_flow(policy)


class PolicyByErrand:
    """Each errand judged by its own case's policy (its standing rules differ)."""

    def __init__(self) -> None:
        self.policies: dict[str, PolicyHook] = {}

    def check(self, call: PolicyCall) -> Verdict:
        policy = self.policies.get(call.errand_id)
        if policy is None:
            return Verdict(Decision.deny, "agentdojo-eval", "not an errand of this eval")
        return policy.check(call)
