"""Policy rules: allow / ask / deny on tool name, effect class and argument patterns.

The policy lives in ``ERRANDS_HOME/policy.toml``, written with commented defaults on
first run and never rewritten afterwards. Every rule that matches a call votes (when none
does, the call's effect-class default votes instead); the strictest vote wins -- **deny
beats ask beats allow, whatever their order** -- and the winning rule is named in the
verdict (``errands policy explain`` prints it).

Rules are matched on what the call will actually do, not on how it is spelled: an
argument the tool declares a URL is matched as its canonical URL, one it declares a
path as its canonical path relative to the workspace (symbolic links followed), a
method in upper case (:mod:`errands.tools.canonical`; :class:`CallValues`). A rule's own
URL or path glob is spelled the same way before it is matched.

Built-in votes that no file can loosen:

- ``outside-workspace`` (deny): an argument the tool declares a path (its role, not its
  name) that leads outside the errand's workspace (the file tools also refuse it; this
  stops it before any intent);
- ``unreadable-url`` (deny): an argument the tool declares a URL that is not a URL
  errands can read -- no rule could be matched on it;
- ``executes-later`` (ask): a call that writes (effect ``write_local`` or above) to a
  path other programs run or trust later (:data:`~errands.policy.executable.EXECUTES_LATER`);
- ``always-allowed``: an ``ask`` becomes ``allow`` when the person approved this tool
  "always, for this errand" with a pattern the arguments match. It never overrides a
  ``deny``, nor an ``executes-later`` ask, nor flow control's;
- ``flow-untrusted`` / ``flow-private`` (ask, or deny with ``[flow]``): flow control
  (:mod:`errands.policy.flow`) -- a consequential call steered by untrusted content, or
  private data leaving for a destination outside ``[trusted]`` and the person's words.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from errands.config import ConfigError
from errands.core.events import EffectClass
from errands.policy.executable import ExecutesLater, executes_later
from errands.policy.flow import FlowSettings, Trusted, flow_verdict
from errands.policy.hook import Decision, PolicyCall, Verdict
from errands.tools.canonical import (
    CanonicalPath,
    UrlError,
    canonical_path,
    canonical_url,
    path_pattern,
    url_pattern,
)
from errands.tools.tool import ArgRole

__all__ = [
    "DEFAULT_POLICY_TOML",
    "CallValues",
    "Policy",
    "Rule",
    "load_policy",
    "parse_policy",
    "pattern_matches",
]

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
# is denied, and so is a URL errands cannot read; a write to a file other programs run
# or trust later (.git/config, .envrc, .github/workflows/...) is asked about; "always
# allow" approvals never override a deny or that ask.
#
# URL and path arguments are matched in their canonical spelling (lower-case scheme
# and host, no default port, no user@, ".." resolved; paths relative to the workspace,
# symbolic links followed); URL and path globs below are spelled the same way.
# errands re-reads this file within 2 seconds of a change (`errands policy reload`
# checks it); a file that is not valid is refused and the previous policy is kept.

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

# Flow control: once something an outsider could have written (a web page, a mail, a
# watch's new items) is in an errand's context, a call that changes something outside,
# spends or cannot be undone -- or a fetch to a host you did not name -- asks you,
# unless each of its arguments comes from your own words or the lists below; and
# private data (a file's contents, a mail) never goes to a place outside them without
# asking. "Always allow" approvals never turn these asks into an allow.
[trusted]
domains = []        # e.g. ["example.com"]: it and its subdomains
recipients = []     # e.g. ["alice@example.com", "@example.com"]
payees = []         # e.g. ["ACME Ltd", "DE89370400440532013000"]

# [flow]
# untrusted_control = "ask"   # or "deny"
# private_data = "ask"        # or "deny"
"""


class CallValues:
    """The values a call's arguments are judged by: canonical for the roles that name a
    place, computed once per call and only when something asks.

    - a **URL** role: the canonical URL text (:func:`~errands.tools.canonical.canonical_url`);
      one errands cannot read is :attr:`unreadable`;
    - a **path** role: the canonical path (relative to the workspace, links followed;
      :func:`~errands.tools.canonical.canonical_path`); one that leads out is :attr:`outside`;
    - a **method** role: upper case;
    - anything else, and a value that is not a string: its text (JSON for non-strings).
    """

    __slots__ = ("_paths", "_urls", "call", "outside", "unreadable")

    def __init__(self, call: PolicyCall) -> None:
        self.call = call
        self._paths: dict[str, CanonicalPath] = {}
        self._urls: dict[str, str] = {}
        self.outside: list[str] = []  # path arguments that lead outside the workspace
        self.unreadable: list[tuple[str, str]] = []  # (URL argument, why) that cannot be read
        for name, role in call.roles.items():
            raw = call.arguments.get(name)
            if not isinstance(raw, str):
                continue
            if role is ArgRole.path:
                try:
                    self._paths[name] = canonical_path(raw, call.workspace)
                except (OSError, ValueError):
                    self.outside.append(name)
            elif role is ArgRole.url:
                try:
                    self._urls[name] = canonical_url(raw).text
                except UrlError as exc:
                    self.unreadable.append((name, str(exc)))

    def path(self, name: str) -> CanonicalPath | None:
        return self._paths.get(name)

    def matches(self, name: str, glob: str) -> bool:
        """Does argument *name* exist and match *glob* (spelled like its canonical value)?"""
        arguments = self.call.arguments
        if name not in arguments:
            return False
        value = arguments[name]
        role = self.call.roles.get(name)
        if isinstance(value, str) and role is not None:
            if role is ArgRole.url:  # (one that cannot be read is denied anyway)
                url = self._urls.get(name)
                return url is not None and fnmatch.fnmatchcase(url, url_pattern(glob))
            if role is ArgRole.path:  # (one that leads out is denied anyway)
                where = self._paths.get(name)
                if where is None:
                    return False
                pattern = path_pattern(glob)
                text = where.absolute if pattern.startswith("/") else where.relative
                return fnmatch.fnmatchcase(text, pattern)
            if role is ArgRole.method:
                return fnmatch.fnmatchcase(value.strip().upper(), glob.strip().upper())
        return fnmatch.fnmatchcase(_text(value), glob)

    def all_match(self, pattern: Mapping[str, str]) -> bool:
        return all(self.matches(name, glob) for name, glob in pattern.items())


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    decision: Decision
    tool: str | None = None  # glob on the tool name
    effect: EffectClass | None = None
    args: dict[str, str] = Field(default_factory=dict)  # argument name -> glob on its value
    reason: str = ""
    # a standing approval (errands.policy.standing): who made it, when. After untrusted
    # content entered the errand's context it allows only what flow control also lets
    # through (its ask outvotes the rule's allow): never a steered call
    standing: bool = False
    by: str = ""
    created: str = ""

    def matches(self, call: PolicyCall, values: CallValues | None = None) -> bool:
        if self.tool is not None and not fnmatch.fnmatchcase(call.tool, self.tool):
            return False
        if self.effect is not None and call.effect is not self.effect:
            return False
        return (values or CallValues(call)).all_match(self.args)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def pattern_matches(pattern: Mapping[str, str], arguments: Mapping[str, Any]) -> bool:
    """Every named argument exists and its text matches the glob (no roles: raw text)."""
    return all(
        name in arguments and fnmatch.fnmatchcase(_text(arguments[name]), glob)
        for name, glob in pattern.items()
    )


