"""``errands up`` (the server) and ``errands inbox`` (what waits for you).

The web framework is imported only when ``errands up`` runs; the store, only when
``errands inbox`` reads it.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from errands.cli import remote
from errands.cli.common import JsonOpt, fail, out, server_for_home, settings, state, with_harness
from errands.cli.render import approval_card, errands_table, safe
from errands.errors import ErrandsError

if TYPE_CHECKING:
    from errands.core.errand import ApprovalOut
    from errands.core.states import ErrandView
    from errands.harness import Harness

__all__ = ["register"]


def up(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Address to listen on (default 127.0.0.1). Any non-loopback address, "
            "or a name in [server] allowed_hosts, requires the token (ERRANDS_HOME/server-token).",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", "-p", help="Port (default 7878; 0 picks a free one).", min=0, max=65535
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Run errands in N worker processes (errands worker) and keep this one for "
            "the inbox, the API and the schedules; 0: run them here. Default: one per core, "
            "up to 8 (0 with one core, or with --no-run).",
            min=0,
            max=64,
            show_default=False,
        ),
    ] = None,
    no_run: Annotated[
        bool,
        typer.Option(
            "--no-run",
            help="Run no errand here: leave them to errands worker processes you start "
            "(on this host or others, on a shared PostgreSQL store: docs/scale-out.md).",
        ),
    ] = False,
) -> None:
    """Start the server: it runs every errand (in one worker process per core), and
    serves the inbox and the HTTP API.

    Prints the inbox's address. Ctrl-C (or SIGTERM) stops it gracefully; errands keep
    their place in the store and resume on the next start.
    """
    try:
        s = settings()
        # what start-up allocates (the web stack, the app) lives as long as the server:
        # the collector would only rescan it (~50 ms). It is collected once, and the
        # collector turned back on, once the server is up (serve._tune_runtime).
        gc.disable()
        from errands.server.serve import run_server  # the web stack, only when serving

        _log_to_stderr()
        from errands.server.workers import default_workers, worker_args

        if workers is None:  # (--no-run: the errands are left to workers started elsewhere)
            workers = 0 if no_run else default_workers()
        run_server(
            s,
            host if host is not None else s.server.host,
            port if port is not None else s.server.port,
            echo=lambda text: print(text, flush=True),
            workers=worker_args(str(s.home), state.config),
            count=workers,
            run=not no_run,
        )
    except ErrandsError as exc:
        fail(str(exc))


def _log_to_stderr() -> None:
    """A long-running process logs what it does (errands' INFO lines) to stderr."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("errands").setLevel(logging.INFO)


def worker(
    parent: Annotated[
        int | None,
        typer.Option("--parent", hidden=True, help="Stop when this process (the server) is gone."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="A name for this worker: its leases are owned by HOST:PID:NAME "
            "(letters, digits, '.', '-', '_'; up to 64).",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", help="Run at most N errands at once.", min=1),
    ] = None,
    relay: Annotated[
        int | None,
        typer.Option(
            "--relay", hidden=True, help="The server's relay: this inherited socket's fd."
        ),
    ] = None,
) -> None:
    """Run errands from this home's store until stopped (SIGTERM or Ctrl-C).

    errands up --workers N starts these for you; run one yourself to add a process
    (the store's leases give each errand to one process at a time).
    """
    try:
        s = settings()
        if name is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            fail(f"--name {name[:80]!r}: use 1 to 64 letters, digits, '.', '-' or '_'")
        from errands.server.workers import run_worker  # (the engine, only when working)

        _log_to_stderr()
        run_worker(s, parent, name=name, concurrency=concurrency, relay=relay)
    except ErrandsError as exc:
        fail(str(exc))


def inbox(
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="Show at most this many recent errands.")] = 20,
) -> None:
    """What waits for you: pending approvals in full, errands that need you, recent errands.

    Talks to the running server (errands up) if there is one, else reads the store.
    """
    from errands.core.errand import ApprovalOut, ErrandSummary
    from errands.core.states import ErrandState

    server = server_for_home()
    views: list[ErrandView] | None = None
    if server is not None:
        try:
            raw_pending = remote.get(server, "/api/approvals")
            raw_errands = remote.get(server, f"/api/errands?limit={max(1, min(limit, 1000))}")
            items = [ApprovalOut.model_validate(p) for p in raw_pending]
            summaries = [ErrandSummary.model_validate(e) for e in raw_errands]
        except ErrandsError as exc:
            fail(str(exc))
        except ValueError:
            fail(f"the server at {server.url} answered something that is not an inbox")
    else:

        async def go(h: Harness) -> tuple[list[ApprovalOut], list[ErrandView]]:
            recent = await h.store.list_errands(limit=limit)
            titles = {v.id: v.title for v in recent}
            return await ApprovalOut.waiting(h.store, titles), recent

        items, views = with_harness(go)
        summaries = [ErrandSummary.of(v) for v in views]
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "server": server.url if server else None,
                    "approvals": [a.model_dump() for a in items],
                    "errands": [s.inbox_row() for s in summaries],
                }
            )
            + "\n"
        )
        return
    where = f"the server at {server.url}" if server else "the store (no server is up)"
    out.print(f"[bold]Inbox[/bold] [dim]— from {where}[/dim]")
    if items:
        out.print(f"[bold yellow]{len(items)} waiting for your approval[/bold yellow]")
        for a in items:
            out.print(approval_card(a.pending(), a.errand_title))
    else:
        out.print("Nothing waits for your approval.")
    for e in summaries:
        if e.status is ErrandState.needs_attention:
            out.print(
                f"[magenta]needs your attention:[/magenta] {safe(e.id)} {safe(e.title)} — "
                f"{safe(e.reason or '')}"
            )
    if views is not None and views:
        out.print(errands_table(views, out.width))
    elif summaries:
        for e in summaries:
            waiting = f" ({e.pending_approvals} waiting)" if e.pending_approvals else ""
            out.print(
                f"{safe(e.id)}  {e.status.value}{waiting}  {safe(e.title)}  "
                f"[dim]{e.steps} steps · ${e.cost_usd:.4f}[/dim]",
                highlight=False,
            )
    else:
        out.print('No errands yet. Try [bold]errands demo[/bold] or [bold]errands run "…"[/bold].')
    if items:
        hint = f"or open {server.url}" if server else "or run errands up for the inbox in a browser"
        out.print(f"[dim]errands approve ID · errands deny ID --reason TEXT · {hint}[/dim]")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(worker)
    app.command()(inbox)
