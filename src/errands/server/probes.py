"""Liveness and readiness, for a service manager, a load balancer or a container runtime.

- ``GET /healthz``: the process is up and answers (200, always, while it does).
- ``GET /readyz``: errands can do its work -- the runner's thread is serving and the store
  takes a write now (a probe written and taken away again in one commit of the store's
  writer, :meth:`errands.store.writer.GroupCommit.probe`). 200 ``{"status": "ready"}``, or
  503 ``{"status": "not ready", "reason": ...}`` naming what is wrong.

Both are cheap: no log is read, and concurrent ``/readyz`` calls share one probe
(a probe storm costs one commit). They need no token from a client on loopback that no
proxy forwarded (:mod:`errands.server.auth`); from anywhere else they are like any path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from errands.server.context import ServerContext

__all__ = ["PROBE_TIMEOUT", "build_probes"]

PROBE_TIMEOUT = 2.0  # seconds the store has to take the probe's write

_NO_STORE = {"Cache-Control": "no-store"}


class _Shared:
    """One write probe at a time; callers that arrive meanwhile wait for its answer."""

    def __init__(self) -> None:
        self.running: asyncio.Future[str | None] | None = None

    async def why_not(self, ctx: ServerContext) -> str | None:
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(_store_problem(ctx))
        return await asyncio.shield(self.running)


async def _store_problem(ctx: ServerContext) -> str | None:
    try:
        await asyncio.wait_for(ctx.store.probe(), PROBE_TIMEOUT)
    except TimeoutError:
        return f"the store did not take a write within {PROBE_TIMEOUT:.0f} s"
    except Exception as exc:
        return f"the store cannot write: {exc}"
    return None


def _answer(reason: str | None) -> JSONResponse:
    if reason is None:
        return JSONResponse({"status": "ready"}, headers=_NO_STORE)
    body: dict[str, Any] = {"status": "not ready", "reason": reason}
    return JSONResponse(body, status_code=503, headers={**_NO_STORE, "Retry-After": "5"})


def build_probes(get_ctx: Callable[[Request], ServerContext]) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    shared = _Shared()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ctx = get_ctx(request)
        down = ctx.runner_down() if ctx.runner_down is not None else None
        if down is not None:
            return _answer(down)
        return _answer(await shared.why_not(ctx))

    return router
