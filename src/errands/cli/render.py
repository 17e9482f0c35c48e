"""Rendering errands and their timelines for people (rich) and machines (JSON)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.store import StoredEvent

__all__ = ["STATE_STYLE", "approval_card", "errands_table", "event_line", "short_args"]

STATE_STYLE = {
    ErrandState.queued: "cyan",
    ErrandState.running: "blue",
    ErrandState.waiting_approval: "bold yellow",
    ErrandState.sleeping: "magenta",
    ErrandState.done: "green",
    ErrandState.failed: "bold red",
    ErrandState.cancelled: "dim",
    ErrandState.needs_attention: "bold magenta",
}


def when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def short_args(args: dict[str, Any], limit: int = 120) -> str:
    text = json.dumps(args, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_line(stored: StoredEvent, *, streamed: bool = False) -> str | None:
    """One line (rich markup) for a timeline; None for events not worth a line."""
    e = stored.event
    seq = f"[dim]{stored.seq:>3}[/dim] "
    match e:
        case ev.ErrandCreated():
            return f"{seq}[bold]▶ {escape(e.title)}[/bold] [dim]({escape(e.model)}, workspace {escape(e.workspace)})[/dim]"
        case ev.UserMessage():
            return f"{seq}[bold cyan]you:[/bold cyan] {escape(_clip(e.content.text))}"
        case ev.ModelRequested():
            return None
        case ev.ModelResponded():
            parts = []
            if e.content and e.content.text and not streamed:
                parts.append(f"{seq}[bold]model:[/bold] {escape(_clip(e.content.text, 2000))}")
            for call in e.tool_calls:
                parts.append(
                    f"{seq}  [yellow]→ {escape(call.name)}[/yellow]"
                    f"[dim]({escape(short_args(call.arguments) if call.raw_arguments is None else call.raw_arguments[:120])})[/dim]"
                )
            usage = e.usage
            if usage.input_tokens or usage.output_tokens:
                cost = f", ${usage.cost_usd:.4f}" if usage.cost_usd else ""
                parts.append(
                    f"{seq}  [dim]{usage.input_tokens} in ({usage.cached_input_tokens} cached) / "
                    f"{usage.output_tokens} out{cost}[/dim]"
                )
            return "\n".join(parts) or None
        case ev.ToolIntent():
            return f"{seq}  [dim]running {escape(e.tool)} ({e.effect.value}, key {escape(e.idempotency_key)})[/dim]"
        case ev.ToolResult():
            mark = "[green]✓[/green]" if e.ok else f"[red]✗ {escape(e.error_kind or 'error')}[/red]"
            trust = "" if e.content.integrity == "trusted" else " [dim](untrusted)[/dim]"
            return f"{seq}  {mark} {escape(e.tool)}: {escape(_clip(e.content.text, 300))}{trust}"
        case ev.ApprovalRequested():
            return (
                f"{seq}[bold yellow]⏸ needs approval[/bold yellow] {escape(e.tool)}"
                f"{escape(short_args(e.arguments))} — {escape(e.reason)} [dim](rule {escape(e.rule)})[/dim]"
            )
        case ev.ApprovalGranted():
            edited = " with edited arguments" if e.edited_arguments is not None else ""
            always = " (always for this errand)" if e.always else ""
            return f"{seq}[green]✔ approved{edited}{always}[/green] by {escape(e.by)} via {escape(e.channel)}"
        case ev.ApprovalDenied():
            return f"{seq}[red]✘ denied[/red] by {escape(e.by)} via {escape(e.channel)}: {escape(e.reason)}"
        case ev.StateChanged():
            style = STATE_STYLE.get(ErrandState(e.state), "")
            text = f"{seq}[{style}]■ {e.state}[/{style}]"
            if e.reason:
                text += f": {escape(e.reason)}"
            if e.result is not None:
                text += f"\n    {escape(e.result.text)}"
            return text
        case ev.ErrorRaised():
            return f"{seq}[red]! {escape(e.kind)}: {escape(e.message)}[/red]"
        case ev.CancelRequested():
            return f"{seq}[dim]✖ cancel requested by {escape(e.by)}: {escape(e.reason)}[/dim]"
        case ev.ErrandPurged():
            return f"{seq}[dim]private content purged by {escape(e.by)}[/dim]"
        case ev.LimitsRaised():
            return f"{seq}[cyan]+ {e.more_steps} more steps[/cyan], given by {escape(e.by)}"
    return None


def errands_table(views: list[ErrandView], width: int = 120) -> Table:
    """The errands, one line each: a title longer than the terminal leaves room for
    ends in an ellipsis (*width*: the terminal's columns)."""
    wide = width >= 100  # narrower: no steps and no date, the title keeps its room
    table = Table(show_lines=False, header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("state", no_wrap=True)
    # the other columns and the borders take: id 13, state up to 23, cost 9, 13 for
    # borders and padding, and wide, steps 5 + created 19 + 6
    rest = 58 + (30 if wide else 0)
    table.add_column("title", no_wrap=True, overflow="ellipsis", max_width=max(10, width - rest))
    if wide:
        table.add_column("steps", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    if wide:
        table.add_column("created", no_wrap=True)
    for v in views:
        style = STATE_STYLE.get(v.state, "")
        waiting = f" ({len(v.pending)})" if v.pending else ""
        if v.state is ErrandState.running and v.reason:
            waiting = " (provider down)"
        state = f"[{style}]{v.state.value}{waiting}[/{style}]"
        cost = f"${v.usage.cost_usd:.4f}"
        if wide:
            table.add_row(v.id, state, escape(v.title), str(v.steps), cost, when(v.created_at))
        else:
            table.add_row(v.id, state, escape(v.title), cost)
    return table


def approval_card(p: PendingApproval, title: str = "") -> Panel:
    """One pending action, in full: what will happen and why it needs a yes."""
    body = Table.grid(padding=(0, 1))
    body.add_column(style="bold", no_wrap=True)
    body.add_column()
    body.add_row("id", p.id)
    if title:
        body.add_row("errand", escape(title))
    body.add_row("tool", f"{escape(p.tool)} [dim]({p.effect})[/dim]")
    body.add_row("why", f"{escape(p.reason)} [dim](rule {escape(p.rule)})[/dim]")
    body.add_row("asked", when(p.at))
    group = Group(body, Text(""), Text(p.preview or json.dumps(p.arguments, indent=2)))
    return Panel(group, title="[bold yellow]waiting for your approval[/bold yellow]", expand=False)
