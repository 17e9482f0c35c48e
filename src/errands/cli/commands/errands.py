"""Errands themselves: ``run``, ``demo``, ``resume``, ``ls``, ``show``, ``cancel``, ``tell``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from errands.cli import remote
from errands.cli.common import (
    IdArg,
    JsonOpt,
    NoInputOpt,
    StateName,
    fail,
    out,
    server_for_home,
    with_harness,
)
from errands.cli.render import child_line, errands_table, event_line
from errands.errors import ErrandsError
from errands.textlimit import check_text

if TYPE_CHECKING:
    from errands.core.states import ErrandView
    from errands.harness import Harness

SHOW_LAST = 200  # events errands show prints (its request besides)

__all__ = ["register"]


def run(
    text: Annotated[str, typer.Argument(help="What you want done, in plain words.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="PROVIDER:MODEL, e.g. openai:gpt-4o-mini or scripted:demo."
        ),
    ] = None,
    workspace: Annotated[
        str | None, typer.Option("--workspace", "-w", help="Directory the errand may work in.")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            "--max-cost",
            min=0.0,
            help="Budget in USD for this errand and any errands it starts; each model call "
            "reserves its worst case first, so the errand stops before passing it.",
        ),
    ] = None,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Plan mode: the model never reads untrusted content (pages, files, mail); "
            "it gets handles, and a tool-less extractor gives it typed values. Fewer "
            "approvals after untrusted data; see docs/security.md.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    no_input: NoInputOpt = False,
) -> None:
    """Start an errand and run it here, showing its timeline live.

    On a terminal, actions that need approval are shown in full and you are asked
    inline; without one (or with --no-input) the errand is left waiting.

    Exit codes: 0 done, 1 failed, 2 bad input, 3 waiting for approval,
    4 needs attention, 5 cancelled, 6 sleeping (it called wait).
    """

    try:
        check_text(text, "the errand's text")  # (before anything is opened)
    except ErrandsError as exc:
        fail(str(exc))
    from errands.cli.live import finish, foreground, interactive

    async def go(h: Harness) -> ErrandView:
        errand_id = await h.create(
            text,
            model=model,
            workspace=workspace,
            max_cost_usd=max_cost,
            mode="plan" if plan else None,
        )
        return await foreground(
            h, errand_id, as_json=as_json, interactive=interactive(no_input, as_json)
        )

    finish(with_harness(go), as_json=as_json)


def demo(as_json: JsonOpt = False) -> None:
    """Run the bundled scripted demo errand (no model key needed)."""
    run(
        "Make me a shopping list for the weekend (oat milk, coffee beans, lemons, basil) "
        "and save it in my workspace.",
        model="scripted:demo",
        workspace=None,
        as_json=as_json,
        no_input=True,
    )


def resume(
    errand_id: IdArg,
    as_json: JsonOpt = False,
    no_input: NoInputOpt = False,
    more_steps: Annotated[
        int | None,
        typer.Option(
            "--more-steps",
            min=1,
            help="Give it N more model turns first (an errand stopped at its step limit goes on).",
        ),
    ] = None,
) -> None:
    """Continue an errand in the foreground (after a crash, a decision or a message);
    an errand its model failed (a provider outage) asks the model again."""
    from errands.cli.live import finish, foreground, interactive

    async def go(h: Harness) -> ErrandView:
        full = await h.store.find(errand_id)
        if more_steps is not None:
            await h.continue_errand(full, more_steps)
        if await h.retry_model(full) and not as_json:
            out.print("[dim]the model failed this errand last time: asking it again[/dim]")
        return await foreground(
            h, full, as_json=as_json, interactive=interactive(no_input, as_json)
        )

    finish(with_harness(go), as_json=as_json)


def list_errands(
    as_json: JsonOpt = False,
    state_filter: Annotated[
        list[StateName] | None, typer.Option("--state", help="Only errands in this state.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """List errands, newest first."""
    from errands.core.errand import Errand
    from errands.core.states import ErrandState

    states = None if state_filter is None else [ErrandState(s) for s in state_filter]

    async def go(h: Harness) -> list[ErrandView]:
        return await h.store.list_errands(states=states, limit=limit)

    views = with_harness(go, write=False)
    if as_json:
        sys.stdout.write(json.dumps([Errand.of(v).row() for v in views]) + "\n")
    elif not views:
        out.print('No errands yet. Try [bold]errands demo[/bold] or [bold]errands run "…"[/bold].')
    else:
        out.print(errands_table(views, out.width))


def show(
    errand_id: IdArg,
    last: Annotated[
        int,
        typer.Option(
            "--last",
            min=1,
            help="Show the newest N events (a long errand's older ones are "
            "counted, not shown; --all shows them).",
        ),
    ] = SHOW_LAST,
    everything: Annotated[bool, typer.Option("--all", help="Show every event.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show an errand's timeline: its request and its newest events (--json: every event)."""
    from errands.core.errand import Errand

    async def go(h: Harness) -> None:
        full = await h.store.find(errand_id)
        view = await h.store.view(full)
        if as_json or everything or view.last_seq <= last + 1:
            events = await h.store.read(full)
        else:  # a long errand: its request, and a page of the newest (never the whole log)
            page = await h.store.read_latest(full, last)
            events = await h.store.read_latest(full, 1, before=2) + page
        if as_json:
            sys.stdout.write(json.dumps(Errand.of(view).detail(events), default=str) + "\n")
            return
        for i, stored in enumerate(events):
            if i == 1 and stored.seq > 2:
                out.print(
                    f"[dim]    … {stored.seq - 2} earlier events (errands show {full} --all)[/dim]",
                    highlight=False,
                )
            line = event_line(stored)
            if line:
                out.print(line, highlight=False)
        out.print(
            f"[dim]{view.id} · {view.state.value} · {view.steps} steps · "
            f"{view.usage.input_tokens} in / {view.usage.output_tokens} out · "
            f"${view.usage.cost_usd:.4f}[/dim]"
        )
        for child in await h.store.children(full):  # its sub-errands (docs/subagents.md)
            out.print(child_line(child), highlight=False)

    with_harness(go, write=False)


def cancel(
    errand_id: IdArg,
    reason: Annotated[str, typer.Option(help="Why (kept in the log).")] = "",
) -> None:
    """Cancel an errand; the process that runs it stops at its next step."""

    async def go(h: Harness) -> str:
        full = await h.store.find(errand_id)
        await h.cancel(full, reason=reason)
        return full

    out.print(f"cancelled {with_harness(go)}")


def tell(
    errand_id: IdArg,
    text: Annotated[str, typer.Argument(help="Your message to the errand.")],
) -> None:
    """Send a follow-up message: it reopens a finished errand or joins a running one."""

    try:
        check_text(text, "the message")  # (the same limit as the API's, before either path)
    except ErrandsError as exc:
        fail(str(exc))

    async def find(h: Harness) -> str:
        return await h.store.find(errand_id)

    server = server_for_home()
    if server is not None:
        full = with_harness(find)
        try:
            remote.tell(server, full, text)
        except ErrandsError as exc:
            fail(str(exc))
        return

    async def go(h: Harness) -> str:
        full = await h.store.find(errand_id)
        await h.tell(full, text)
        return full

    full = with_harness(go)
    out.print(f"told {full}; a running server picks it up, or continue here: errands resume {full}")


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(demo)
    app.command()(resume)
    app.command("ls")(list_errands)
    app.command()(show)
    app.command()(cancel)
    app.command()(tell)
