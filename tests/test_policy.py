"""The policy (``errands.policy.rules``), checked directly against docs/policy.md.

Rules by tool glob, effect and argument globs; non-string arguments as their JSON text;
the effect-class defaults; standing "always" permissions; the built-in
``outside-workspace`` deny, driven by argument roles; independence from rule order; and
``load_policy`` refusing malformed files without touching them. A hypothesis property
compares :meth:`Policy.check` with a reference model of docs/policy.md written here,
independently of the production matching code.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from errands.core.events import EffectClass
from errands.core.labels import BOTTOM
from errands.errors import ConfigError
from errands.policy.hook import Decision, PolicyCall, Verdict
from errands.policy.rules import DEFAULT_EFFECTS, DEFAULT_POLICY_TOML, Policy, Rule, load_policy
from errands.tools.tool import ArgRole, make_tool

E = EffectClass
ALLOW, ASK, DENY = Decision.allow, Decision.ask, Decision.deny


def save_as(target: str, label: str = "") -> str:
    """Save something.

    Args:
        target: Where to save it.
        label: A label; not a path, whatever it looks like.
    """
    return target


SAVE_AS = make_tool(save_as, effect=E.write_local, roles={"target": "path"})


@dataclass(frozen=True)
class Tree:
    """A workspace with links in and out of it, and a place outside it."""

    root: Path  # the parent of everything below
    ws: Path  # the errand's workspace
    alias: Path  # a symlink to the workspace


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    root = tmp_path_factory.mktemp("policy")
    ws = root / "ws"
    (ws / "sub").mkdir(parents=True)
    (root / "outside").mkdir()
    (root / "outside" / "secret").write_text("not yours")
    (ws / "link_in").symlink_to(ws / "sub")
    (ws / "link_out").symlink_to(root / "outside")
    (root / "alias").symlink_to(ws)
    return Tree(root, ws, root / "alias")


def pcall(
    tool: str,
    args: dict[str, Any],
    effect: EffectClass,
    workspace: Path = Path("/nonexistent/ws"),
    *,
    roles: Mapping[str, ArgRole] | None = None,
    always: tuple[tuple[str, str], ...] = (),
) -> PolicyCall:
    return PolicyCall(
        errand_id="e1",
        tool=tool,
        arguments=args,
        effect=effect,
        workspace=workspace,
        context=BOTTOM,
        always_allowed=always,
        roles=roles or {},
    )


def always(tool: str, **pattern: str) -> tuple[str, str]:
    """A standing permission as the fold of the log holds it: (tool, pattern JSON)."""
    return (tool, json.dumps(pattern, sort_keys=True))


def decided(verdict: Verdict) -> tuple[Decision, str]:
    return verdict.decision, verdict.rule


# -- rules: by tool glob, by effect, by argument globs ----------------------------------------


def test_a_rule_matches_tool_names_by_glob() -> None:
    policy = Policy(rules=[Rule(name="no-http", tool="http_*", decision=DENY, reason="offline")])
    verdict = policy.check(pcall("http_request", {"method": "GET", "url": "u"}, E.network))
    assert verdict == Verdict(DENY, "no-http", "offline")
    assert decided(policy.check(pcall("http_get", {}, E.network))) == (DENY, "no-http")
    # the glob is on the whole name, case-sensitive
    assert decided(policy.check(pcall("fetch_url", {"url": "u"}, E.network))) == (
        ALLOW,
        "effects.network",
    )
    assert decided(policy.check(pcall("my_http_request", {}, E.network)))[0] is ALLOW
    assert decided(policy.check(pcall("HTTP_request", {}, E.network)))[0] is ALLOW


def test_a_rule_matches_an_effect_class() -> None:
    policy = Policy(rules=[Rule(name="ask-writes", effect=E.write_local, decision=ASK)])
    assert decided(policy.check(pcall("write_file", {"path": "a"}, E.write_local))) == (
        ASK,
        "ask-writes",
    )
    assert decided(policy.check(pcall("note", {}, E.write_local))) == (ASK, "ask-writes")
    assert decided(policy.check(pcall("read_file", {"path": "a"}, E.read))) == (
        ALLOW,
        "effects.read",
    )


def test_a_rule_matches_only_when_every_condition_holds() -> None:
    rule = Rule(
        name="no-prod-deletes",
        tool="http_request",
        effect=E.external,
        args={"url": "https://prod.example.com/*", "method": "DELETE"},
        decision=DENY,
    )
    policy = Policy(rules=[rule])
    hit = {"method": "DELETE", "url": "https://prod.example.com/users/1"}
    assert decided(policy.check(pcall("http_request", hit, E.external))) == (
        DENY,
        "no-prod-deletes",
    )
    misses = [
        ("http_request", {**hit, "method": "POST"}, E.external),  # one glob fails
        ("http_request", {**hit, "url": "https://staging.example.com/x"}, E.external),
        ("http_request", {**hit, "url": "HTTPS://PROD.EXAMPLE.COM/x"}, E.external),  # case
        ("http_request", {"url": hit["url"]}, E.external),  # a named argument is missing
        ("http_request", hit, E.irreversible),  # the effect differs
        ("webhook", hit, E.external),  # the tool differs
    ]
    for tool, args, effect in misses:
        verdict = policy.check(pcall(tool, args, effect))
        assert verdict.rule == f"effects.{effect.value}", (tool, args, effect)


def test_a_rule_without_conditions_matches_every_call() -> None:
    policy = Policy(rules=[Rule(name="lockdown", decision=DENY)])
    for tool, effect in [("read_file", E.read), ("http_request", E.external), ("x", E.none)]:
        assert decided(policy.check(pcall(tool, {}, effect))) == (DENY, "lockdown")


@pytest.mark.parametrize(
    ("decision", "default", "expected"),
    [
        (DENY, ALLOW, (DENY, "r")),
        (DENY, ASK, (DENY, "r")),
        (ASK, ALLOW, (ASK, "r")),
        (ASK, ASK, (ASK, "r")),  # a matching rule decides in place of the default
        (ASK, DENY, (ASK, "r")),  # ... which a rule may loosen: the person said so
        (ALLOW, DENY, (ALLOW, "r")),
    ],
)
def test_rules_combine_with_the_effect_default_strictest_wins(
    decision: Decision, default: Decision, expected: tuple[Decision, str]
) -> None:
    policy = Policy(
        effects={**DEFAULT_EFFECTS, E.external: default},
        rules=[Rule(name="r", args={"to": "*@example.com"}, decision=decision)],
    )
    assert decided(policy.check(pcall("send", {"to": "a@example.com"}, E.external))) == expected
    # the same policy, for a call no rule matches: the effect default alone
    assert decided(policy.check(pcall("send", {"to": "a@elsewhere.org"}, E.external))) == (
        default,
        "effects.external",
    )


def test_an_allow_rule_is_an_exception_to_the_effect_default() -> None:
    """The default policy.toml's "status-page-posts-are-fine" example: posts to one API
    run without asking; every other post still asks, and a deny rule still wins."""
    policy = Policy(
        rules=[
            Rule(
                name="status-page-posts-are-fine",
                tool="http_request",
                args={"method": "POST", "url": "https://status.example.com/api/*"},
                decision=ALLOW,
            ),
            Rule(name="never-secrets", args={"url": "*secret*"}, decision=DENY),
        ]
    )
    status = {"method": "POST", "url": "https://status.example.com/api/incidents"}
    assert decided(policy.check(pcall("http_request", status, E.external))) == (
        ALLOW,
        "status-page-posts-are-fine",
    )
    elsewhere = {"method": "POST", "url": "https://other.example.com/"}
    assert decided(policy.check(pcall("http_request", elsewhere, E.external))) == (
        ASK,
        "effects.external",
    )
    leak = {"method": "POST", "url": "https://status.example.com/api/secret"}
    assert decided(policy.check(pcall("http_request", leak, E.external))) == (
        DENY,
        "never-secrets",
    )


def test_the_strictest_of_several_matching_rules_wins() -> None:
    rules = [
        Rule(name="ok", tool="*", decision=ALLOW),
        Rule(name="careful", effect=E.network, decision=ASK),
        Rule(name="never", args={"url": "*evil*"}, decision=DENY),
        Rule(name="careful-too", tool="http_*", decision=ASK),
    ]
    policy = Policy(rules=rules)
    evil = {"method": "GET", "url": "https://evil.example/"}
    assert decided(policy.check(pcall("http_request", evil, E.network))) == (DENY, "never")
    fine = {"method": "GET", "url": "https://good.example/"}
    assert decided(policy.check(pcall("http_request", fine, E.network))) == (ASK, "careful")
    assert decided(policy.check(pcall("fetch_url", fine, E.network))) == (ASK, "careful")
    assert decided(policy.check(pcall("read_file", {"path": "a"}, E.read))) == (ALLOW, "ok")
    unmatched = Policy(rules=rules[1:])  # without the catch-all: the default decides
    assert decided(unmatched.check(pcall("read_file", {"path": "a"}, E.read))) == (
        ALLOW,
        "effects.read",
    )


def test_shuffling_rules_never_changes_the_decision_and_the_first_strictest_names_it() -> None:
    rules = [
        Rule(name="a-ask", tool="send_*", decision=ASK),
        Rule(name="b-deny", args={"to": "*@rival.com"}, decision=DENY),
        Rule(name="c-allow", effect=E.write_local, decision=ALLOW),
        Rule(name="d-deny", tool="send_message", args={"body": "*password*"}, decision=DENY),
        Rule(name="e-ask", effect=E.write_local, decision=ASK),
    ]
    # each call, its decision, and the votes that can name it (worked out by hand)
    cases = [
        (
            pcall("send_message", {"to": "x@rival.com", "body": "my password"}, E.network),
            DENY,
            ["b-deny", "d-deny"],
        ),
        (pcall("send_message", {"to": "x@friend.com", "body": "hi"}, E.network), ASK, ["a-ask"]),
        (pcall("send_fax", {"to": "x@rival.com"}, E.network), DENY, ["b-deny"]),
        (pcall("note", {"text": "t"}, E.write_local), ASK, ["e-ask"]),
        (pcall("read_file", {"path": "a"}, E.read), ALLOW, ["effects.read"]),
    ]
    seen = 0
    for order in itertools.permutations(rules):
        names = [r.name for r in order]
        policy = Policy(rules=list(order))
        for call, want, namers in cases:
            verdict = policy.check(call)
            first = min(namers, key=lambda n: names.index(n) if n in names else -1)
            assert decided(verdict) == (want, first), (names, call)
            seen += 1
    assert seen == 120 * len(cases)


# -- arguments that are not strings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "value", "matches"),
    [
        ("1?", 10, True),
        ("1?", 19, True),
        ("1?", 1, False),
        ("1?", 100, False),
        ("1?", "12", True),  # a string is matched as itself
        ("1?", 12.5, False),
        ("true", True, True),
        ("null", None, True),
        ('[[]"a", "b"]', ["a", "b"], True),  # lists as JSON text ("[[]" is a literal "[")
        ("[[]*", ["x"], True),
        ("[[]*", "[x]", True),
        ('{"a": 1, "b": 2}', {"b": 2, "a": 1}, True),  # objects with sorted keys
        ('"quoted"', "quoted", False),  # a string is not JSON-quoted
        ("*", [], True),
        ('[[]"a"*', ["a", "b"], True),  # docs/policy.md: a list whose first item is "a"
        ('[[]"a"*', ["ab"], False),
    ],
)
def test_non_string_arguments_match_as_their_json_text(
    glob: str, value: Any, matches: bool
) -> None:
    policy = Policy(rules=[Rule(name="count-rule", args={"count": glob}, decision=DENY)])
    verdict = policy.check(pcall("order", {"count": value}, E.read))
    assert (verdict.rule == "count-rule") is matches, (glob, value)
    assert verdict.decision is (DENY if matches else ALLOW)


# -- standing "always" permissions --------------------------------------------------------------


def test_always_allowed_turns_a_matching_ask_into_allow_only() -> None:
    policy = Policy(
        rules=[
            Rule(name="prod", tool="http_request", args={"url": "https://prod*"}, decision=DENY),
            Rule(name="ask-notes", tool="note", decision=ASK),
        ]
    )
    grant = always("http_request", url="https://hooks.example/*", method="POST")
    post = {"method": "POST", "url": "https://hooks.example/a"}
    verdict = policy.check(pcall("http_request", post, E.external, always=(grant,)))
    assert decided(verdict) == (ALLOW, "always-allowed")
    assert "http_request" in verdict.reason
    # the pattern must match: another URL, another method, a missing argument
    for args in (
        {"method": "POST", "url": "https://other.example/a"},
        {"method": "PUT", "url": "https://hooks.example/a"},
        {"url": "https://hooks.example/a"},
    ):
        assert decided(policy.check(pcall("http_request", args, E.external, always=(grant,)))) == (
            ASK,
            "effects.external",
        ), args
    # the same pattern granted for another tool does not count
    other = always("webhook", url="https://hooks.example/*", method="POST")
    assert policy.check(pcall("http_request", post, E.external, always=(other,))).decision is ASK
    # any one of several grants will do; an empty pattern grants every call of the tool
    grants = (always("http_request", url="nope"), always("note"))
    assert decided(policy.check(pcall("note", {"text": "x"}, E.write_local, always=grants))) == (
        ALLOW,
        "always-allowed",
    )


def test_always_allowed_never_overrides_a_deny(tree: Tree) -> None:
    policy = Policy(
        effects={**DEFAULT_EFFECTS, E.spend: DENY},
        rules=[
            Rule(name="prod", tool="http_request", args={"url": "https://prod*"}, decision=DENY)
        ],
    )
    everything = (always("http_request"), always("pay"), always("save_as"))
    prod = {"method": "POST", "url": "https://prod.example/x"}
    assert decided(policy.check(pcall("http_request", prod, E.external, always=everything))) == (
        DENY,
        "prod",
    )
    assert decided(policy.check(pcall("pay", {"amount": 5}, E.spend, always=everything))) == (
        DENY,
        "effects.spend",
    )
    outside = pcall(
        "save_as",
        {"target": "../x"},
        E.external,
        tree.ws,
        roles=SAVE_AS.arg_roles,
        always=everything,
    )
    assert decided(policy.check(outside)) == (DENY, "outside-workspace")


def test_always_allowed_leaves_an_allow_named_by_its_rule() -> None:
    grant = (always("read_file"),)
    verdict = Policy().check(pcall("read_file", {"path": "a"}, E.read, always=grant))
    assert decided(verdict) == (ALLOW, "effects.read")


def test_always_patterns_match_non_string_arguments_as_json_text() -> None:
    grant = (always("order", count="1?"),)
    policy = Policy(rules=[Rule(name="ask-orders", tool="order", decision=ASK)])
    assert policy.check(pcall("order", {"count": 12}, E.read, always=grant)).decision is ALLOW
    assert policy.check(pcall("order", {"count": 120}, E.read, always=grant)).decision is ASK


# -- outside the workspace: by argument role ----------------------------------------------------


def outside_cases(tree: Tree) -> dict[str, bool]:
    """Path-role values, and whether each leads outside ``tree.ws`` (written by hand)."""
    return {
        ".": False,
        "": False,
        "notes.md": False,
        "sub/f.txt": False,
        "sub/../f.txt": False,
        "sub/..": False,
        "link_in/f": False,  # a link that stays inside
        f"../{tree.ws.name}/f": False,  # out and straight back in
        str(tree.ws / "sub" / "f"): False,  # absolute, inside
        str(tree.alias / "f"): False,  # absolute, through a link to the workspace
        "..": True,
        "../x": True,
        "sub/../../x": True,
        "/etc/passwd": True,
        "/": True,
        str(tree.root / "outside" / "secret"): True,
        "link_out": True,  # a link inside the workspace that points out
        "link_out/secret": True,
        "link_out/../f": True,  # the link is followed before the "..", as the OS does
        f"../{tree.ws.name}x/f": True,  # a sibling sharing the workspace's name as a prefix
    }


def test_a_path_argument_outside_the_workspace_is_denied(tree: Tree) -> None:
    policy = Policy()  # write_local is allowed by default: only the built-in can deny
    cases = outside_cases(tree)
    for target, outside in cases.items():
        verdict = policy.check(
            pcall("save_as", {"target": target}, E.write_local, tree.ws, roles=SAVE_AS.arg_roles)
        )
        expected = (DENY, "outside-workspace") if outside else (ALLOW, "effects.write_local")
        assert decided(verdict) == expected, target
    assert sum(cases.values()) == 10


def test_the_workspace_may_be_named_through_a_link(tree: Tree) -> None:
    for target, outside in outside_cases(tree).items():
        verdict = Policy().check(
            pcall("save_as", {"target": target}, E.write_local, tree.alias, roles=SAVE_AS.arg_roles)
        )
        assert (verdict.decision is DENY) is outside, target


def test_only_arguments_declared_paths_are_judged(tree: Tree) -> None:
    policy = Policy()
    # the argument called "label" looks like a path but is not one; "target" is
    args = {"target": "ok.txt", "label": "../../etc/passwd"}
    call = pcall("save_as", args, E.write_local, tree.ws, roles=SAVE_AS.arg_roles)
    assert decided(policy.check(call)) == (ALLOW, "effects.write_local")
    swapped = {"target": "../../etc/passwd", "label": "ok.txt"}
    call = pcall("save_as", swapped, E.write_local, tree.ws, roles=SAVE_AS.arg_roles)
    assert decided(policy.check(call)) == (DENY, "outside-workspace")
    # the role, not the name: an argument called "path" without the role is not judged
    no_roles = pcall("tool", {"path": "../../etc/passwd"}, E.write_local, tree.ws)
    assert decided(policy.check(no_roles)) == (ALLOW, "effects.write_local")
    url_role = {"path": ArgRole.url}
    as_url = pcall("tool", {"path": "https://h/../x"}, E.write_local, tree.ws, roles=url_role)
    assert policy.check(as_url).decision is ALLOW
    # a URL argument that is no URL is refused as such, not judged as a path
    not_url = pcall("tool", {"path": "../x"}, E.write_local, tree.ws, roles=url_role)
    assert decided(policy.check(not_url)) == (DENY, "unreadable-url")
    # any argument declared a path counts, whatever its name
    roles = {"src": ArgRole.path, "dest": ArgRole.path}
    both = pcall("copy", {"src": "a", "dest": "/tmp/b"}, E.write_local, tree.ws, roles=roles)
    assert decided(policy.check(both)) == (DENY, "outside-workspace")


def test_outside_workspace_beats_every_rule_and_names_itself(tree: Tree) -> None:
    policy = Policy(
        effects={**DEFAULT_EFFECTS, E.write_local: DENY},
        rules=[
            Rule(name="saves-ok", tool="save_as", decision=ALLOW),
            Rule(name="no-dotdot", args={"target": "*..*"}, decision=DENY),
        ],
    )
    call = pcall("save_as", {"target": "../x"}, E.write_local, tree.ws, roles=SAVE_AS.arg_roles)
    assert decided(policy.check(call)) == (DENY, "outside-workspace")
    loose = Policy(rules=[Rule(name="saves-ok", tool="save_as", decision=ALLOW)])
    assert decided(loose.check(call)) == (DENY, "outside-workspace")


# -- load_policy --------------------------------------------------------------------------------


def test_load_policy_writes_the_commented_defaults_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert load_policy(home, create=False) == Policy()
    assert not home.exists()
    assert load_policy(home) == Policy()
    path = home / "policy.toml"
    assert path.read_text() == DEFAULT_POLICY_TOML
    path.write_text('[effects]\nread = "ask"\n')
    policy = load_policy(home)
    assert path.read_text() == '[effects]\nread = "ask"\n'  # never rewritten
    assert policy.effects == {**DEFAULT_EFFECTS, E.read: ASK}  # left-out keys keep defaults


def test_load_policy_reads_rules_in_file_order(tmp_path: Path) -> None:
    text = """\
