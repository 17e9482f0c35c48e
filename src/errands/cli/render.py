"""Rendering errands and their timelines for people (rich) and machines (JSON).

Everything shown here that errands did not write itself -- the model's text, tool
names, arguments and results, titles, reasons, who decided -- goes through
:func:`visible` first: a terminal escape sequence in it (``ESC [2K`` erasing a line,
``ESC [8m`` hiding what follows, ``ESC ]8;;`` a hidden link, a carriage return
overwriting the line, a bidirectional override reordering it) is shown as text
(``\\x1b[2K``), so what a person approves is what they see. And through rich's
``escape``, so that it cannot be read as markup either.

Cheap to import (``errands --help`` does, through :mod:`errands.cli.common`): the
events are imported by the functions that show them.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from errands.core import events as ev
    from errands.core.states import ErrandView, PendingApproval
    from errands.store import StoredEvent

__all__ = [
    "STATE_STYLE",
    "approval_card",
    "child_line",
    "errands_table",
    "event_line",
    "safe",
    "short_args",
    "visible",
]

# by the state's value (an ErrandState is equal to it)
STATE_STYLE: dict[str, str] = {
    "queued": "cyan",
    "running": "blue",
    "waiting_approval": "bold yellow",
    "sleeping": "magenta",
    "done": "green",
    "failed": "bold red",
    "cancelled": "dim",
    "needs_attention": "bold magenta",
}


# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-byte CSI to some
# terminals), and the invisible characters that reorder or break a line
_SHOWN: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c not in (9, 10)}
_SHOWN |= {c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}
_SHOWN |= {0x0D: "\\r"}
_LINE_BREAKERS = (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F))
_SHOWN |= {c: f"\\u{c:04x}" for c in (*_LINE_BREAKERS, *range(0x2066, 0x206A))}


def visible(text: str) -> str:
    """*text* with every control character (but tab and newline) shown as an escape:
    ``"\\x1b[2K"`` for ESC [2K. For anything shown on a terminal that errands did
    not write itself."""
    return text.translate(_SHOWN)


def safe(text: str) -> str:
    """*text* ready for rich markup: control characters shown (:func:`visible`), markup
    escaped."""
    return escape(visible(text))


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
    from errands.core import events as ev

    e = stored.event
    seq = f"[dim]{stored.seq:>3}[/dim] "
    match e:
        case ev.ErrandCreated():
            mode = ", plan mode" if e.mode else ""
            if e.channel == "email":  # (a mail's words, not the person's: labelled so)
                mode += f", {safe(e.by.replace('email:', 'a mail from '))}"
            return f"{seq}[bold]▶ {safe(e.title)}[/bold] [dim]({safe(e.model)}{mode}, workspace {safe(e.workspace)})[/dim]{_label(e.content)}"
        case ev.UserMessage():
            return f"{seq}[bold cyan]{_speaker(e)}:[/bold cyan] {safe(_clip(e.content.text))}{_label(e.content)}"
        case ev.ModelRequested():
            return None
        case ev.ModelResponded():
            parts = []
            if e.content and e.content.text and not streamed:
                steered = (
                    " [dim](it saw untrusted content)[/dim]"
                    if e.content.integrity == "untrusted"
                    else ""
                )
                parts.append(
                    f"{seq}[bold]model:[/bold] {safe(_clip(e.content.text, 2000))}{steered}"
                )
            for call in e.tool_calls:
                parts.append(
                    f"{seq}  [yellow]→ {safe(call.name)}[/yellow]"
                    f"[dim]({safe(short_args(call.arguments) if call.raw_arguments is None else call.raw_arguments[:120])})[/dim]"
                )
            usage = e.usage
            if usage.input_tokens or usage.output_tokens:
                cost = f", ${usage.cost_usd:.4f}" if usage.cost_usd else ""
                parts.append(
                    f"{seq}  [dim]{usage.input_tokens} in ({usage.cached_input_tokens} cached) / "
                    f"{usage.output_tokens} out{cost}[/dim]"
                )
            return "\n".join(parts) or None
        case ev.ModelUsed():
            cost = f", ${e.usage.cost_usd:.4f}" if e.usage.cost_usd else ""
            return (
                f"{seq}  [dim]{safe(e.purpose)} by {safe(e.model)}: {e.usage.input_tokens} in / "
                f"{e.usage.output_tokens} out{cost}[/dim]"
            )
        case ev.ToolIntent():
            return f"{seq}  [dim]running {safe(e.tool)} ({e.effect.value}, key {safe(e.idempotency_key)})[/dim]"
        case ev.ToolResult():
            mark = "[green]✓[/green]" if e.ok else f"[red]✗ {safe(e.error_kind or 'error')}[/red]"
            return f"{seq}  {mark} {safe(e.tool)}: {safe(_clip(e.content.text, 300))}{_label(e.content)}"
        case ev.ApprovalRequested():
            return (
                f"{seq}[bold yellow]⏸ needs approval[/bold yellow] {safe(e.tool)}"
                f"{safe(short_args(e.arguments))} — {safe(e.reason)} [dim](rule {safe(e.rule)})[/dim]"
            )
        case ev.ApprovalGranted():
            edited = " with edited arguments" if e.edited_arguments is not None else ""
            always = " (always for this errand)" if e.always else ""
            return f"{seq}[green]✔ approved{edited}{always}[/green] by {safe(e.by)} via {safe(e.channel)}"
        case ev.ApprovalDenied():
            return (
                f"{seq}[red]✘ denied[/red] by {safe(e.by)} via {safe(e.channel)}: {safe(e.reason)}"
            )
        case ev.StateChanged():
            style = STATE_STYLE.get(e.state, "")
            text = f"{seq}[{style}]■ {e.state}[/{style}]"
            if e.reason:
                text += f": {safe(e.reason)}"
            if e.result is not None:
                text += f"\n    {safe(e.result.text)}"
            return text
        case ev.ErrorRaised():
            return f"{seq}[red]! {safe(e.kind)}: {safe(e.message)}[/red]"
        case ev.CancelRequested():
            return f"{seq}[dim]✖ cancel requested by {safe(e.by)}: {safe(e.reason)}[/dim]"
        case ev.ErrandPurged():
            return f"{seq}[dim]private content purged by {safe(e.by)}[/dim]"
        case ev.ContextCompacted():
            what = [f"{len(e.masked)} outputs masked"] if e.masked else []
            if e.summary is not None:
                what.append(f"{e.summarised} messages summarised")
            return (
                f"{seq}[dim]context compacted ({', '.join(what)}): ~{e.tokens_before:,} -> "
                f"~{e.tokens_after:,} of {e.window:,} tokens[/dim]"
                + (f"{_label(e.summary)}" if e.summary is not None else "")
            )
        case ev.ErrandCompacted():
            return f"{seq}[dim]compacted by retention ({e.events} events, {e.bytes:,} bytes): {safe(e.summary)}[/dim]"
        case ev.LimitsRaised():
            return f"{seq}[cyan]+ {e.more_steps} more steps[/cyan], given by {safe(e.by)}"
        case ev.Sleeping():
            why = f": {safe(e.reason)}" if e.reason else ""
            return f"{seq}[magenta]☾ sleeps until {when(e.wake_at)}{why}[/magenta]"
    return None


def _speaker(message: ev.UserMessage) -> str:
    """Who a message is from: you, a watch, a schedule, or errands itself."""
    if message.channel == "watch":
        return f"watch {safe(message.by.removeprefix('watch:'))}"
    if message.channel == "schedule":
        return f"schedule {safe(message.by.removeprefix('schedule:'))}"
    if message.channel == "email":
        return f"mail from {safe(message.by.removeprefix('email:'))}"
    return "you" if message.content.provenance.kind == "user" else "errands"


def _label(content: ev.Content) -> str:
    """A piece's label, when it is not the default one: untrusted, secret, public."""
    marks = []
    if content.integrity == "untrusted":
        marks.append("untrusted")
    if content.confidentiality != "private":
        marks.append(content.confidentiality.value)
    return f" [dim]({', '.join(marks)})[/dim]" if marks else ""


def child_line(view: ErrandView) -> str:
    """A sub-errand under its parent's timeline: id, state, cost, steps, time, title."""
    style = STATE_STYLE.get(view.state) or "default"
    took = max(0.0, view.updated_at - view.created_at)
    return (
        f"  └ {view.id} [{style}]{view.state.value}[/{style}] · ${view.usage.cost_usd:.4f}"
        f" · {view.steps} steps · {took:.1f} s · {safe(view.title)}"
    )


def errands_table(views: list[ErrandView], width: int = 120) -> Table:
    """The errands, one line each: a title longer than the terminal leaves room for
    ends in an ellipsis (*width*: the terminal's columns). A run of a schedule is
    marked ``⏲ NAME`` before its title; a sleeping errand says until when, and why."""
    from errands.core.states import ErrandState

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
        if v.state is ErrandState.sleeping and v.wake_at is not None:
            waiting = f" ({_until(v.wake_at)})"
        state = f"[{style}]{v.state.value}{waiting}[/{style}]"
        cost = f"${v.usage.cost_usd:.4f}"
        title = safe(v.title)
        if v.schedule:  # (a run's title starts with its schedule's name: said once)
            title = safe(v.title.removeprefix(f"{v.schedule}: "))
            title = f"[cyan]⏲ {safe(v.schedule)}[/cyan] {title}"
        if v.state is ErrandState.sleeping and v.reason:
            title += f" [dim]· waits for: {safe(v.reason)}[/dim]"
        if wide:
            table.add_row(v.id, state, title, str(v.steps), cost, when(v.created_at))
        else:
            table.add_row(v.id, state, title, cost)
    return table


def _until(ts: float) -> str:
    """A sleeping errand's wake time, short (the state column stays narrow): ``→14:30``
    today, else ``→12-08 09:00``."""
    moment = dt.datetime.fromtimestamp(ts)
    if moment.date() == dt.date.today():
        return f"→{moment:%H:%M}"
    return f"→{moment:%m-%d %H:%M}"


def approval_card(p: PendingApproval, title: str = "") -> Panel:
    """One pending action, in full: what will happen and why it needs a yes."""
    body = Table.grid(padding=(0, 1))
    body.add_column(style="bold", no_wrap=True)
    body.add_column()
    body.add_row("id", safe(p.id))
    if title:
        body.add_row("errand", safe(title))
    body.add_row("tool", f"{safe(p.tool)} [dim]({safe(str(p.effect))})[/dim]")
    body.add_row("why", f"{safe(p.reason)} [dim](rule {safe(p.rule)})[/dim]")
    body.add_row("asked", when(p.at))
    preview = p.preview or json.dumps(p.arguments, indent=2, ensure_ascii=False)
    group = Group(body, Text(""), Text(visible(preview)))
    return Panel(group, title="[bold yellow]waiting for your approval[/bold yellow]", expand=False)


def policy_line(decision: str, rule: str | None, reason: str | None) -> str:
    """What the policy says about an edited call, shown before the person's yes."""
    style = {"allow": "green", "ask": "yellow", "deny": "red"}.get(decision, "")
    why = f": {safe(reason)}" if reason else ""
    named = f" [dim](rule {safe(rule)})[/dim]" if rule else ""
    return f"the policy for the edited call: [{style}]{decision}[/{style}]{why}{named}"
