"""Attachments of a mail errands sends: files of the errand's workspace, by path.

``send_email(..., attachments=["report.csv"])`` (and ``draft_email``) name files in the
workspace; each is read when the mail is built -- confined to the workspace (no ``..``, no
absolute path outside, no symbolic link followed out, :func:`errands.tools.workspace.locate_inside`)
-- and attached as it is, with a type guessed from its name. The card lists each one with
its size and the start of its SHA-256, so the person sees what will leave; the send's
result names the same. Caps: at most :data:`MAX_ATTACHMENTS` files, and the body and the
files together at most ``[email] max_message_bytes`` (before encoding). A file that is
missing, not a regular file, outside the workspace or over the cap is one clear error and
nothing is sent.

The path is what an approval binds, not the bytes: a file changed between the card and
the send (by another call of the same step) leaves with its new content; the result's
SHA-256 says what left.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from errands.tools.builtin.files import _read_bytes
from errands.tools.tool import ToolArgumentError, ToolError

__all__ = ["MAX_ATTACHMENTS", "Attachment", "attach", "describe", "read_attachments"]

MAX_ATTACHMENTS = 10
# characters a file's name may not hold: controls (a line break writes a line of its own on
# the card), format characters (a right-to-left override shows invoice.exe as invoiexe.pdf)
# and line or paragraph separators
_UNSHOWN = frozenset({"Cc", "Cf", "Zl", "Zp"})


@dataclass(frozen=True)
class Attachment:
    path: str  # relative to the workspace
    data: bytes

    @property
    def name(self) -> str:
        return os.path.basename(self.path) or "attachment"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def line(self) -> str:
        return f"{self.path} ({_size(len(self.data))}, sha256 {self.digest[:16]})"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / (1024 * 1024):.1f} MB"


def read_attachments(workspace: Path, paths: Sequence[str], room: int) -> list[Attachment]:
    """The files *paths* names in *workspace*, at most *room* bytes in all; one clear
    error (:class:`ToolArgumentError` for the call's fault) otherwise."""
    if len(paths) > MAX_ATTACHMENTS:
        raise ToolArgumentError(f"attachments: at most {MAX_ATTACHMENTS} files")
    out: list[Attachment] = []
    used = 0
    for path in dict.fromkeys(paths):
        if any(unicodedata.category(c) in _UNSHOWN for c in path):
            raise ToolArgumentError(
                f"attachments: {path!r} has control or invisible characters in its name (a "
                "line break or a right-to-left override would change what the card shows); "
                "rename the file"
            )
        try:
            data, size, relative = _read_bytes(workspace, path, max(room - used, 0) + 1)
        except ToolError as exc:
            raise ToolArgumentError(f"attachments: {exc}") from None
        if size > room - used or len(data) > room - used:
            raise ToolArgumentError(
                f"attachments: {path} ({_size(size)}) makes the mail larger than "
                f"max_message_bytes ({room} bytes left for the files after the body)"
            )
        used += len(data)
        out.append(Attachment(relative, data))
    return out


def describe(workspace: Path, paths: Sequence[str], room: int) -> list[str]:
    """The card's lines for *paths* (what would be attached, or why it cannot be)."""
    if not paths:
        return ["attachments: none"]
    try:
        found = read_attachments(workspace, paths, room)
    except ToolError as exc:
        return [f"attachments: {', '.join(paths)} -- cannot be sent: {exc}"]
    return [f"attachment: {a.line()}" for a in found]


def attach(msg: EmailMessage, files: Sequence[Attachment]) -> None:
    for f in files:
        kind, _ = mimetypes.guess_type(f.name)
        maintype, _, subtype = (kind or "application/octet-stream").partition("/")
        msg.add_attachment(f.data, maintype=maintype, subtype=subtype, filename=f.name)
