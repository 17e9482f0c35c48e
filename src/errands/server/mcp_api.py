"""The API's MCP pins: ``GET /api/mcp``, ``GET /api/mcp/{server}/diff`` and
``POST /api/mcp/{server}/approve`` (:mod:`errands.tools.mcp.service`).

An approval pins what the server lists at that moment; a client that showed a person
particular definitions sends their digests (``{"digests": {"TOOL": "sha256:..."}}``) and
gets a 409, with nothing written, if the server lists anything else by then.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from errands.errors import NotFound
from errands.server.context import ServerContext
from errands.server.handlers import caller
from errands.server.schemas import ErrorBody
from errands.tools.mcp.settings import SERVER_NAME

__all__ = ["add_mcp_routes"]

ServerPath = Annotated[str, Path(pattern=SERVER_NAME, max_length=24, description="the server")]
ByHeader = Annotated[
    str, Header(alias="X-Errands-By", max_length=64, description="who approves (recorded)")
]


class McpToolOut(BaseModel):
    server: str
    tool: str
    name: str
    state: str
    digest: str | None
    pinned_digest: str | None
    pinned_by: str | None
    pinned_at: float | None
    reason: str | None = None
    renamed_from: str | None = None


class McpServerOut(BaseModel):
    server: str
    transport: str
    protocol_version: str | None
    server_info: dict[str, Any] | None
    listed_at: float | None
    error: str | None
    tools: list[McpToolOut]


class McpDiffOut(BaseModel):
    server: str
    error: str | None
    tools: list[dict[str, Any]]


class McpApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str | None = Field(default=None, max_length=128, description="one tool; default: all")
    digests: dict[str, str] | None = Field(
        default=None, description="tool -> the digest the person was shown (else: a 409)"
    )


class McpApprovedOut(BaseModel):
    server: str
    pinned: list[dict[str, str]]
    dropped: list[str]


_TEXT = {
    404: "no such MCP server (or tool)",
    409: "the server lists a definition other than the one shown",
    422: "cannot be approved (a refused tool, a server that cannot be listed)",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _TEXT[c]} for c in codes}


def _json(data: Any) -> Response:
    return Response(json.dumps(data).encode(), media_type="application/json")


def add_mcp_routes(router: APIRouter, get_ctx: Callable[[Request], ServerContext]) -> None:
    """The MCP routes, on the API's router (its prefix, auth and error bodies)."""

    def toolset(ctx: ServerContext) -> Any:
        if ctx.harness.mcp is None:
            raise NotFound("no MCP servers are configured ([mcp.servers.NAME] in errands.toml)")
        return ctx.harness.mcp

    @router.get(
        "/mcp",
        response_model=list[McpServerOut],
        summary="MCP servers and their tools' pins",
        operation_id="listMcp",
    )
    async def list_mcp(request: Request) -> Response:
        ctx = get_ctx(request)
        if ctx.harness.mcp is None:
            return _json([])
        reports = await ctx.harness.mcp.reports()
        return _json([r.as_dict() for r in reports])

    @router.get(
        "/mcp/{server}/diff",
        response_model=McpDiffOut,
        summary="What changed on a server since its tools were pinned",
        operation_id="diffMcp",
        responses=_errors(404),
    )
    async def diff_mcp(request: Request, server: ServerPath) -> Response:
        from errands.tools.mcp.service import diff_report, report_of

        return _json(diff_report(await report_of(toolset(get_ctx(request)), server)))

    @router.post(
        "/mcp/{server}/approve",
        response_model=McpApprovedOut,
        summary="Pin what the server lists now (all new and changed tools, or one)",
        operation_id="approveMcp",
        responses=_errors(404, 409, 422),
    )
    async def approve_mcp(
        request: Request,
        server: ServerPath,
        body: McpApproveBody | None = None,
        by: ByHeader = "",
    ) -> Response:
        from errands.tools.mcp.service import approve

        ctx = get_ctx(request)
        body = body or McpApproveBody()
        done = await approve(
            toolset(ctx), ctx.store, server, body.tool, by=caller(by), expect=body.digests
        )
        return _json(done.as_dict())
