"""Shell command lines as the policy sees them: every simple command, parsed by a real parser.

A rule ``[[rules]] tool = "shell" command = "git push" decision = "ask"`` matches a call
whose script contains a simple command beginning with the words ``git push`` -- in a
pipeline, after ``;``, ``&&`` or ``||``, in a subshell, a group, a function body, a loop,
on a later line: each simple command is checked, and the strictest vote wins. Words are
compared after the shell's quote removal (``'g'it "push"`` is ``git push``), never as raw
text, so quoting, escapes, spacing and env prefixes do not change what a rule sees.

What the parser cannot resolve into fixed words is **unresolved**, and the policy asks
about it even when an allow rule matches: a parse error; ``$( )``, backticks, ``<( )``;
a variable, a glob or a brace in any word (``$X``, ``/*``, ``r{m,x}``); env assignments
before a command (``LD_PRELOAD=… git status``); a command that runs another command or a
string (``sh -c``, ``bash``, ``eval``, ``exec``, ``command``, ``env``, ``sudo``, ``xargs``,
``find -exec``, ``nohup``, ``timeout``, ``source`` …); alias and shell-option changes; an
interpreter given code inline (``python3 -c``, a here-document, a pipe into it). Where a
wrapper's inner command can be read (``sudo rm -rf /``, ``sh -c 'git push'``) it is also
checked against deny and ask rules, so a wrapper never hides a deny behind an ask.

The parser is imported by the first command line parsed (bashlex builds its parse tables
when imported: ~80 ms that ``errands up`` and every command that reads the policy would
otherwise spend before doing anything).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ParsedScript",
    "SimpleCommand",
    "parse_script",
    "prefix_matches",
    "rule_words",
]

# commands that run another command given as their arguments (after their options)
WRAPPERS = frozenset(
    {
        "builtin",
        "busybox",
        "chroot",
        "command",
        "doas",
        "env",
        "exec",
        "flock",
        "ionice",
        "nice",
        "nohup",
        "nsenter",
        "parallel",
        "pkexec",
        "runuser",
        "script",
        "setpriv",
        "setsid",
        "stdbuf",
        "strace",
        "su",
        "sudo",
        "time",
        "timeout",
        "unshare",
        "watch",
        "xargs",
    }
)
# commands that run a string (or a file) as shell code
EVALUATORS = frozenset({"eval", "source", ".", "trap", "fc"})
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "ash"})
# commands that change how later words are read
REDEFINERS = frozenset({"alias", "unalias", "shopt", "enable", "hash", "set", "declare", "typeset"})
INTERPRETERS = frozenset(
    {"python", "python3", "perl", "ruby", "node", "nodejs", "php", "lua", "tclsh", "awk", "gawk"}
)
_INLINE_CODE_FLAGS = frozenset({"-c", "-e", "-E", "-r", "--eval", "--command"})
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})
_GLOB_CHARS = frozenset("*?[")
_VALUED_OPTIONS = frozenset(
    {"-u", "-g", "-s", "-k", "-n", "-C", "-c", "-I", "-L", "-P", "-E", "-d"}
)


@dataclass(frozen=True)
class SimpleCommand:
    """One simple command's words, after quote removal and its env assignments.

    *plain*: written as is -- not found inside a wrapper's arguments or a string a shell
    runs, and not a basename made from a path (``/usr/bin/git`` gives ``git``, not plain).
    Allow rules match only plain commands; deny and ask rules match every one.
    """

    words: tuple[str, ...]
    plain: bool = True

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class ParsedScript:
    commands: tuple[SimpleCommand, ...]
    unresolved: tuple[str, ...]  # why the script is not fully resolved; empty when it is

    @property
    def plain(self) -> tuple[SimpleCommand, ...]:
        return tuple(c for c in self.commands if c.plain)


def rule_words(spec: str) -> tuple[str, ...]:
    """A rule's ``command`` as words, split like a shell would (``'git push'`` → 2 words)."""
    try:
        return tuple(shlex.split(spec))
    except ValueError as exc:
        raise ValueError(f"command {spec!r} cannot be split into words: {exc}") from None


