"""``errands up`` (the server) and ``errands inbox`` (what waits for you), on the CLI app.

Imported at the end of :mod:`errands.cli.app`, which registers these commands; the
web framework is imported only when ``errands up`` runs.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any

import typer

from errands.cli import remote
from errands.cli.app import KNOWN_ERRORS, JsonOpt, app, fail, out, run_async, settings
from errands.cli.render import approval_card, errands_table
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.server.files import ServerRefused
from errands.store.sqlite import SQLiteStore

__all__ = ["inbox", "up"]

REFUSED: tuple[type[Exception], ...] = (ServerRefused, *KNOWN_ERRORS)


@app.command()
def up(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Address to listen on (default 127.0.0.1). Any non-loopback address "
            "requires the token (ERRANDS_HOME/server-token).",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", "-p", help="Port (default 7878; 0 picks a free one).", min=0, max=65535
        ),
    ] = None,
) -> None:
    """Start the server: it runs every errand, and serves the inbox and the HTTP API.

    Prints the inbox's address. Ctrl-C (or SIGTERM) stops it gracefully; errands keep
    their place in the store and resume on the next start.
    """
    try:
        s = settings()
        from errands.server.serve import run_server  # the web stack, only when serving

        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        logging.getLogger("errands").setLevel(logging.INFO)
        run_server(
            s,
            host if host is not None else s.server.host,
            port if port is not None else s.server.port,
            echo=lambda text: print(text, flush=True),
        )
    except REFUSED as exc:
        fail(str(exc))


def _summary(v: ErrandView | dict[str, Any]) -> dict[str, Any]:
    if isinstance(v, dict):
        keys = ("id", "status", "title", "model", "created_at", "updated_at", "steps")
        return {k: v.get(k) for k in keys} | {
            "cost_usd": v.get("cost_usd", 0.0),
            "pending_approvals": v.get("pending_approvals", 0),
            "reason": v.get("reason"),
        }
    return {
        "id": v.id,
        "status": v.state.value,
        "title": v.title,
        "model": v.model,
        "created_at": v.created_at,
        "updated_at": v.updated_at,
        "steps": v.steps,
        "cost_usd": v.usage.cost_usd,
        "pending_approvals": len(v.pending),
        "reason": v.reason or None,
    }


@app.command()
def inbox(
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="Show at most this many recent errands.")] = 20,
) -> None:
    """What waits for you: pending approvals in full, errands that need you, recent errands.

    Talks to the running server (errands up) if there is one, else reads the store.
    """
    try:
        server = remote.find(settings())
    except KNOWN_ERRORS as exc:
        fail(str(exc))
    items: list[tuple[PendingApproval, str]]
    if server is not None:
        try:
            raw_pending = remote.get(server, "/api/approvals")
            raw_errands = remote.get(server, f"/api/errands?limit={max(1, min(limit, 1000))}")
        except KNOWN_ERRORS as exc:
            fail(str(exc))
        items = [(remote.pending_from(p), str(p.get("errand_title", ""))) for p in raw_pending]
        summaries = [_summary(e) for e in raw_errands]
        views: list[ErrandView] | None = None
    else:

        async def go(s: Any, store: SQLiteStore) -> tuple[list[PendingApproval], list[ErrandView]]:
            return await store.pending_approvals(), await store.list_errands(limit=limit)

        pending, views = run_async(go)
        titles = {v.id: v.title for v in views}
        items = [(p, titles.get(p.errand_id, "")) for p in pending]
        summaries = [_summary(v) for v in views]
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "server": server.url if server else None,
                    "approvals": [
                        p.model_dump() | {"id": p.id, "errand_title": t} for p, t in items
                    ],
                    "errands": summaries,
                }
            )
            + "\n"
        )
        return
    where = f"the server at {server.url}" if server else "the store (no server is up)"
    out.print(f"[bold]Inbox[/bold] [dim]— from {where}[/dim]")
    if items:
        out.print(f"[bold yellow]{len(items)} waiting for your approval[/bold yellow]")
        for p, title in items:
            out.print(approval_card(p, title))
    else:
        out.print("Nothing waits for your approval.")
    attention = [e for e in summaries if e["status"] == ErrandState.needs_attention.value]
    for e in attention:
        out.print(
            f"[magenta]needs your attention:[/magenta] {e['id']} {e['title']} — {e['reason'] or ''}"
        )
    if views is not None and views:
        out.print(errands_table(views))
    elif summaries:
        for e in summaries:
            waiting = f" ({e['pending_approvals']} waiting)" if e["pending_approvals"] else ""
            out.print(
                f"{e['id']}  {e['status']}{waiting}  {e['title']}  "
                f"[dim]{e['steps']} steps · ${e['cost_usd']:.4f}[/dim]",
                highlight=False,
            )
    else:
        out.print('No errands yet. Try [bold]errands demo[/bold] or [bold]errands run "…"[/bold].')
    if items:
        hint = f"or open {server.url}" if server else "or run errands up for the inbox in a browser"
        out.print(f"[dim]errands approve ID · errands deny ID --reason TEXT · {hint}[/dim]")