_WRITES = frozenset(EffectClass) - {EffectClass.none, EffectClass.read}


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
    trusted: Trusted = Trusted()  # destinations the person vouches for (flow control)
    flow: FlowSettings = FlowSettings()

    def check(self, call: PolicyCall) -> Verdict:
        """The strictest vote; ties go to the first such vote (see the module docstring).

        The votes: ``outside-workspace`` if a path leads out, ``unreadable-url`` if a URL
        cannot be read, ``executes-later`` if the call writes a file other programs run,
        then every rule that matches, in file order -- or, when no rule matches, the
        effect-class default. A rule is the person's word about these calls in
        particular, so it decides them in place of the class default, which an allow
        rule may therefore loosen; among the rules, deny beats ask beats allow whatever
        their order. Arguments are matched by :meth:`values`.
        """
        values = self.values(call)
        votes: list[Verdict] = []
        if values.outside:
            votes.append(
                Verdict(Decision.deny, "outside-workspace", "the path leads outside the workspace")
            )
        for name, why in values.unreadable:
            votes.append(Verdict(Decision.deny, "unreadable-url", f"{name}: {why}"))
        later = self.executes_later(call, values)
        if later is not None:
            where, entry = later
            votes.append(
                Verdict(
                    Decision.ask,
                    "executes-later",
                    f"{where} is a file other programs run or trust: {entry.why}",
                )
            )
        matched = [
            Verdict(r.decision, r.name, r.reason) for r in self.rules if r.matches(call, values)
        ]
        if matched:
            votes.extend(matched)
        else:
            default = self.effects.get(call.effect, Decision.ask)
            votes.append(
                Verdict(default, f"effects.{call.effect.value}", _effect_reason(call, default))
            )
        flow = self.flow_check(call)
        if flow is not None:
            votes.append(flow)
        verdict = max(votes, key=lambda v: SEVERITY[v.decision])  # first of the strictest
        if flow is not None and flow.decision is verdict.decision and flow is not verdict:
            # the card says what flow control found (where an argument came from, what
            # data would leave), beside the vote that also asks ("it spends money")
            verdict = Verdict(flow.decision, flow.rule, f"{verdict.reason}; {flow.reason}")
        if verdict.decision is Decision.ask and later is None and flow is None:
            for tool, pattern_json in call.always_allowed:
                if tool == call.tool and values.all_match(json.loads(pattern_json)):
                    return Verdict(
                        Decision.allow,
                        "always-allowed",
                        f"you allowed {tool} with arguments like these for this errand",
                    )
        return verdict

    def values(self, call: PolicyCall) -> CallValues:
        """The values the call's arguments are matched by (canonical URLs and paths)."""
        return CallValues(call)

    def flow_check(self, call: PolicyCall) -> Verdict | None:
        """Flow control's vote (:mod:`errands.policy.flow`): P-T and P-F. No always-rule
        or standing rule turns it into an allow."""
        found = flow_verdict(call, call.pieces, self.trusted, self.flow)
        if found is None:
            return None
        decision, rule, reason = found
        return Verdict(Decision(decision), rule, reason)

    def executes_later(
        self, call: PolicyCall, values: CallValues
    ) -> tuple[str, ExecutesLater] | None:
        """A path this call writes that other programs run or trust later, and its entry."""
        if call.effect not in _WRITES:
            return None
        for name, role in call.roles.items():
            where = values.path(name) if role is ArgRole.path else None
            if where is not None:
                entry = executes_later(where.relative)
                if entry is not None:
                    return where.relative, entry
        return None


def _effect_reason(call: PolicyCall, decision: Decision) -> str:
    if decision is Decision.ask:
        return {
            EffectClass.external: "it changes something outside errands (a send, a post, a delete)",
            EffectClass.spend: "it spends money",
            EffectClass.irreversible: "it cannot be undone",
        }.get(call.effect, f"{call.effect.value} actions need your approval")
    return ""


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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_policy(text, path)


def parse_policy(text: str, path: Path) -> Policy:
    """The policy in *text* (the contents of *path*, named in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
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
