"""What a pending action will do, shown in full on the approval card.

A person approves exactly what they see. A tool may render its own preview
(:attr:`Tool.preview <errands.tools.tool.Tool.preview>`); otherwise one is built from
what the tool says its arguments *are* (:class:`~errands.tools.tool.ArgRole`), never
from their names: for a file write (a path and content), the diff against what is on
disk; for a network call (a URL), method, URL, headers and body; for a message (a
recipient), recipients, subject and body; for a payment (an amount), amount and payee;
otherwise every argument.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from errands.tools.tool import ArgRole, Tool

__all__ = ["MAX_PREVIEW", "file_diff", "preview_of"]

MAX_PREVIEW = 20_000


def file_diff(workspace: Path, path: str, content: str) -> str:
    """``write PATH (new file | replaces N characters)`` and the unified diff."""
    target = Path(os.path.realpath(workspace / path))
    try:
        old = target.read_text(encoding="utf-8")
        header = f"write {path} (replaces {len(old)} characters)"
    except (FileNotFoundError, IsADirectoryError):
        old, header = "", f"write {path} (new file)"
    except (OSError, UnicodeDecodeError):
        old, header = "", f"write {path} (replaces a file that is not text)"
    diff = difflib.unified_diff(
        old.splitlines(keepends=True),
        content.splitlines(keepends=True),
        fromfile=f"a/{path}",
        tofile=f"b/{path}",
    )
    return header + "\n" + "".join(diff)


def _listed(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _by_roles(tool: Tool, args: Mapping[str, Any], workspace: Path) -> str | None:
    """The default preview from the argument roles; None when no role says enough."""

    def first(role: ArgRole) -> Any:
        names = [n for n in tool.args_with(role) if args.get(n) is not None]
        return args[names[0]] if names else None

    path, content = first(ArgRole.path), first(ArgRole.content)
    if isinstance(path, str) and isinstance(content, str):
        return file_diff(workspace, path, content)
    url = first(ArgRole.url)
    if isinstance(url, str):
        method = first(ArgRole.method)
        lines = [f"{str(method).upper()} {url}" if method else url]
        headers = first(ArgRole.headers)
        if isinstance(headers, Mapping):
            lines += [f"{name}: {value}" for name, value in headers.items()]
        body = first(ArgRole.body)
        if body:
            lines += ["", _text(body)]
        return "\n".join(lines)
    recipients = [n for n in tool.args_with(ArgRole.recipient) if args.get(n)]
    if recipients:
        lines = [
            f"send to: {_listed(args[n])}" if i == 0 else f"{n}: {_listed(args[n])}"
            for i, n in enumerate(recipients)
        ]
        subject = first(ArgRole.subject)
        if subject is not None:
            lines.append(f"subject: {subject}")
        lines += ["", _text(first(ArgRole.body) or "")]
        return "\n".join(lines)
    amount = first(ArgRole.amount)
    if amount is not None:
        currency, payee = first(ArgRole.currency), first(ArgRole.payee)
        text = f"pay {amount}" + (f" {currency}" if currency else "") + f" to {payee or '?'}"
        shown = {
            n for r in (ArgRole.amount, ArgRole.currency, ArgRole.payee) for n in tool.args_with(r)
        }
        rest = {k: v for k, v in args.items() if k not in shown}
        if rest:
            text += "\n" + json.dumps(rest, indent=2, ensure_ascii=False)
        return text
    return None


def preview_of(tool: Tool, args: Mapping[str, Any], workspace: Path) -> str:
    """What the approval card shows for a call of *tool* with validated *args*."""
    text: str | None = None
    if tool.preview is not None:
        try:
            text = tool.preview(args, workspace)
        except Exception as exc:  # a tool's bug must not hide the action: show it all
            text = None
            note = f"[{tool.name}'s own preview failed: {type(exc).__name__}: {exc}]\n"
    if text is None:
        text = _by_roles(tool, args, workspace) or (
            f"{tool.name}\n" + json.dumps(dict(args), indent=2, ensure_ascii=False)
        )
        if tool.preview is not None:
            text = note + text
    if len(text) > MAX_PREVIEW:
        text = text[:MAX_PREVIEW] + f"\n[… {len(text) - MAX_PREVIEW} more characters]"
    return text
