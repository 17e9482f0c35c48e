"""``errands workers``: the processes that run errands from a PostgreSQL store -- each
one's name, host, pid, start, last heartbeat, and the errands it holds with their lease
ages (docs/scale-out.md). A worker whose heartbeat is older than its lease time is shown
dead (its errands are free for the others to take) until it is forgotten."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from errands.cli.common import JsonOpt, fail, out, settings
from errands.cli.render import safe
from errands.errors import ErrandsError, UserError

if TYPE_CHECKING:
    from errands.store.postgres.workers import WorkerRow

__all__ = ["register"]


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _rows() -> list[WorkerRow]:
    from errands.store import open_store

    s = settings()
    if not s.store_url:
        raise UserError(
            "errands workers lists the workers of a PostgreSQL store ([store] url or "
            "ERRANDS_STORE_URL); this home's store is its SQLite file"
        )
    store = open_store(s)

    async def read() -> list[WorkerRow]:
        try:
            found: list[WorkerRow] = await store.workers()  # type: ignore[attr-defined]
            return found
        finally:
            await store.close()

    return asyncio.run(read())


def workers(as_json: JsonOpt = False) -> None:
    """List the processes that run errands (errands worker, errands up) on this
    PostgreSQL store: live ones first, then the dead, with the errands each holds."""
    try:
        rows = _rows()
    except ErrandsError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps([w.as_json() for w in rows]) + "\n")
        return
    if not rows:
        out.print("[dim]no worker has run errands from this store lately[/dim]")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("", "name", "host", "pid", "started", "heartbeat", "errands (lease age)"):
        table.add_column(column)
    for w in rows:
        held = ", ".join(f"{h.errand_id} ({_ago(h.age)})" for h in w.held) or "-"
        table.add_row(
            "[green]live[/green]" if w.live else "[red]dead[/red]",
            safe(w.name),
            safe(w.host),
            str(w.pid),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w.started_at)),
            f"{_ago(w.seen_ago)} ago",
            safe(held),
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command()(workers)
