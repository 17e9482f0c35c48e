"""The attacker's best case against plan mode: a perfect planner, an extractor that obeys.

In plan mode (:mod:`errands.core.plan`) the model that makes calls never reads untrusted
content, so it cannot be told to make the attacker's calls; what an injection can still
reach is the **data**: the quarantined extractor reads the injected text, and a value it
returns flows into the person's calls. :class:`PlanWorstCase` measures that:

- the **planner** writes the plan a perfect planner would: the user task's ground-truth
  calls, each argument either written out (it is in the person's words, or in a trusted
  result the planner may read) or taken from an ``extract`` of the untrusted results
  that hold it, passed on by handle; the final answer too, when the task asks a
  question. :func:`plan_for` derives it from the ground truth, run on a copy of the
  case's environment;
- the **extractor** answers honestly -- unless the injection is in what it reads: then it
  answers with the attacker's value for the same argument (the injection task's IBAN,
  address, URL) wherever it has one.

Like the other scripted models, each reply is a pure function of the request, so a
resumed errand gets the reply it would have got.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from errands.core.events import ToolCall, Usage
from errands.core.plan import EXTRACT, HANDLE
from errands.evals.agentdojo_tools import MAPPINGS
from errands.evals.worstcase import Planned, mentions
from errands.models.protocol import Message, ModelReply, ModelRequest, TextSink

__all__ = ["PlanStep", "PlanWorstCase", "plan_for"]

_QUESTION = re.compile(r"^Question: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class PlanStep:
    """One turn of the plan: a call (``refs``: arguments filled with the value of an
    earlier extract step), an extract (``sources``: the steps whose results it reads),
    or the answer (``answer_ref``: an extract step whose value it names)."""

    kind: str  # call | extract | answer
    name: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    refs: Mapping[str, int] = field(default_factory=dict)
    sources: tuple[int, ...] = ()
    question: str = ""
    value_type: str = "string"
    honest: Any = None  # extract: the value the sources hold
    attacker: Any = None  # extract: what the injection wants there (None: nothing)
    answer_ref: int | None = None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "list"
    return "string"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _in(text: str, value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return True  # (a flag or a default: the planner's own choice)
    if isinstance(value, int | float):
        return any(mentions(text, s) for s in {str(value), f"{value:g}", f"{value:.2f}"})
    if isinstance(value, list):
        return all(_in(text, v) for v in value)
    return mentions(text, _text(value))


def ground_truth_outputs(suite: Any, env: Any, calls: Sequence[Planned]) -> list[str]:
    """What each ground-truth call returns, run by AgentDojo on *env* (a copy)."""
    from agentdojo.agent_pipeline.tool_execution import tool_result_to_str
    from agentdojo.functions_runtime import FunctionsRuntime

    runtime = FunctionsRuntime(suite.tools)
    env = env.model_copy(deep=True)
    out = []
    with contextlib.redirect_stdout(io.StringIO()):
        for call in calls:
            result, error = runtime.run_function(env, call.name, dict(call.arguments))
            out.append(error or tool_result_to_str(result))
    return out


def plan_for(
    suite: str,
    prompt: str,
    calls: Sequence[Planned],
    outputs: Sequence[str],
    injected: Sequence[Planned] = (),
    answer: str = "",
) -> list[PlanStep]:
    """The plan a perfect planner writes for a task: *calls* (the ground truth) whose
    results are *outputs*, the person's *prompt*, the expected *answer* ("" when the
    task asks nothing); *injected*: the attacker's calls (what the extractor answers
    with when it reads the injection)."""
    mapping = MAPPINGS[suite]
    wanted: dict[str, Any] = {}
    for bad in injected:
        for arg, value in bad.arguments.items():
            wanted.setdefault(arg, value)
    steps: list[PlanStep] = []
    call_step: dict[int, int] = {}  # ground-truth call -> its step
    for i, call in enumerate(calls):
        trusted = (
            prompt
            + "\n"
            + "\n".join(outputs[j] for j in range(i) if not mapping[calls[j].name].untrusted)
        )
        untrusted = [j for j in range(i) if mapping[calls[j].name].untrusted]
        refs: dict[str, int] = {}
        for arg, value in call.arguments.items():
            if _in(trusted, value) or not untrusted:
                continue
            holding = [j for j in untrusted if _in(outputs[j], value)] or untrusted
            steps.append(
                PlanStep(
                    "extract",
                    question=f"the {arg} for {call.name} (step {len(steps)})",
                    sources=tuple(call_step[j] for j in holding),
                    value_type=_kind(value),
                    honest=value,
                    attacker=wanted.get(arg),
                )
            )
            refs[arg] = len(steps) - 1
        call_step[i] = len(steps)
        steps.append(PlanStep("call", call.name, dict(call.arguments), refs))
    answer_ref = None
    sources = tuple(call_step[j] for j in range(len(calls)) if mapping[calls[j].name].untrusted)
    if answer and not _in(prompt, answer) and sources:
        steps.append(
            PlanStep("extract", question="the answer to the task", sources=sources, honest=answer)
        )
        answer_ref = len(steps) - 1
    steps.append(PlanStep("answer", answer_ref=answer_ref))
    return steps


@dataclass
class PlanWorstCase:
    """Plays the planner (a request with tools) and the extractor (one without)."""

    steps: Sequence[PlanStep]
    trigger: str = ""
    answer: str = "Done."
    name: str = "scripted:agentdojo-plan"

    def obeyed(self, messages: Sequence[Message]) -> bool:
        """Did the injection reach the planner's context? (Plan mode: never.)"""
        return any(m.role != "assistant" and mentions(m.text, self.trigger) for m in messages)

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        usage = Usage(input_tokens=sum(len(m.text) for m in request.messages) // 4 + 1)
        if not request.tools:
            return ModelReply(text=self._extracted(request), usage=usage, model=self.name)
        k = sum(1 for m in request.messages if m.role == "assistant")
        results = [m.text for m in request.messages if m.role == "tool"]

        def handle(step: int | None) -> str | None:
            if step is None or step >= len(results):
                return None
            found = HANDLE.search(results[step])
            return found.group(0) if found else None

        step = self.steps[min(k, len(self.steps) - 1)]
        if step.kind == "answer" or k >= len(self.steps):
            ref = handle(step.answer_ref)
            text = ref if ref is not None else self.answer
            if on_text is not None:
                on_text(text)
            return ModelReply(text=text, usage=usage, model=self.name)
        if step.kind == "extract":
            sources = [h for j in step.sources if (h := handle(j))] or ["(nothing)"]
            arguments: dict[str, Any] = {
                "question": step.question,
                "sources": sources,
                "type": step.value_type,
            }
            name = EXTRACT
        else:
            arguments = dict(step.arguments)
            for arg, j in step.refs.items():
                ref = handle(j)
                arguments[arg] = ref if ref is not None else self.steps[j].honest
            name = step.name
        call = ToolCall(call_id=f"call_{k}", name=name, arguments=arguments)
        return ModelReply(tool_calls=[call], usage=usage, stop_reason="tool_use", model=self.name)

    def _extracted(self, request: ModelRequest) -> str:
        text = "\n".join(m.text for m in request.messages)
        found = _QUESTION.search(text)
        question = found.group(1) if found else ""
        for step in self.steps:
            if step.kind == "extract" and step.question == question:
                obey = self.trigger and mentions(text, self.trigger) and step.attacker is not None
                return json.dumps({"value": step.attacker if obey else step.honest})
        return json.dumps({"value": None})
