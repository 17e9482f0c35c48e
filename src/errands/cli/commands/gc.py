"""``errands gc [--dry-run] [--json] [--vacuum]``: apply ``[retention]`` now, or show
what it would do (errands.engine.retention; docs/store.md, "Retention")."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from errands.cli.common import JsonOpt, out, with_harness

if TYPE_CHECKING:
    from errands.harness import Harness
    from errands.store.retention import GcReport

__all__ = ["register"]


def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would go; change nothing.")
    ] = False,
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help="Once, for a store made before retention: rewrite the file so that it "
            "can shrink (a full VACUUM: needs its size in free disk; writers wait).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Apply retention now: compact finished errands past `[retention] keep_days` (and
    schedule runs past their last `schedule_runs`) to their request, result, cost and a
    summary; forget old watch items; give the freed space back. Safe while errands up
    runs (which also does this every `every_minutes`)."""
    from errands.engine.retention import Retention

    async def go(h: Harness) -> GcReport:
        if vacuum and not dry_run:
            await _switch(h)
        return await Retention(h.store, h.settings.retention).run(dry_run=dry_run)

    report = with_harness(go, write=not dry_run)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(_text(report), highlight=False)


async def _switch(h: Harness) -> None:
    import asyncio

    from errands.store.sqlite.retention import switch_to_incremental

    await asyncio.to_thread(switch_to_incremental, str(h.settings.db_path))


def _text(r: GcReport) -> str:
    would = "would compact" if r.dry_run else "compacted"
    lines = [
        f"{would} {r.errands} finished errand{'s' * (r.errands != 1)}: "
        f"{r.events:,} events, {r.bytes:,} bytes"
        + (" in their full logs" if r.dry_run else " removed")
        + (f" ({r.refused} changed meanwhile, left for next time)" if r.refused else ""),
        f"{'would forget' if r.dry_run else 'forgot'} {r.runs:,} schedule run rows, "
        f"{r.items:,} watch items, {r.wakeups:,} wake-ups",
    ]
    if r.dry_run:
        lines.append(f"the store takes {r.file_bytes_before:,} bytes with its WAL")
    else:
        lines.append(
            f"the store took {r.file_bytes_before:,} bytes with its WAL, now "
            f"{r.file_bytes_after:,} ({r.reclaimed_bytes:,} bytes of free pages given back)"
        )
    if r.auto_vacuum != "incremental":
        lines.append(
            "the file does not shrink by itself (it was made before retention): "
            "errands gc --vacuum rewrites it once so that it does"
        )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command()(gc)
