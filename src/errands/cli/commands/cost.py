"""``errands cost``: what errands cost, per errand, model and day."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from errands.cli.common import JsonOpt, out, with_harness
from errands.cli.render import safe

if TYPE_CHECKING:
    from errands.costs.report import CostReport, Rollup
    from errands.harness import Harness

__all__ = ["register"]


def _table(title: str, rows: list[Rollup]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name, justify in (
        (title.split(" ")[-1], "left"),
        ("calls", "right"),
        ("input", "right"),
        ("cached", "right"),
        ("output", "right"),
        ("cache hit", "right"),
        ("USD", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        d = r.as_dict()
        table.add_row(
            safe(r.key),  # (a model's name comes from outside: shown, never obeyed)
            str(r.calls),
            f"{r.usage.input_tokens:,}",
            f"{r.usage.cached_input_tokens:,}",
            f"{r.usage.output_tokens:,}",
            f"{float(d['cache_hit_ratio']):.0%}",  # type: ignore[arg-type]
            f"${r.usage.cost_usd:.4f}",
        )
    return table


def cost(
    errand_id: Annotated[
        str | None, typer.Argument(help="Only this errand (a unique prefix will do).")
    ] = None,
    days: Annotated[int | None, typer.Option(help="Only the last N days.")] = None,
    top: Annotated[int, typer.Option(help="Errands to list, most expensive first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """What errands cost: totals per day, per model and per errand (from the log)."""
    from errands.costs.report import build_report

    async def go(h: Harness) -> tuple[CostReport, dict[str, Any]]:
        store = h.store
        since = time.time() - days * 86400 if days else 0.0
        full = await store.find(errand_id) if errand_id else None
        budget = (await store.budget(h.settings.budget.daily_usd)).as_dict()
        if full is not None:
            view = await store.view(full)
            budget["errand"] = {"id": full, "budget_usd": view.budget_usd}
        return build_report(await store.usage(since=since, errand_id=full)), budget

    report, budget = with_harness(go, write=False)
    if as_json:
        sys.stdout.write(json.dumps({**report.as_dict(), "budget": budget}) + "\n")
        return
    if not report.total.calls:
        out.print("No model calls yet.")
        out.print(_budget_line(budget))
        return
    out.print(_table("by day", report.by_day))
    out.print(_table("by model", report.by_model))
    out.print(_table("by errand", report.by_errand[:top]))
    t = report.total
    out.print(
        f"[bold]total[/bold] {t.calls} calls · {t.usage.input_tokens:,} in "
        f"({t.usage.cached_input_tokens:,} cached) / {t.usage.output_tokens:,} out · "
        f"[bold]${t.usage.cost_usd:.4f}[/bold]"
    )
    errand = budget.get("errand")
    if errand and errand["budget_usd"] is not None:
        out.print(f"this errand's budget: ${t.usage.cost_usd:.4f} of ${errand['budget_usd']:.4f}")
    out.print(_budget_line(budget))


def _budget_line(b: dict[str, Any]) -> str:
    """Today against the daily budget, with what calls in flight have reserved."""
    line = f"today ({b['day']}): ${b['spent_usd']:.4f} spent"
    if b["calls_in_flight"]:
        line += f", ${b['reserved_usd']:.4f} reserved by {b['calls_in_flight']} call(s) in flight"
    if b["daily_usd"] is None:
        return line + " · no daily budget (set \\[budget] daily_usd in errands.toml)"
    return line + f" · daily budget ${b['daily_usd']:.2f}, [bold]${b['left_usd']:.4f} left[/bold]"


def register(app: typer.Typer) -> None:
    app.command()(cost)
