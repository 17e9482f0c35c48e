"""How a pending action is edited on its approval card, from what its tool declares.

Each tool says what its arguments *are* (:class:`~errands.tools.tool.ArgRole`); the card
turns that into a form: a line for a recipient, a subject, a URL, a method or a path; a
plain text area for a body or a file's content; name/value rows for headers. A file
write also shows what the file holds now, read from the workspace with the file tools'
own confinement, beside the new content. Arguments without a role -- and every argument
as raw JSON -- stay editable under *every argument*; the page keeps the two in step and
approves the JSON (``edited_arguments``), as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errands.server.workspace_files import read_workspace_file
from errands.tools.tool import ArgRole, Tool

__all__ = ["EditField", "Editor", "editor_for"]

LINE = "line"  # one line of text
LIST = "list"  # a list of strings, written "a, b"
NUMBER = "number"
TEXT = "text"  # plain text, many lines
PAIRS = "pairs"  # name/value rows

_KIND = {
    ArgRole.recipient: LINE,
    ArgRole.subject: LINE,
    ArgRole.url: LINE,
    ArgRole.method: LINE,
    ArgRole.path: LINE,
    ArgRole.currency: LINE,
    ArgRole.payee: LINE,
    ArgRole.command: LINE,
    ArgRole.amount: NUMBER,
    ArgRole.body: TEXT,
    ArgRole.content: TEXT,
    ArgRole.headers: PAIRS,
}
_LABEL = {
    ArgRole.url: "URL",
    ArgRole.method: "Method",
    ArgRole.headers: "Headers",
    ArgRole.body: "Body",
    ArgRole.content: "New content",
    ArgRole.path: "Path",
    ArgRole.subject: "Subject",
}


@dataclass(frozen=True)
class EditField:
    name: str  # the argument
    role: str
    label: str
    kind: str
    value: str = ""
    pairs: list[tuple[str, str]] = field(default_factory=list)
    nullable: bool = False  # the argument was null: an empty field keeps it null


@dataclass(frozen=True)
class Editor:
    fields: list[EditField]
    disk: str | None = None  # a file write: what the file holds now
    disk_note: str = ""  # (new file), (not text), ...


def _types(schema: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    if isinstance(schema.get("type"), str):
        found.add(schema["type"])
    for option in schema.get("anyOf", []) or []:
        if isinstance(option, Mapping) and isinstance(option.get("type"), str):
            found.add(option["type"])
    return found


def _field(name: str, role: ArgRole, value: Any, schema: Mapping[str, Any]) -> EditField | None:
    """The form field for one argument; None when its value does not fit one."""
    kind = _KIND.get(role, LINE)
    types = _types(schema)
    label = _LABEL.get(role) or name.replace("_", " ").capitalize()
    nullable = value is None
    if kind == PAIRS:
        if value is not None and not isinstance(value, Mapping):
            return None
        pairs = [(str(k), "" if v is None else str(v)) for k, v in (value or {}).items()]
        return EditField(name, role.value, label, PAIRS, pairs=pairs, nullable=nullable)
    if "array" in types or isinstance(value, list):
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            return None
        return EditField(name, role.value, label, LIST, ", ".join(value or []), nullable=nullable)
    if kind == NUMBER and (types & {"number", "integer"} or isinstance(value, int | float)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return None
        return EditField(name, role.value, label, NUMBER, "" if value is None else str(value))
    if value is not None and not isinstance(value, str):
        return None
    return EditField(name, role.value, label, kind, value or "", nullable=nullable)


def editor_for(
    tool: Tool | None, arguments: Mapping[str, Any], workspace: Path | None, errand_id: str
) -> Editor:
    """The card's form for a call of *tool* with *arguments* (no fields: JSON only)."""
    if tool is None or not tool.arg_roles:
        return Editor([])
    properties = tool.schema.parameters.get("properties", {}) or {}
    fields = []
    for name in tool.args_model.model_fields:  # the tool's own order
        role = tool.arg_roles.get(name)
        if role is None:
            continue
        made = _field(name, role, arguments.get(name), properties.get(name, {}) or {})
        if made is not None:
            fields.append(made)
    paths, contents = tool.args_with(ArgRole.path), tool.args_with(ArgRole.content)
    path = arguments.get(paths[0]) if paths else None
    if not (contents and isinstance(path, str) and workspace is not None):
        return Editor(fields)
    now = read_workspace_file(workspace, errand_id, path)
    if now.text is not None:
        return Editor(fields, now.text, f"{path} now")
    if now.status == 404:
        return Editor(fields, "", f"{path} does not exist yet: a new file")
    return Editor(fields, "", f"{path}: {now.problem}")