def prefix_matches(prefix: tuple[str, ...], command: SimpleCommand) -> bool:
    """Do the command's first words equal *prefix*, word for word?"""
    return bool(prefix) and command.words[: len(prefix)] == prefix


@dataclass
class _Walk:
    source: str
    commands: list[SimpleCommand] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    depth: int = 0

    def flag(self, why: str) -> None:
        if why not in self.unresolved:
            self.unresolved.append(why)


def parse_script(text: str) -> ParsedScript:
    """Every simple command in *text* and what keeps it from being fully resolved."""
    walk = _Walk(text)
    _parse_into(walk, text, plain=True)
    return ParsedScript(tuple(walk.commands), tuple(walk.unresolved))


def _parse_into(walk: _Walk, text: str, *, plain: bool) -> None:
    if walk.depth > 8:
        walk.flag("nested too deeply to read")
        return
    if "\x00" in text:
        walk.flag("a NUL character")
        return
    if not text.strip():
        return
    import bashlex  # type: ignore[import-untyped]

    try:
        trees = bashlex.parse(text)
    except Exception as exc:  # bashlex raises ParsingError, NotImplementedError, others
        walk.flag(f"the parser cannot read it ({type(exc).__name__})")
        return
    walk.depth += 1
    try:
        for tree in trees:
            _visit(walk, tree, plain=plain, pipe_position=0)
    finally:
        walk.depth -= 1


def _visit(walk: _Walk, node: Any, *, plain: bool, pipe_position: int) -> None:
    kind = getattr(node, "kind", None)
    if kind == "command":
        _command(walk, node, plain=plain, pipe_position=pipe_position)
    elif kind == "pipeline":
        position = 0
        for part in node.parts:
            if getattr(part, "kind", None) == "pipe":
                position += 1
            else:
                _visit(walk, part, plain=plain, pipe_position=position)
    elif kind in ("list", "compound", "if", "for", "while", "until", "function"):
        children = list(getattr(node, "parts", []) or []) + list(getattr(node, "list", []) or [])
        for child in children:
            if getattr(child, "kind", None) == "word":
                _word(walk, child)  # a for loop's list, a function's name
            else:
                _visit(walk, child, plain=plain, pipe_position=pipe_position)
    elif kind in ("operator", "reservedword", "pipe", None):
        return
    elif kind == "redirect":
        _redirect(walk, node)
    else:
        walk.flag(f"a construct the parser does not resolve ({kind})")


def _word(walk: _Walk, node: Any) -> str:
    """The word after quote removal; flags what makes its value unknown before it runs."""
    word: str = node.word
    for part in getattr(node, "parts", []) or []:
        sub = getattr(part, "kind", None)
        if sub in ("commandsubstitution", "processsubstitution"):
            walk.flag("a command substitution ($( ), backticks or <( ))")
            inner = getattr(part, "command", None)
            if inner is not None:
                walk.depth += 1
                _visit(walk, inner, plain=False, pipe_position=0)
                walk.depth -= 1
        elif sub == "parameter":
            walk.flag("a variable ($NAME) whose value is known only when it runs")
        elif sub != "tilde":
            walk.flag(f"a word part the parser does not resolve ({sub})")
    if "$" in word or "`" in word:
        walk.flag("a $ or backtick the parser did not resolve")
    if any(c in _GLOB_CHARS for c in word):
        walk.flag("a glob (*, ?, [) whose files are known only when it runs")
    if "{" in word and "}" in word:
        walk.flag("a brace expansion ({a,b})")
    return word


def _redirect(walk: _Walk, node: Any) -> None:
    target = getattr(node, "output", None)
    if getattr(target, "kind", None) == "word":
        _word(walk, target)


