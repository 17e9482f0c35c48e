"""``errands tools``: every tool errands gives errands -- the built-ins, installed
plugins (entry-point group ``errands.tools``) and the config's ``[tools] modules`` --
with what each does, its effect class and its arguments' roles."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from errands.cli.common import JsonOpt, fail, out, settings
from errands.errors import ErrandsError

if TYPE_CHECKING:
    from errands.tools.tool import Tool

__all__ = ["register"]


def _effect(tool: Tool) -> str:
    from errands.core.events import EffectClass

    spec = tool.effect_spec
    return spec.value if isinstance(spec, EffectClass) else "depends on the arguments"


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    end = flat.find(". ")
    return flat if end < 0 else flat[: end + 1]


def _row(tool: Tool, source: str) -> dict[str, Any]:
    return {
        "name": tool.name,
        "source": source,
        "effect": _effect(tool),
        "description": _first_sentence(tool.description),
        "idempotent": tool.safe_to_retry,
        "roles": {arg: role.value for arg, role in tool.arg_roles.items()},
        "parameters": tool.schema.parameters,
    }


def tools(as_json: JsonOpt = False) -> None:
    """List every tool: built-ins, installed plugins and [tools] modules (plugin code
    runs unsandboxed inside errands)."""
    from errands.core.states import ErrandView
    from errands.tools.plugins import load_tools

    try:
        sources = load_tools(settings().tools.modules)
    except ErrandsError as exc:
        fail(str(exc))
    anyone = ErrandView(id="")
    rows = [
        _row(tool, source.name if source.kind == "builtin" else f"{source.kind} {source.name}")
        for source in sources
        for tool in source.toolset.tools(anyone)
    ]
    from errands.tools.builtin.memory import memory_toolset  # (over the store: harness.build)

    rows += [_row(tool, "builtin") for tool in memory_toolset(None).tools(anyone)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(header_style="bold")
    for column in ("tool", "from", "effect", "what it does"):
        table.add_column(column, no_wrap=column != "what it does")
    for row in rows:
        table.add_row(
            escape(row["name"]), escape(row["source"]), row["effect"], escape(row["description"])
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command()(tools)
