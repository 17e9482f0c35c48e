"""Policy rules: allow / ask / deny on tool name, effect class and argument patterns.

The policy lives in ``ERRANDS_HOME/policy.toml``, written with commented defaults on
first run and never rewritten afterwards. Every rule that matches a call votes (when none
does, the call's effect-class default votes instead); the strictest vote wins -- **deny
beats ask beats allow, whatever their order** -- and the winning rule is named in the
verdict (``errands policy explain`` prints it).

Built-in rules that no file can loosen:

- ``outside-workspace``: an argument the tool declares a path (its role, not its name)
  that leads outside the errand's workspace is denied (the file tools also refuse it;
  this stops it before any intent);
- ``always-allowed``: an ``ask`` becomes ``allow`` when the person approved this tool
  "always, for this errand" with a pattern the arguments match. It never overrides a
  ``deny``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from errands.config import ConfigError
from errands.core.events import EffectClass
from errands.policy.hook import Decision, PolicyCall, Verdict
from errands.tools.tool import ArgRole

__all__ = ["DEFAULT_POLICY_TOML", "Policy", "Rule", "load_policy", "pattern_matches"]

SEVERITY = {Decision.allow: 0, Decision.ask: 1, Decision.deny: 2}

DEFAULT_POLICY_TOML = """\
# errands policy -- who may do what without asking you.
#
# Every tool call passes this policy before it runs. Each matching rule votes
# allow, ask or deny; the strictest vote wins (deny beats ask beats allow), whatever
# the order of the rules. A call no rule matches is decided by its effect class. `errands policy explain TOOL 'ARGS-JSON'` shows the decision
# and the rule that made it. errands writes this file once, on first run, and never
# rewrites it: your edits survive upgrades.
#
# Built in, and not loosened by anything here: a path outside the errand's workspace
# is denied; "always allow" approvals never override a deny.

# Decisions by effect class (what a tool call can do to the world), for the calls
# that no rule below matches.
[effects]
none = "allow"          # pure computation
read = "allow"          # reading inside the workspace
write_local = "allow"   # writing inside the workspace
network = "allow"       # fetching from the network (GET); can leak data through a URL
external = "ask"        # changing something outside: sending, posting, deleting remotely
spend = "ask"           # spending money
irreversible = "ask"    # anything that cannot be undone

# Rules match on tool name (a glob), effect class and argument patterns (globs on
# the argument's text). Examples -- uncomment and adapt:
#
# [[rules]]
# name = "never-touch-production"
# tool = "http_request"
# args = { url = "https://prod.example.com/*" }
# decision = "deny"
# reason = "production is off limits for errands"
#
# [[rules]]
# name = "status-page-posts-are-fine"
# tool = "http_request"
# args = { method = "POST", url = "https://status.example.com/api/*" }
# decision = "allow"
#
# [[rules]]
# name = "ask-before-any-fetch"
# effect = "network"
# decision = "ask"
"""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    decision: Decision
    tool: str | None = None  # glob on the tool name
    effect: EffectClass | None = None
    args: dict[str, str] = Field(default_factory=dict)  # argument name -> glob on its text
    reason: str = ""

    def matches(self, call: PolicyCall) -> bool:
        if self.tool is not None and not fnmatch.fnmatchcase(call.tool, self.tool):
            return False
        if self.effect is not None and call.effect is not self.effect:
            return False
        return pattern_matches(self.args, call.arguments)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def pattern_matches(pattern: Mapping[str, str], arguments: Mapping[str, Any]) -> bool:
    """Every named argument exists and its text matches the glob."""
    return all(
        name in arguments and fnmatch.fnmatchcase(_text(arguments[name]), glob)
        for name, glob in pattern.items()
    )


DEFAULT_EFFECTS: dict[EffectClass, Decision] = {
    EffectClass.none: Decision.allow,
    EffectClass.read: Decision.allow,
    EffectClass.write_local: Decision.allow,
    EffectClass.network: Decision.allow,
    EffectClass.external: Decision.ask,
    EffectClass.spend: Decision.ask,
    EffectClass.irreversible: Decision.ask,
}


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effects: dict[EffectClass, Decision] = Field(default_factory=lambda: dict(DEFAULT_EFFECTS))
    rules: list[Rule] = []

    def check(self, call: PolicyCall) -> Verdict:
        """The strictest vote; ties go to the first such vote (see the module docstring).

        The votes: ``outside-workspace`` if a path leads out, then every rule that
        matches, in file order -- or, when no rule matches, the effect-class default. A
        rule is the person's word about these calls in particular, so it decides them in
        place of the class default, which an allow rule may therefore loosen; among the
        rules, deny beats ask beats allow whatever their order.
        """
        votes: list[Verdict] = []
        if _outside_workspace(call):
            votes.append(
                Verdict(Decision.deny, "outside-workspace", "the path leads outside the workspace")
            )
        matched = [Verdict(r.decision, r.name, r.reason) for r in self.rules if r.matches(call)]
        if matched:
            votes.extend(matched)
        else:
            default = self.effects.get(call.effect, Decision.ask)
            votes.append(
                Verdict(default, f"effects.{call.effect.value}", _effect_reason(call, default))
            )
        verdict = max(votes, key=lambda v: SEVERITY[v.decision])  # first of the strictest
        if verdict.decision is Decision.ask:
            for tool, pattern_json in call.always_allowed:
                if tool == call.tool and pattern_matches(json.loads(pattern_json), call.arguments):
                    return Verdict(
                        Decision.allow,
                        "always-allowed",
                        f"you allowed {tool} with arguments like these for this errand",
                    )
        return verdict


def _effect_reason(call: PolicyCall, decision: Decision) -> str:
    if decision is Decision.ask:
        return {
            EffectClass.external: "it changes something outside errands (a send, a post, a delete)",
            EffectClass.spend: "it spends money",
            EffectClass.irreversible: "it cannot be undone",
        }.get(call.effect, f"{call.effect.value} actions need your approval")
    return ""


def _outside_workspace(call: PolicyCall) -> bool:
    """Does any argument the tool declares a path lead outside the workspace?"""
    workspace: str | None = None  # resolved only when there is a path to judge
    for name, role in call.roles.items():
        raw = call.arguments.get(name)
        if role is not ArgRole.path or not isinstance(raw, str):
            continue
        if workspace is None:
            workspace = os.path.realpath(call.workspace)
        target = os.path.realpath(os.path.join(workspace, raw))
        if os.path.commonpath([workspace, target]) != workspace:
            return True
    return False


def load_policy(home: Path, *, create: bool = True) -> Policy:
    """The policy in ``home/policy.toml``; written with commented defaults if missing."""
    path = home / "policy.toml"
    if not path.exists():
        if not create:
            return Policy()
        home.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x", encoding="utf-8") as fh:  # never overwrite
                fh.write(DEFAULT_POLICY_TOML)
        except FileExistsError:
            pass
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        effects = data.get("effects", {})
        if not isinstance(effects, dict):
            raise ConfigError(f"{path}: [effects] must be a table")
        policy = Policy.model_validate({**data, "effects": {**DEFAULT_EFFECTS, **effects}})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    names = [r.name for r in policy.rules]
    if len(names) != len(set(names)):
        raise ConfigError(f"{path}: two rules share a name; names must be unique")
    return policy
