"""What a pending action will do, shown in full on the approval card.

A person approves exactly what they see: for a file write, the diff against what is
on disk; for an HTTP call, method, URL, headers and body; for a send, recipients,
subject and body; for a spend, amount and payee; otherwise every argument.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["preview"]

MAX_PREVIEW = 20_000


def _file_diff(workspace: Path, path: str, content: str) -> str:
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


def preview(tool: str, args: dict[str, Any], workspace: Path) -> str:
    text: str
    if isinstance(args.get("path"), str) and isinstance(args.get("content"), str):
        text = _file_diff(workspace, args["path"], args["content"])
    elif isinstance(args.get("url"), str) and "method" in args:
        lines = [f"{str(args['method']).upper()} {args['url']}"]
        for name, value in (args.get("headers") or {}).items():
            lines.append(f"{name}: {value}")
        if args.get("body"):
            lines += ["", str(args["body"])]
        text = "\n".join(lines)
    elif any(k in args for k in ("to", "recipients")):
        to = args.get("to", args.get("recipients"))
        lines = [f"send to: {', '.join(to) if isinstance(to, list) else to}"]
        for key in ("cc", "bcc"):
            if args.get(key):
                value = args[key]
                lines.append(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
        lines.append(f"subject: {args.get('subject', '')}")
        lines += ["", str(args.get("body", ""))]
        text = "\n".join(lines)
    elif "amount" in args:
        currency = args.get("currency", "")
        payee = args.get("payee", args.get("to", args.get("merchant", "?")))
        text = f"pay {args['amount']} {currency} to {payee}".replace("  ", " ")
        rest = {k: v for k, v in args.items() if k not in ("amount", "currency", "payee")}
        if rest:
            text += "\n" + json.dumps(rest, indent=2, ensure_ascii=False)
    else:
        text = f"{tool}\n" + json.dumps(args, indent=2, ensure_ascii=False)
    if len(text) > MAX_PREVIEW:
        text = text[:MAX_PREVIEW] + f"\n[… {len(text) - MAX_PREVIEW} more characters]"
    return text
