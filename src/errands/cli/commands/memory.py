"""``errands memory``: what errands remembered across errands (docs/memory.md).

- ``errands memory ls [--scope S] [--json]``: the newest memories (every scope by default);
- ``errands memory search QUERY [--scope S] [--json]``: those matching any word, best first;
- ``errands memory rm ID [--json]``: purge one (its row and index entry, and its text
  from the store file's pages).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from errands.cli.common import JsonOpt, out, with_harness
from errands.cli.render import safe, when

if TYPE_CHECKING:
    from errands.harness import Harness
    from errands.store.protocol import Memory

__all__ = ["register"]

memory_app = typer.Typer(
    help="Memories errands keeps across errands (the remember and search_memory tools): "
    "list, search and delete them.",
    no_args_is_help=True,
)

ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope",
        help="Only this scope: 'person' (errands started by you) or 'schedule:NAME' (the "
        "runs of schedule NAME). Default: every scope.",
    ),
]
LimitOpt = Annotated[int, typer.Option("--limit", help="At most this many (1 to 1,000).")]


def _show(found: list[Memory], as_json: bool, empty: str) -> None:
    from errands.store.memory import as_dict

    if as_json:
        print(json.dumps([as_dict(m) for m in found], ensure_ascii=False, indent=2))
        return
    if not found:
        out.print(empty, highlight=False)
        return
    table = Table(header_style="bold", box=None, padding=(0, 2, 0, 0))
    for column in ("id", "scope", "kept", "trust", "tags", "text"):
        table.add_column(column, no_wrap=column != "text")
    for m in found:
        untrusted = m.label.integrity.value == "untrusted"
        table.add_row(
            str(m.id),
            safe(m.scope),
            when(m.at),
            "[yellow]untrusted[/yellow]" if untrusted else "trusted",
            safe(" ".join(m.tags)),
            safe(m.text if len(m.text) <= 300 else m.text[:300] + "…"),
        )
    out.print(table)


@memory_app.command("ls")
def ls(scope: ScopeOpt = None, limit: LimitOpt = 50, as_json: JsonOpt = False) -> None:
    """The newest memories, with their scope, when they were kept and whether they came
    from untrusted content (a web page, a mail)."""

    async def body(h: Harness) -> list[Memory]:
        return await h.store.memories(scope, None, limit)

    _show(with_harness(body, write=False), as_json, "no memories yet")


@memory_app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="Words to look for (any of them).")],
    scope: ScopeOpt = None,
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
) -> None:
    """Memories matching any word of QUERY, best match first."""

    async def body(h: Harness) -> list[Memory]:
        return await h.store.memories(scope, query, limit)

    _show(with_harness(body, write=False), as_json, f"no memory matches {query!r}")


@memory_app.command("rm")
def rm(
    memory_id: Annotated[int, typer.Argument(metavar="ID", help="The memory's id (memory ls).")],
    as_json: JsonOpt = False,
) -> None:
    """Delete a memory for good: its row and search entry are purged and its text wiped
    from the store file. (The errand that remembered it still holds the remember call
    in its own log: see docs/memory.md.)"""

    async def body(h: Harness) -> Memory:
        gone = await h.store.memory(memory_id)
        await h.store.forget(memory_id)
        return gone

    gone = with_harness(body)
    if as_json:
        print(json.dumps({"deleted": memory_id}))
        return
    out.print(f"deleted memory {gone.id} ({safe(gone.scope)})", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(memory_app, name="memory")
