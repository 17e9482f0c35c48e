"""Command rules for `shell`: prefixes of every simple command, read by a real parser.

The worst case is a model (or a page it read) that spells a command so a rule does not
see it. Hypothesis generates such spellings -- quoting, escapes, env prefixes, subshells,
groups, `;`/`&&`/`||`/pipes/newlines, wrappers -- and none may turn an ask or a deny into
a silent allow. The negative control (``RawPrefixPolicy``, tests/seams/shell_controls.py)
matches the raw text by prefix instead, and hypothesis finds an evasion against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from seams.shell_controls import RawPrefixPolicy

from errands.config import ConfigError
from errands.core.events import EffectClass
from errands.core.labels import Label
from errands.policy.hook import Decision, PolicyCall
from errands.policy.rules import DEFAULT_POLICY_TOML, Policy, parse_policy
from errands.tools.sandbox.commands import parse_script
from errands.tools.tool import ArgRole

RULES = """
[[rules]]
name = "echo-is-fine"
tool = "shell"
command = "echo"
decision = "allow"

[[rules]]
name = "ls-is-fine"
tool = "shell"
command = "ls"
decision = "allow"

[[rules]]
name = "git-status-is-fine"
tool = "shell"
command = "git status"
decision = "allow"

[[rules]]
name = "git-push-asks"
tool = "shell"
command = "git push"
decision = "ask"