[effects]
external = "deny"

[[rules]]
name = "never-touch-production"
tool = "http_*"
effect = "external"
args = { url = "https://prod.example.com/*", method = "DELETE" }
decision = "deny"
reason = "production is off limits"

[[rules]]
name = "ask-before-fetch"
effect = "network"
decision = "ask"
"""
    (tmp_path / "policy.toml").write_text(text)
    policy = load_policy(tmp_path)
    assert [r.name for r in policy.rules] == ["never-touch-production", "ask-before-fetch"]
    first = policy.rules[0]
    assert (first.tool, first.effect, first.decision) == ("http_*", E.external, DENY)
    assert first.args == {"url": "https://prod.example.com/*", "method": "DELETE"}
    assert policy.effects[E.external] is DENY and policy.effects[E.spend] is ASK
    get = {"method": "GET", "url": "https://a.example/"}
    assert decided(policy.check(pcall("fetch_url", get, E.network))) == (ASK, "ask-before-fetch")
    assert (tmp_path / "policy.toml").read_text() == text


RULE = '[[rules]]\nname = "r"\ndecision = "deny"\n'


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (RULE + RULE, "two rules share a name"),
        ('mode = "strict"\n', "mode"),
        (RULE + 'tools = "http_*"\n', "rules.0.tools"),
        ('[[rules]]\nname = "r"\ndecision = "block"\n', "rules.0.decision"),
        ('[[rules]]\nname = "r"\n', "rules.0.decision"),
        ('[[rules]]\ndecision = "deny"\n', "rules.0.name"),
        (RULE + 'effect = "teleport"\n', "rules.0.effect"),
        (RULE + "args = { count = 1 }\n", "rules.0.args.count"),
        ('effects = "allow"\n', "[effects] must be a table"),
        ('[effects]\nexternal = "maybe"\n', "effects.external"),
        ('[effects]\nteleport = "allow"\n', "teleport"),
        ('rules = "deny everything"\n', "rules"),
        ('[[rules]\nname = "r"\n', "not valid TOML"),
    ],
)
def test_load_policy_refuses_a_malformed_file_with_one_clear_error(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    before = (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert says in message, message
    assert "\n" not in message, message
    assert (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path))) == before


# -- the property: Policy.check agrees with docs/policy.md ---------------------------------------
#
# A reference model of docs/policy.md, "How a decision is made", written without the
# production matching code: fnmatchcase for globs, json.dumps(sort_keys=True) for the text
# of a non-string argument.

STRICTNESS = {ALLOW: 0, ASK: 1, DENY: 2}


def ref_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Judged:
    """What docs/policy.md says a call's arguments are matched by (written here, apart
    from errands.tools.canonical): a URL or path argument by its canonical spelling."""

    args: dict[str, Any]
    roles: Mapping[str, ArgRole]
    workspace: Path

    def url(self, value: str) -> str | None:
        # the generated URLs are canonical already; anything else is no URL at all
        return value if value in URLS and value.startswith("https://") else None

    def path(self, value: str) -> tuple[str, str] | None:
        root = os.path.realpath(self.workspace)
        given = value.strip() or "."
        real = os.path.realpath(given if os.path.isabs(given) else os.path.join(root, given))
        if real != root and not real.startswith(root + os.sep):
            return None
        return os.path.relpath(real, root), real

    def matches(self, name: str, glob: str) -> bool:
        if name not in self.args:
            return False
        value, role = self.args[name], self.roles.get(name)
        if isinstance(value, str) and role is ArgRole.url:
            url = self.url(value)
            return url is not None and fnmatch.fnmatchcase(url, ref_url_glob(glob))
        if isinstance(value, str) and role is ArgRole.path:
            where = self.path(value)
            if where is None:
                return False
            pattern = ref_path_glob(glob)
            return fnmatch.fnmatchcase(where[1] if pattern.startswith("/") else where[0], pattern)
        return fnmatch.fnmatchcase(ref_text(value), glob)

    def all_match(self, globs: dict[str, str]) -> bool:
        return all(self.matches(name, glob) for name, glob in globs.items())


def ref_url_glob(glob: str) -> str:
    """scheme://host with no glob character in the host: no trailing dot, "/" if no path."""
    head, sep, rest = glob.partition("://")
    if not sep or not head.isalpha():
        return glob
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i != -1], default=len(rest))
    host, tail = rest[:cut], rest[cut:]
    if set("*?[") & set(host + head):
        return glob
    host = host[:-1] if host.endswith(".") else host
    if not host or ".." in host:
        return glob
    return f"{head}://{host}{tail or '/'}"


