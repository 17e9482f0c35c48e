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
- ``command-unresolved`` (ask): a shell command line the parser cannot fully resolve
  (``sh -c``, ``eval``, ``$( )``, a variable, an env prefix …;
  :mod:`errands.tools.sandbox.commands`), whatever allow rule matches;
- ``shell-default`` (ask, or the effect class's decision if stricter): a simple command in
  a command line (an argument the tool declares a ``command``) that no rule covers --
  neither a rule for the tool as a whole nor a ``command`` rule naming its first words;
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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
from errands.tools.sandbox.commands import ParsedScript, parse_script, prefix_matches, rule_words
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

# The shell asks before every command unless a rule allows it. Command rules match
# the first words of each simple command in the line (pipelines, `;`, `&&`, subshells
# each checked, quoting undone); a line the parser cannot fully read (sh -c, eval,
# $( ), a variable, an env prefix, xargs ...) always asks. For example:
#
# [[rules]]
# name = "git-status-is-fine"
# tool = "shell"
# command = "git status"
# decision = "allow"
#
# [[rules]]
# name = "no-force-push"
# tool = "shell"
# command = "git push --force"
# decision = "deny"

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
# own_addresses = []          # your own mail addresses: a mail only to them is not held by
#                             # P-T, so "always" for it holds (docs/security.md, section 12)
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

    __slots__ = ("_paths", "_scripts", "_urls", "call", "outside", "unreadable")

    def __init__(self, call: PolicyCall) -> None:
        self.call = call
        self._paths: dict[str, CanonicalPath] = {}
        self._urls: dict[str, str] = {}
        self._scripts: dict[str, ParsedScript] = {}
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
            elif role is ArgRole.command:
                self._scripts[name] = parse_script(raw)

    def script(self, name: str) -> ParsedScript | None:
        """The parsed command line of argument *name* (a ``command`` role), if it has one."""
        return self._scripts.get(name)

    @property
    def scripts(self) -> list[ParsedScript]:
        return list(self._scripts.values())

    def path(self, name: str) -> CanonicalPath | None:
        return self._paths.get(name)

    def matches(self, name: str, glob: str, *, every: bool = True) -> bool:
        """Does argument *name* exist and match *glob* (spelled like its canonical value)?

        A command line (``command`` role) is matched simple command by simple command
        (their words joined by single spaces): with *every* (an allow), each must match
        and the line must be fully resolved; without (a deny or an ask), one is enough."""
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
            if role is ArgRole.command:
                script = self._scripts[name]
                if every:
                    plain = script.plain
                    return (
                        bool(plain)
                        and not script.unresolved
                        and all(fnmatch.fnmatchcase(c.text, glob) for c in plain)
                    )
                return fnmatch.fnmatchcase(value, glob) or any(
                    fnmatch.fnmatchcase(c.text, glob) for c in script.commands
                )
        return fnmatch.fnmatchcase(_text(value), glob)

    def all_match(self, pattern: Mapping[str, str], *, every: bool = True) -> bool:
        return all(self.matches(name, glob, every=every) for name, glob in pattern.items())


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    decision: Decision
    tool: str | None = None  # glob on the tool name
    effect: EffectClass | None = None
    args: dict[str, str] = Field(default_factory=dict)  # argument name -> glob on its value
    # the first words of a simple command in a command line (tools whose arguments
    # include a ``command``): "git push" (errands.tools.sandbox.commands)
    command: str | None = None
    reason: str = ""
    # a standing approval (errands.policy.standing): who made it, when. After untrusted
    # content entered the errand's context it allows only what flow control also lets
    # through (its ask outvotes the rule's allow): never a steered call
    standing: bool = False
    by: str = ""
    created: str = ""

    @field_validator("command")
    @classmethod
    def _command_has_words(cls, value: str | None) -> str | None:
        if value is not None and not rule_words(value):
            raise ValueError("a command rule needs at least one word")
        return value

    @property
    def words(self) -> tuple[str, ...]:
        return rule_words(self.command) if self.command is not None else ()

    def applies(self, call: PolicyCall, values: CallValues) -> bool:
        """Tool, effect and argument globs match (a command rule's words aside)."""
        if self.tool is not None and not fnmatch.fnmatchcase(call.tool, self.tool):
            return False
        if self.effect is not None and call.effect is not self.effect:
            return False
        if self.standing and self.decision is Decision.allow and unpinned_places(call, self.args):
            return False
        return values.all_match(self.args, every=self.decision is Decision.allow)

    def matches(self, call: PolicyCall, values: CallValues | None = None) -> bool:
        """Does this rule vote on *call*? A command rule on its own: a deny or an ask when
        some simple command starts with its words; an allow when every plain one does and
        the line is fully resolved (the policy combines several allow rules per command)."""
        values = values or CallValues(call)
        if not self.applies(call, values):
            return False
        if self.command is None:
            return True
        words = self.words
        if not values.scripts:
            return False
        if self.decision is not Decision.allow:
            return any(prefix_matches(words, c) for s in values.scripts for c in s.commands)
        return all(
            s.plain and not s.unresolved and all(prefix_matches(words, c) for c in s.plain)
            for s in values.scripts
        )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


_PLACES = (ArgRole.recipient, ArgRole.path)


def unpinned_places(call: PolicyCall, pattern: Mapping[str, str]) -> list[str]:
    """The arguments of *call* that say where something goes or which file it takes (a
    recipient, a path, given and not empty) and that *pattern* does not pin.

    A standing rule or an "always" covers only calls like the one approved: made before
    a tool gained such an argument (send_email's ``attachments``), it pins nothing about
    it, and a later call using it is not "like" the approved one -- it asks again. An
    empty pattern pins nothing on purpose ("any arguments"): it leaves nothing out."""
    if not pattern:
        return []
    return [
        name
        for name, role in call.roles.items()
        if role in _PLACES
        and name not in pattern
        and call.arguments.get(name) not in (None, "", [], ())
    ]


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
        unresolved = self.command_unresolved(values)
        if unresolved is not None:
            votes.append(unresolved)
        matched, uncovered = self.rule_votes(call, values)
        if matched:
            votes.extend(matched)
        if not matched or uncovered:
            votes.append(self.default_vote(call, uncovered))
        flow = self.flow_check(call)
        if flow is not None:
            votes.append(flow)
        verdict = max(votes, key=lambda v: SEVERITY[v.decision])  # first of the strictest
        if flow is not None and flow.decision is verdict.decision and flow is not verdict:
            # the card says what flow control found (where an argument came from, what
            # data would leave), beside the vote that also asks ("it spends money")
            verdict = Verdict(flow.decision, flow.rule, f"{verdict.reason}; {flow.reason}")
        if (
            verdict.decision is Decision.ask
            and later is None
            and flow is None
            and unresolved is None
        ):
            for tool, pattern_json in call.always_allowed:
                pattern = json.loads(pattern_json)
                if (
                    tool == call.tool
                    and not unpinned_places(call, pattern)
                    and values.all_match(pattern)
                ):
                    return Verdict(
                        Decision.allow,
                        "always-allowed",
                        f"you allowed {tool} with arguments like these for this errand",
                    )
        return verdict

    def rule_votes(self, call: PolicyCall, values: CallValues) -> tuple[list[Verdict], list[str]]:
        """The votes of the rules that match, in file order, and the simple commands of a
        command line that no rule covers (no rule for the tool as a whole matched, and no
        allow, ask or deny ``command`` rule names their first words).

        A ``command`` rule votes when it names a simple command in the line (an allow only
        for a command written plainly, :class:`~errands.tools.sandbox.commands.SimpleCommand`);
        a rule without one votes on the call as before."""
        votes: list[Verdict] = []
        whole = False
        covered: set[tuple[int, int]] = set()
        for rule in self.rules:
            if rule.command is None:
                if rule.matches(call, values):
                    votes.append(Verdict(rule.decision, rule.name, rule.reason))
                    whole = True
                continue
            if not values.scripts or not rule.applies(call, values):
                continue
            words = rule.words
            hit = False
            for n, script in enumerate(values.scripts):
                for i, command in enumerate(script.commands):
                    if rule.decision is Decision.allow and not command.plain:
                        continue
                    if prefix_matches(words, command):
                        hit = True
                        covered.add((n, i))
            if hit:
                votes.append(Verdict(rule.decision, rule.name, rule.reason))
        uncovered: list[str] = []
        if not whole:
            for n, script in enumerate(values.scripts):
                for i, command in enumerate(script.commands):
                    if command.plain and (n, i) not in covered:
                        uncovered.append(command.text)
        return votes, uncovered

    def default_vote(self, call: PolicyCall, uncovered: list[str]) -> Verdict:
        """The vote when no rule decides: the effect class's; for a command line, at least
        an ask (a shell command is asked about unless a rule allows it)."""
        default = self.effects.get(call.effect, Decision.ask)
        if not values_have_commands(call):
            return Verdict(default, f"effects.{call.effect.value}", _effect_reason(call, default))
        decision = max(default, Decision.ask, key=lambda d: SEVERITY[d])
        shown = ", ".join(f"`{c}`" for c in uncovered[:3]) or "this command line"
        return Verdict(
            decision,
            "shell-default",
            f"no rule allows {shown}; commands ask unless a rule allows them",
        )

    def command_unresolved(self, values: CallValues) -> Verdict | None:
        """An ask for a command line the parser cannot fully resolve; no rule loosens it."""
        whys = [why for script in values.scripts for why in script.unresolved]
        if not whys:
            return None
        return Verdict(
            Decision.ask,
            "command-unresolved",
            "the command line cannot be read in full before it runs: " + "; ".join(whys[:3]),
        )

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


def values_have_commands(call: PolicyCall) -> bool:
    """Does the call carry a command line (an argument whose role is ``command``)?"""
    return any(role is ArgRole.command for role in call.roles.values())


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
