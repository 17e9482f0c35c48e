"""The inbox's Memory page, ``/memory``: what errands remembered across errands, searched
by words and by scope, each with where it came from and whether it is untrusted, and a
Delete button (``DELETE /api/memory/{id}``: a purge). docs/memory.md."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from errands.errors import UserError
from errands.server.context import ServerContext

__all__ = ["add_memory_page"]

Page = Callable[..., HTMLResponse]


def add_memory_page(
    router: APIRouter, get_ctx: Callable[[Request], ServerContext], page: Page
) -> None:
    @router.get("/memory", response_class=HTMLResponse)
    async def memory_page(request: Request, q: str = "", scope: str = "") -> HTMLResponse:
        ctx = get_ctx(request)
        error = ""
        try:
            found = await ctx.store.memories(scope or None, q if q.strip() else None, 200)
        except UserError as exc:  # a bad scope or query: said on the page, nothing read
            found, error = [], str(exc)
        return page(
            request,
            "memory.html",
            status=422 if error else 200,
            memories=found,
            q=q,
            scope=scope,
            error=error,
            pending_count=len(await ctx.store.pending_approvals()),
        )