def ref_path_glob(glob: str) -> str:
    text = glob.strip()
    parts = [p for p in text.split("/") if p not in ("", ".")]
    joined = "/".join(parts) + ("/" if text.endswith("/") and parts else "")
    return "/" + joined if text.startswith("/") else joined or "."


def ref_rule_matches(rule: dict[str, Any], tool: str, effect: EffectClass, judged: Judged) -> bool:
    if rule.get("tool") is not None and not fnmatch.fnmatchcase(tool, rule["tool"]):
        return False
    if rule.get("effect") is not None and rule["effect"] != effect.value:
        return False
    return judged.all_match(rule.get("args", {}))


def reference(
    effects: dict[str, str],
    rules: list[dict[str, Any]],
    tool: str,
    effect: EffectClass,
    judged: Judged,
    path_outside: bool,
    grants: list[tuple[str, dict[str, str]]],
) -> tuple[Decision, str]:
    # 1. the votes, in order: outside-workspace, unreadable-url, then the matching rules in
    #    file order -- or, when no rule matches, the effect default (no generated path is
    #    one that executes later)
    votes: list[tuple[Decision, str]] = []
    if path_outside:
        votes.append((DENY, "outside-workspace"))
    votes += [
        (DENY, "unreadable-url")
        for name, role in judged.roles.items()
        if role is ArgRole.url
        and isinstance(judged.args.get(name), str)
        and judged.url(judged.args[name]) is None
    ]
    matched = [
        (Decision(rule["decision"]), rule["name"])
        for rule in rules
        if ref_rule_matches(rule, tool, effect, judged)
    ]
    votes += matched or [(Decision(effects[effect.value]), f"effects.{effect.value}")]
    # 2. the strictest wins; among equally strict votes the first names the rule
    top = max(STRICTNESS[d] for d, _ in votes)
    winner = next(v for v in votes if STRICTNESS[v[0]] == top)
    # 3. an ask becomes allow under a matching "always" for the same tool that pins every
    #    recipient or path the call gives; nothing else moves
    if winner[0] is ASK:
        for granted_tool, pattern in grants:
            unpinned = [
                name
                for name, role in judged.roles.items()
                if role in (ArgRole.recipient, ArgRole.path)
                and name not in pattern
                and judged.args.get(name) not in (None, "", [], ())
            ]
            if not pattern:  # "any arguments", on purpose
                unpinned = []
            if granted_tool == tool and not unpinned and judged.all_match(pattern):
                return ALLOW, "always-allowed"
    return winner


