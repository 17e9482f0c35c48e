"""Running an errand in the foreground: its timeline live, and approvals asked inline.

The model's streamed text, the card of an approval and every message about it are shown
through :func:`errands.cli.render.visible`: no escape sequence from a model, a tool or
a web page reaches the terminal as one."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import typer
from rich.prompt import Prompt

from errands.cli.common import EXIT, err, json_object, out, who
from errands.cli.render import approval_card, event_line, safe, visible
from errands.core.errand import Errand
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.engine.delegate import WAITING
from errands.errors import ApprovalRefused, UserError
from errands.harness import Harness
from errands.store import StoreReader

__all__ = ["LivePrinter", "finish", "foreground", "interactive", "waiting_for_you"]


class LivePrinter:
    """Streams the model's text as it arrives (the loop's text listener), and a running
    tool's output (the shell's, redacted by it) under a rule."""

    def __init__(self) -> None:
        self.streaming = False
        self.line_start = True  # (of a tool's output)

    def output(self, errand_id: str, seq: int, stream: str, text: str, /) -> None:
        if self.streaming:
            out.print()
            self.streaming = False
        if stream == "exit":
            if not self.line_start:
                out.print()
            self.line_start = True
            return
        for piece in text.splitlines(keepends=True):
            if self.line_start:
                out.print("    [dim]│[/dim] ", end="")
            ended = piece.endswith(("\n", "\r"))
            shown = visible(piece.rstrip("\r\n"))
            out.print(shown, end="\n" if ended else "", markup=False, highlight=False)
            self.line_start = ended

    def __call__(self, errand_id: str, delta: str, /) -> None:
        if not self.streaming:
            out.print("    [bold]model:[/bold] ", end="")
            self.streaming = True
        out.print(visible(delta), end="", markup=False, highlight=False)

    def reset(self, errand_id: str) -> None:
        """A retry or the next model of a chain starts the reply over."""
        if self.streaming:
            out.print()
            self.streaming = False
        out.print("    [dim](retrying — the text above is discarded)[/dim]")

    def end(self) -> bool:
        was = self.streaming
        if was:
            out.print()
        self.streaming = False
        return was


def interactive(no_input: bool, as_json: bool) -> bool:
    return not (no_input or as_json) and sys.stdin.isatty() and sys.stdout.isatty()


async def foreground(
    harness: Harness, errand_id: str, *, as_json: bool, interactive: bool = False
) -> ErrandView:
    """Run the errand here, printing its timeline live (unless --json)."""
    store = harness.store
    printer = LivePrinter()
    runner = harness.runner(on_text=None if as_json else printer)
    if not as_json:
        shown = [0]

        async def show_new() -> None:
            for stored in await store.read(errand_id, after=shown[0]):
                shown[0] = stored.seq
                streamed = printer.end() if stored.event.type == "model_responded" else False
                line = event_line(stored, streamed=streamed)
                if line:
                    out.print(line, highlight=False)

        pending: list[asyncio.Task[None]] = []

        def on_append(eid: str, seq: int) -> None:
            if eid == errand_id:
                pending.append(asyncio.ensure_future(show_new()))

        store.subscribe(on_append)
        await show_new()
    while True:
        view = await runner.run_tree(errand_id)  # (and the sub-errands it waits for)
        if not as_json:
            await asyncio.gather(*pending)
            await show_new()
        asked = await waiting_for_you(store, view) if interactive else []
        if not asked:
            return view
        for approval, title in asked:
            await _ask_inline(harness, approval, title)


async def waiting_for_you(
    store: StoreReader, view: ErrandView
) -> list[tuple[PendingApproval, str]]:
    """The approvals ``errands run`` asks inline, each with the errand's title: the
    errand's own, or -- when it sleeps for its sub-errands (docs/subagents.md) -- those its
    children and grandchildren wait for, titled ``PARENT › CHILD``."""
    if view.state is ErrandState.waiting_approval:
        return [(a, view.title) for a in view.pending.values()]
    asked: list[tuple[PendingApproval, str]] = []
    if view.state is ErrandState.sleeping and view.reason == WAITING:
        for child in await store.children(view.id):
            below = await waiting_for_you(store, child)
            asked.extend((a, f"{view.title} › {title}") for a, title in below)
    return asked


async def _ask_inline(harness: Harness, approval: PendingApproval, title: str) -> None:
    """Show the whole action and record the person's decision (channel: cli)."""
    out.print(approval_card(approval, title))
    approvals = harness.approvals
    while True:
        answer = (
            await asyncio.to_thread(
                Prompt.ask,
                "[bold]approve?[/bold] \\[y]es / \\[n]o / \\[e]dit / \\[a]lways for this errand",
                choices=["y", "n", "e", "a"],
                console=out,
            )
        ).strip()
        try:
            if answer == "n":
                reason = await asyncio.to_thread(
                    Prompt.ask, "reason (goes back to the model)", console=out
                )
                await approvals.deny(approval.id, reason=reason or "no", by=who(), channel="cli")
            elif answer == "e":
                raw = await asyncio.to_thread(
                    Prompt.ask,
                    "arguments (JSON)",
                    default=json.dumps(approval.arguments),
                    console=out,
                )
                await approvals.approve(
                    approval.id,
                    by=who(),
                    channel="cli",
                    edited_arguments=json_object(raw),
                    seen_hash=approval.args_hash,
                )
            else:
                await approvals.approve(
                    approval.id,
                    by=who(),
                    channel="cli",
                    always=answer == "a",
                    seen_hash=approval.args_hash,
                )
            return
        except (ApprovalRefused, UserError) as exc:
            err.print(f"[red]{safe(str(exc))}[/red]")


def finish(view: ErrandView, *, as_json: bool) -> None:
    """The errand's last line (or its JSON), and the exit code of its state."""
    if as_json:
        sys.stdout.write(json.dumps(Errand.of(view).detail()) + "\n")
    else:
        if view.state is ErrandState.waiting_approval:
            err.print(
                f"[yellow]errand {view.id} is waiting for your approval[/yellow]: "
                f"errands approvals, then errands approve ID or errands deny ID --reason …, "
                f"then errands resume {view.id}"
            )
        elif view.state is ErrandState.sleeping and view.reason == WAITING:
            err.print(
                f"[magenta]errand {view.id} waits for its sub-errands[/magenta] (errands show "
                f"{view.id}): errands up runs them and wakes it when they have ended"
            )
        elif view.state is ErrandState.sleeping and view.wake_at is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(view.wake_at))
            err.print(
                f"[magenta]errand {view.id} sleeps until {when}[/magenta]: errands up wakes it "
                f'then, or a message sooner (errands tell {view.id} "…")'
            )
        elif view.state is ErrandState.needs_attention:
            err.print(
                f"[magenta]errand {view.id} needs your attention:[/magenta] {safe(view.reason or '')}\n"
                f'tell it how to go on: errands tell {view.id} "…" && errands resume {view.id}'
            )
        cost = f"${view.usage.cost_usd:.4f}"
        out.print(
            f"[dim]{view.id} · {view.state.value} · {view.steps} steps · "
            f"{view.usage.input_tokens} in / {view.usage.output_tokens} out · {cost}[/dim]"
        )
    code = EXIT.get(view.state, 0)
    if code:
        raise typer.Exit(code)