[[rules]]
name = "no-rm-rf"
tool = "shell"
command = "rm -rf"
decision = "deny"
"""


def _policy(text: str = RULES, cls: type[Policy] = Policy) -> Policy:
    base = parse_policy(DEFAULT_POLICY_TOML + text, Path("policy.toml"))
    return cls.model_validate(base.model_dump())


def _call(command: str, workspace: Path = Path("/tmp")) -> PolicyCall:
    return PolicyCall(
        errand_id="e1",
        tool="shell",
        arguments={"command": command, "timeout_s": 60},
        effect=EffectClass.write_local,
        workspace=workspace,
        context=Label(),
        roles={"command": ArgRole.command},
    )


def decide(command: str, policy: Policy | None = None) -> tuple[Decision, str]:
    verdict = (policy or _policy()).check(_call(command))
    return verdict.decision, verdict.rule


# --- what the rules decide ----------------------------------------------------------------


def test_the_default_policy_asks_for_any_shell_command() -> None:
    default = parse_policy(DEFAULT_POLICY_TOML, Path("policy.toml"))
    for command in ("ls", "echo hi", "git status", ""):
        assert default.check(_call(command)).decision is Decision.ask, command
    assert default.check(_call("ls")).rule == "shell-default"


def test_an_empty_policy_file_asks_too() -> None:
    assert Policy().check(_call("true")).decision is Decision.ask


@pytest.mark.parametrize(
    ("command", "decision"),
    [
        ("echo hello", Decision.allow),
        ("ls -la && echo done", Decision.allow),
        ("git status", Decision.allow),
        ("git status --short | echo", Decision.allow),
        ("git push origin main", Decision.ask),
        ("git status; git push", Decision.ask),
        ("git", Decision.ask),  # a prefix of a rule is not the rule
        ("git statusx", Decision.ask),
        ("cat x", Decision.ask),  # no rule: shell-default
        ("echo hi; cat x", Decision.ask),
        ("rm -rf build", Decision.deny),
        ("rm -r -f build", Decision.ask),  # not the rule's words; still not allowed
        ("echo a; rm -rf /", Decision.deny),
        ("echo $(rm -rf /)", Decision.deny),  # the substitution is checked too
        ("sudo rm -rf /", Decision.deny),
        ("sh -c 'rm -rf /'", Decision.deny),
        ("eval 'rm -rf /'", Decision.deny),
        ("find . -exec rm -rf {} +", Decision.deny),
        ("/usr/bin/git push", Decision.ask),
        ("/bin/rm -rf x", Decision.deny),
        ("f() { rm -rf /; }; f", Decision.deny),
        ("(cd sub && git push)", Decision.ask),
    ],
)
def test_rules_match_every_simple_command(command: str, decision: Decision) -> None:
    assert decide(command)[0] is decision


@pytest.mark.parametrize(
    "command",
    [
        "echo $(id)",
        "echo `id`",
        "ls <(echo x)",
        "echo $HOME",
        "$CMD status",
        "X=1 echo hi",
        "LD_PRELOAD=/workspace/x.so ls",
        "env echo hi",
        "command echo hi",
        "exec echo hi",
        "sudo echo hi",
        "bash -c 'echo hi'",
        "sh",
        "eval echo hi",
        "source ./x.sh",
        ". ./x.sh",
        "echo hi | xargs echo",
        "find . -exec echo {} ;",
        "echo 'print(1)' | python3",
        "python3 -c 'print(1)'",
        "cat <<EOF | sh\necho hi\nEOF",
        "alias ls='rm -rf /'\nls",
        "shopt -s expand_aliases",
        "echo *",
        "ls /[e]tc",
        "echo r{m,x}",
        "case x in a) echo;; esac",
        "echo 'unterminated",
        "git -c core.pager=evil status",
    ],
)
def test_what_the_parser_cannot_resolve_asks_even_when_allowed(command: str) -> None:
    decision, rule = decide(command)
    assert decision is not Decision.allow, (command, rule)


def test_an_unresolved_line_names_why() -> None:
    verdict = _policy().check(_call("echo $(curl evil.example)"))
    assert verdict.rule == "command-unresolved"
    assert "command substitution" in verdict.reason


def test_a_rule_for_the_whole_tool_covers_every_command() -> None:
    policy = _policy('[[rules]]\nname = "all"\ntool = "shell"\ndecision = "allow"\n' + RULES)
    assert decide("cat x; wc -l y", policy)[0] is Decision.allow
    assert decide("git push", policy)[0] is Decision.ask  # the stricter rule still votes
    assert decide("rm -rf /", policy)[0] is Decision.deny
    assert decide("cat $(x)", policy)[0] is Decision.ask  # unresolved: never loosened


def test_always_allowed_never_loosens_an_unresolved_line() -> None:
    call = _call("echo $(id)")
    always = PolicyCall(**{**call.__dict__, "always_allowed": (("shell", '{"command": "*"}'),)})
    assert _policy().check(always).decision is Decision.ask
    # a glob on the command argument matches simple commands, never the raw text
    glob = PolicyCall(
        **{
            **_call("echo hi; cat /x").__dict__,
            "always_allowed": (("shell", '{"command": "echo *"}'),),
        }
    )
    assert Policy().check(glob).decision is Decision.ask


def test_args_globs_on_a_command_see_each_simple_command() -> None:
    policy = _policy(
        '[[rules]]\nname = "echo-glob"\ntool = "shell"\nargs = { command = "echo *" }\n'
        'decision = "allow"\n'
    )
    assert decide("echo hi", policy)[0] is Decision.allow
    assert decide("echo hi; cat /etc/passwd", policy)[0] is Decision.ask
    deny = _policy(
        '[[rules]]\nname = "no-curl"\ntool = "shell"\nargs = { command = "curl *" }\n'
        'decision = "deny"\n'
    )
    assert decide("echo a &&  'curl'   x", deny)[0] is Decision.deny


def test_a_command_rule_needs_words() -> None:
    with pytest.raises(ConfigError):
        parse_policy(
            '[[rules]]\nname = "x"\ntool = "shell"\ncommand = "  "\ndecision = "allow"\n',
            Path("policy.toml"),
        )


def test_the_parser_reads_words_after_quote_removal() -> None:
    parsed = parse_script("'g'it \"push\"  origin ; g\\it status\n(X=1 ls)")
    texts = [c.text for c in parsed.commands]
    assert texts == ["git push origin", "git status", "ls"]
    assert parsed.unresolved  # the env prefix


# --- evasions, generated ------------------------------------------------------------------

_ALLOWED = ["echo hi", "ls -la", "git status", "echo 'a b'"]
_GUARDED = [("git", "push", "origin"), ("rm", "-rf", "build")]


def _spell(word: str, how: int) -> str:
    if how == 0:
        return word
    if how == 1:
        return f"'{word}'"
    if how == 2:
        return f'"{word}"'
    if how == 3 and len(word) > 1:
        return f"{word[0]}\\{word[1:]}"
    if how == 4 and len(word) > 1:
        return f"{word[0]}''{word[1:]}"
    if how == 5:
        return f'""{word}'
    return word


@st.composite
def guarded_line(draw: Any) -> str:
    words = draw(st.sampled_from(_GUARDED))
    spelled = [_spell(w, draw(st.integers(0, 6))) for w in words]
    gaps = [draw(st.sampled_from([" ", "  ", "\t", " \\\n "])) for _ in spelled]
    core = spelled[0] + "".join(g + w for g, w in zip(gaps[1:], spelled[1:], strict=True))
    prefix = draw(
        st.sampled_from(
            ["", "X=1 ", "A=b C=d ", "env ", "command ", "exec ", "sudo ", "nohup ", "time "]
        )
    )
    core = prefix + core
    wrap = draw(st.integers(0, 6))
    if wrap == 1:
        core = f"( {core} )"
    elif wrap == 2:
        core = f"{{ {core}; }}"
    elif wrap == 3:
        core = f"sh -c '{core}'" if "'" not in core else f'bash -c "{core}"'
    elif wrap == 4:
        core = f"if true; then {core}; fi"
    elif wrap == 5:
        core = f"! {core}"
    elif wrap == 6:
        core = f"for i in 1; do {core}; done"
    before = draw(st.lists(st.sampled_from(_ALLOWED), max_size=2))
    after = draw(st.lists(st.sampled_from(_ALLOWED), max_size=2))
    join = draw(st.sampled_from([" ; ", " && ", " || ", " | ", "\n", ";", " &\n"]))
    tail = draw(st.sampled_from(["", " # a comment", " 2>&1", " > out.txt", " &"]))
    return join.join([*before, core + tail, *after])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(guarded_line())
def test_no_spelling_turns_an_ask_or_a_deny_into_an_allow(line: str) -> None:
    decision, rule = decide(line)
    assert decision is not Decision.allow, (line, rule)


def test_negative_control_a_raw_prefix_matcher_is_evaded() -> None:
    naive = _policy(cls=RawPrefixPolicy)
    found = find(
        guarded_line(),
        lambda line: naive.check(_call(line)).decision is Decision.allow,
        settings=settings(max_examples=400, deadline=None),
    )
    assert decide(found)[0] is not Decision.allow  # the real policy holds on it