TOOLS = ["read_file", "write_file", "http_request", "fetch_url", "send_message", "pay"]
TOOL_GLOBS = [None, None, "*", "http_*", "*_file", "read_?ile", "send_*", "nothing"]
ARG_NAMES = ["path", "target", "url", "method", "count", "tags"]
URLS = ["https://prod.example.com/a", "https://status.example.com/api/x", "GET", "DELETE"]
PLAIN = st.text(alphabet="ab1-", max_size=4)  # no "/" or ".": always a name inside
GLOBS = [
    "*",
    "?",
    "a*",
    "*b",
    "1?",
    "[ab]*",
    "[[]*",
    '["a"*',
    "https://prod.example.com/*",
    "*example.com*",
    "GET",
    "DELETE",
    "*..*",
    "/*",
    "link_*",
    "*secret",
    "true",
]


@st.composite
def a_case(draw: st.DrawFn, tree: Tree) -> dict[str, Any]:
    paths = outside_cases(tree)
    value = st.one_of(
        st.sampled_from(sorted(paths)),
        st.sampled_from(sorted(paths)),
        st.sampled_from(URLS),
        PLAIN,
        st.integers(-3, 30),
        st.booleans(),
        st.lists(st.one_of(PLAIN, st.integers(0, 20)), max_size=3),
    )
    names = draw(st.lists(st.sampled_from(ARG_NAMES), max_size=4, unique=True))
    args = {name: draw(value) for name in names}
    role_of = st.sampled_from([None, ArgRole.path, ArgRole.path, ArgRole.url])
    roles = {n: r for n in names if (r := draw(role_of)) is not None}
    if draw(st.booleans()):  # a role for an argument the call left out
        roles.setdefault("target", ArgRole.path)
    path_outside = any(
        role is ArgRole.path
        and isinstance(args.get(name), str)
        and paths.get(args[name], False)  # PLAIN strings are not in the table: inside
        for name, role in roles.items()
    )

    def glob_for(name: str) -> str:
        if name in args and draw(st.booleans()):  # derived from the value: often matches
            text = ref_text(args[name])
            cut = draw(st.integers(0, len(text)))
            return text[:cut] + draw(st.sampled_from(["*", "", "?"]))
        return draw(st.one_of(st.sampled_from(GLOBS), st.text(alphabet="ab1*?", max_size=3)))

    def globs() -> dict[str, str]:
        keys = draw(st.lists(st.sampled_from([*args, *args, *ARG_NAMES]), max_size=2, unique=True))
        return {k: glob_for(k) for k in keys}

    tool = draw(st.sampled_from(TOOLS))
    effect = draw(st.sampled_from(list(EffectClass)))
    decisions = st.sampled_from(["allow", "ask", "ask", "deny"])
    rules = []
    for i in range(draw(st.integers(0, 5))):
        rule: dict[str, Any] = {"name": f"r{i}", "decision": draw(decisions)}
        if (tool_glob := draw(st.sampled_from([*TOOL_GLOBS, tool]))) is not None:
            rule["tool"] = tool_glob
        if draw(st.booleans()):
            rule["effect"] = draw(st.sampled_from([effect.value, *[e.value for e in EffectClass]]))
        if draw(st.booleans()):
            rule["args"] = globs()
        rules.append(rule)
    effects = {
        e.value: draw(st.sampled_from(["allow", "allow", "ask", "deny"])) for e in EffectClass
    }
    grants = [
        (draw(st.sampled_from([tool, tool, tool, *TOOLS])), globs())
        for _ in range(draw(st.integers(0, 3)))
    ]
    shuffled = draw(st.permutations(rules))
    return {
        "args": args,
        "roles": roles,
        "path_outside": path_outside,
        "tool": tool,
        "effect": effect,
        "rules": rules,
        "shuffled": shuffled,
        "effects": effects,
        "grants": grants,
    }


