"""The server's app in this process, over httpx's ASGI transport, on a test's harness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from errands.harness import Harness
from errands.server.app import create_app
from errands.server.auth import Security
from errands.server.context import ServerContext
from errands.server.hub import Hub
from errands.server.idempotency import IdempotencyStore

BASE = "http://127.0.0.1:7878"


@asynccontextmanager
async def in_process(harness: Harness) -> AsyncIterator[tuple[httpx.AsyncClient, ServerContext]]:
    """A client of the app serving *harness* (its store, settings and home), and the
    app's context."""
    ctx = ServerContext(
        harness=harness,
        hub=Hub(harness.store),
        security=Security(host="127.0.0.1", port=7878),
        idempotency=IdempotencyStore(harness.settings.home / "server.sqlite"),
        base_url=BASE,
    )
    transport = httpx.ASGITransport(app=create_app(ctx))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client, ctx
    finally:
        ctx.idempotency.close()
