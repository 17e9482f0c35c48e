"""The inbox's MCP page, ``/mcp``: every server's tools and their pins, each changed
tool's diff field by field, and an Approve button that pins exactly the definition shown
(``POST /api/mcp/{server}/approve`` with its digest: a server that lists anything else by
then gets a refusal, not a pin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from errands.server.context import ServerContext

__all__ = ["add_mcp_page"]

Page = Callable[..., HTMLResponse]


def add_mcp_page(
    router: APIRouter, get_ctx: Callable[[Request], ServerContext], page: Page
) -> None:
    @router.get("/mcp", response_class=HTMLResponse)
    async def mcp_page(request: Request) -> HTMLResponse:
        from errands.tools.mcp.service import changes_of, show_value

        ctx = get_ctx(request)
        reports = [] if ctx.harness.mcp is None else await ctx.harness.mcp.reports()
        changes: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for report in reports:
            for status in report.tools:
                changes[report.server, status.tool] = [
                    {"path": c.path, "before": show_value(c.before), "after": show_value(c.after)}
                    for c in changes_of(status)
                ]
        return page(
            request,
            "mcp.html",
            servers=reports,
            changes=changes,
            show=show_value,
            pending_count=len(await ctx.store.pending_approvals()),
        )