def check_against_reference(tree: Tree, **options: Any) -> dict[str, int]:
    """Run the property; how often each kind of vote decided, by "kind:decision"."""
    outcomes: dict[str, int] = {}

    @settings(max_examples=200, deadline=None, database=None, **options)
    @given(case=a_case(tree))
    def agree(case: dict[str, Any]) -> None:
        grants = case["grants"]
        call = pcall(
            case["tool"],
            case["args"],
            case["effect"],
            tree.ws,
            roles=case["roles"],
            always=tuple((t, json.dumps(p, sort_keys=True)) for t, p in grants),
        )
        verdicts = []
        for rules in (case["rules"], case["shuffled"]):
            policy = Policy.model_validate({"effects": case["effects"], "rules": rules})
            verdict = policy.check(call)
            want = reference(
                case["effects"],
                rules,
                case["tool"],
                case["effect"],
                Judged(case["args"], case["roles"], tree.ws),
                case["path_outside"],
                grants,
            )
            assert decided(verdict) == want, case
            verdicts.append(verdict)
        # reordering may change which equally strict rule is named, never the decision
        assert verdicts[0].decision is verdicts[1].decision
        rule = verdicts[0].rule
        kind = "effect" if rule.startswith("effects.") else rule if "-" in rule else "rule"
        key = f"{kind}:{verdicts[0].decision.value}"
        outcomes[key] = outcomes.get(key, 0) + 1

    agree()
    return outcomes


def test_check_agrees_with_the_documented_semantics(tree: Tree) -> None:
    """Policy.check decides, and names the rule, as the reference model of docs/policy.md
    does, on generated policies and calls, whatever the order of the rules."""
    check_against_reference(tree)


def test_the_generated_cases_reach_every_step_of_the_semantics(tree: Tree) -> None:
    """The property is not vacuous: its cases are decided by each kind of vote. (Fixed
    examples, so that this count cannot flake; the property above explores anew each run.)"""
    outcomes = check_against_reference(tree, derandomize=True)
    wanted = {
        "outside-workspace:deny",
        "unreadable-url:deny",
        "always-allowed:allow",
        "effect:allow",
        "effect:ask",
        "effect:deny",
        "rule:ask",
        "rule:deny",
    }
    assert wanted <= outcomes.keys(), outcomes
    assert sum(outcomes.values()) >= 100, outcomes