def _command(walk: _Walk, node: Any, *, plain: bool, pipe_position: int) -> None:
    words: list[str] = []
    assignments = False
    heredoc = False
    for part in node.parts:
        kind = getattr(part, "kind", None)
        if kind == "word":
            words.append(_word(walk, part))
        elif kind == "assignment":
            assignments = True
            for sub in getattr(part, "parts", []) or []:
                if getattr(sub, "kind", None) in ("commandsubstitution", "processsubstitution"):
                    walk.flag("a command substitution ($( ), backticks or <( ))")
                    walk.depth += 1
                    _visit(walk, sub.command, plain=False, pipe_position=0)
                    walk.depth -= 1
        elif kind == "redirect":
            if getattr(part, "heredoc", None) is not None or part.type in ("<<", "<<-", "<<<"):
                heredoc = True
            _redirect(walk, part)
        else:
            walk.flag(f"a command part the parser does not resolve ({kind})")
    if not words:
        return
    if assignments:
        walk.flag("environment assignments before a command (NAME=value cmd)")
    _add(walk, tuple(words), plain=plain)
    _inspect(walk, tuple(words), heredoc=heredoc, pipe_position=pipe_position)


def _add(walk: _Walk, words: tuple[str, ...], *, plain: bool) -> None:
    walk.commands.append(SimpleCommand(words, plain))
    name = words[0]
    if "/" in name and name.rstrip("/"):
        base = name.rstrip("/").rsplit("/", 1)[-1]
        walk.commands.append(SimpleCommand((base, *words[1:]), plain=False))


def _inspect(walk: _Walk, words: tuple[str, ...], *, heredoc: bool, pipe_position: int) -> None:
    """Flag a command that runs other commands or code, and read what it runs if it can."""
    name = words[0].rstrip("/").rsplit("/", 1)[-1]
    args = words[1:]
    if name in SHELLS:
        walk.flag(f"{name} runs shell code the policy cannot see in full")
        if "-c" in args:
            after = args[args.index("-c") + 1 :]
            if after:
                walk.depth += 1
                _parse_into(walk, after[0], plain=False)
                walk.depth -= 1
        return
    if name in EVALUATORS:
        walk.flag(f"{name} runs a string or a file as shell code")
        if name == "eval" and args:
            walk.depth += 1
            _parse_into(walk, " ".join(args), plain=False)
            walk.depth -= 1
        return
    if name in REDEFINERS:
        walk.flag(f"{name} changes how later commands are read")
        return
    if name in WRAPPERS:
        walk.flag(f"{name} runs another command")
        inner = _unwrapped(name, args)
        if inner:
            _add(walk, inner, plain=False)
            _inspect(walk, inner, heredoc=heredoc, pipe_position=0)
        return
    if name == "find" and any(a in _FIND_EXEC for a in args):
        walk.flag("find -exec runs another command")
        for i, a in enumerate(args):
            if a in _FIND_EXEC and i + 1 < len(args):
                inner = tuple(x for x in args[i + 1 :] if x not in (";", "+", "{}"))
                if inner:
                    _add(walk, inner, plain=False)
        return
    if name in INTERPRETERS or name.startswith(("python", "perl", "ruby", "node")):
        if heredoc or pipe_position > 0 or any(a in _INLINE_CODE_FLAGS for a in args):
            walk.flag(f"{name} is given code inline (-c, a here-document or a pipe)")
        elif name in ("awk", "gawk"):
            walk.flag("awk runs the program it is given (system())")
    if name == "git" and any(a == "-c" or a.startswith(("--config", "--exec-path")) for a in args):
        walk.flag("git -c sets configuration that can run commands")


def _unwrapped(name: str, args: tuple[str, ...]) -> tuple[str, ...]:
    """The command a wrapper runs, skipping its options (best effort, for deny/ask only)."""
    rest = list(args)
    while rest:
        head = rest[0]
        if head == "--":
            rest.pop(0)
            break
        if head.startswith("-"):
            rest.pop(0)
            # options that take a value: skip it too (timeout -s KILL, sudo -u root, …)
            if head in _VALUED_OPTIONS and rest:
                rest.pop(0)
            continue
        if name == "env" and "=" in head:
            rest.pop(0)
            continue
        if name in ("timeout", "nice") and head.replace(".", "").rstrip("smhd").isdigit():
            rest.pop(0)
            continue
        break
    return tuple(rest)
