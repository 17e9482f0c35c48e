"""Standing rules: "always allow this" from an approval card, kept in ``policy.toml``.

A person approving a call can make the approval *standing*: a rule that allows later
calls like it, in every errand, from now on -- a daily summary to one recipient, posts
under one URL prefix -- written into ``policy.toml`` with who made it, when and through
which channel, so it is read, changed or removed like any rule (and every running
process sees it within two seconds: :mod:`errands.policy.reload`).

What "calls like it" means is the rule's argument globs, by default derived from the
call's argument **roles**: a recipient or a method exactly, a URL up to its last path
segment (``https://status.example.com/api/*``), a path exactly; what is *sent* (a body,
a message's text, an amount) is never pinned, and a call with nothing to pin by role is
refused (give the pattern yourself). The globs are matched on canonical values, like
every rule's.

**A standing rule never lets a steered call through.** After untrusted content entered
the errand's context (a fetched page, a mail, a file), flow control
(:mod:`errands.policy.flow`) asks about any call whose steering arguments do not all
trace to the person's words or the ``[trusted]`` lists, and its ask outvotes the rule's
allow: the rule applies only to a call the person could have written themselves (the
recipient they named, the URL they gave).

Appending is the only change errands makes to ``policy.toml``: under an exclusive lock,
the new text is validated as a whole policy before it replaces the old (atomically,
the file's mode kept); a file that would not load is never written.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from errands.errors import UserError
from errands.tools.canonical import UrlError, canonical_url
from errands.tools.tool import ArgRole

__all__ = [
    "add_standing_rule",
    "edit_policy_file",
    "standing_pattern",
    "standing_rule",
    "without_rule",
]

_PINNED = {ArgRole.recipient, ArgRole.method, ArgRole.path, ArgRole.payee, ArgRole.currency}


def _escaped(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def standing_pattern(roles: Mapping[str, ArgRole], args: Mapping[str, Any]) -> dict[str, str]:
    """The argument globs a standing rule made from a call with *args* pins, by role."""
    pattern: dict[str, str] = {}
    for name, role in roles.items():
        value = args.get(name)
        as_list = role is ArgRole.recipient or (role is ArgRole.path and not isinstance(value, str))
        if as_list and name in args and (value is None or _strings(value)):
            # a list of recipients (send_email's to and cc) or of paths (its attachments)
            # exactly, an empty or absent one included: "always to ana" never lets a later
            # call add someone, nor attach a file
            pattern[name] = _escaped(json.dumps(value, sort_keys=True))
            continue
        if not isinstance(value, str) or not value:
            continue
        if role is ArgRole.url:
            try:
                url = canonical_url(value)
            except UrlError:
                continue
            if not url.origin:
                continue  # an opaque URL: nothing to pin by prefix
            directory = url.path.rsplit("/", 1)[0]  # the last segment (and query) open
            pattern[name] = _escaped(url.origin + directory) + "/*"
        elif role in _PINNED:
            pattern[name] = _escaped(value if role is not ArgRole.method else value.upper())
    if not pattern:
        raise UserError(
            "nothing in this call says which later calls are like it (no recipient, URL, "
            'path or method): give the pattern yourself, e.g. --pattern \'{"to": "ana@*"}\''
        )
    return pattern


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def standing_rule(
    old: str, *, tool: str, args: Mapping[str, str], by: str, channel: str
) -> tuple[str, str]:
    """(name, new text): *old* with a standing allow rule for *tool* calls whose
    arguments match the globs *args* appended; the name is unique in the text."""
    taken = set(re.findall(r'^\s*name\s*=\s*"([^"]*)"', old, re.M))
    n = 1
    while f"standing-{tool}-{n}" in taken:
        n += 1
    name = f"standing-{tool}-{n}"
    when = time.strftime("%Y-%m-%d %H:%M:%S %z")
    globs = ", ".join(f"{_toml_string(k)} = {_toml_string(v)}" for k, v in args.items())
    block = (
        f"\n# standing rule: approved by {by} via {channel} on {when}\n"
        "[[rules]]\n"
        f"name = {_toml_string(name)}\n"
        f"tool = {_toml_string(_escaped(tool))}\n"
        f"args = {{ {globs} }}\n"
        'decision = "allow"\n'
        "standing = true\n"
        f"by = {_toml_string(f'{by} via {channel}')}\n"
        f"created = {_toml_string(when)}\n"
        f"reason = {_toml_string(f'standing approval by {by} ({when})')}\n"
    )
    return name, old + ("" if old.endswith("\n") or not old else "\n") + block


_HEADER = re.compile(r"^\s*\[")
_STANDING_NOTE = re.compile(r"^\s*# standing rule:")
_NOTE = re.compile(r"^\s*(#.*)?$")


def without_rule(text: str, name: str) -> str:
    """*text* without the ``[[rules]]`` table named *name* (and the note errands wrote
    above a standing one); :class:`UserError` if there is no such rule."""
    lines = text.splitlines(keepends=True)
    heads = [i for i, line in enumerate(lines) if _HEADER.match(line)] + [len(lines)]
    for start, end in itertools.pairwise(heads):
        if lines[start].strip() != "[[rules]]":
            continue
        try:
            found = tomllib.loads("".join(lines[start:end])).get("rules", [{}])[0].get("name")
        except tomllib.TOMLDecodeError:
            continue
        if found != name:
            continue
        while end < len(lines) and end - 1 > start and _NOTE.match(lines[end - 1]):
            end -= 1  # (comments and blank lines above the next table are its own)
        first = start
        if first > 0 and _STANDING_NOTE.match(lines[first - 1]):
            first -= 1  # (the note errands wrote above it, and the blank line above that)
            if first > 0 and not lines[first - 1].strip():
                first -= 1
        return "".join(lines[:first] + lines[end:])
    raise UserError(f"no rule named {name!r} in the policy")


def edit_policy_file(home: Path, edit: Callable[[str], str], validate: Any) -> str:
    """Replace ``home/policy.toml`` with *edit(its text)*, under an exclusive lock;
    *validate(text)* loads the new text as a whole policy (raising ConfigError) first,
    and a text that would not load is never written (atomically, the file's mode
    kept). Returns the new text."""
    path = home / "policy.toml"
    lock_path = home / ".policy.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        new = edit(old)
        validate(new)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".policy.", suffix=".toml")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(new)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return new


def add_standing_rule(
    home: Path,
    *,
    tool: str,
    args: Mapping[str, str],
    by: str,
    channel: str,
    validate: Any,
) -> str:
    """Append a standing allow rule to ``home/policy.toml``; return its name.

    *validate(text)* loads a whole policy from text (raising ConfigError); it guards the
    write. The rule's name is unique in the file."""
    names: list[str] = []

    def edit(old: str) -> str:
        name, new = standing_rule(old, tool=tool, args=args, by=by, channel=channel)
        names.append(name)
        return new

    edit_policy_file(home, edit, validate)
    return names[-1]
