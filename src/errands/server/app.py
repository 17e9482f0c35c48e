"""The ASGI application: the JSON API, the inbox, static files, behind the guard."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errands import __version__
from errands.errors import ErrandsError
from errands.server.api import build_router
from errands.server.auth import RequestGuard
from errands.server.context import ServerContext
from errands.server.handlers import error_response
from errands.server.inbox import STATIC_DIR, build_inbox
from errands.server.probes import build_probes

__all__ = ["create_app"]


def _context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


async def _explained(request: Request, exc: Exception) -> JSONResponse:
    response = error_response(exc)
    if response is None:  # pragma: no cover - only registered for ErrandsError
        raise exc
    return response


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return JSONResponse(
            {"detail": "the body is not valid JSON", "errors": errors}, status_code=400
        )
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return JSONResponse(
        {"detail": f"{where}: {first['msg']}{more}", "errors": errors}, status_code=422
    )


class _AllowHeader:
    """A 405 names every method the path supports, as the ``Allow`` header must
    (Starlette names only those of the first route that matched the path)."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._paths: list[tuple[re.Pattern[str], list[str]]] | None = None

    def methods(self, path: str) -> list[str]:
        if self._paths is None:
            self._paths = [
                (
                    re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"),
                    sorted(m.upper() for m in operations),
                )
                for template, operations in self.api.openapi().get("paths", {}).items()
            ]
        return next((methods for pattern, methods in self._paths if pattern.match(path)), [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_fixed(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = self.methods(scope["path"])
                if methods:
                    headers = [(k, v) for k, v in message["headers"] if k.lower() != b"allow"]
                    headers.append((b"allow", ", ".join(methods).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_fixed)


def _serve_routes(app: FastAPI, router: APIRouter) -> None:
    """Serve *router*'s routes as it built them (their paths with its prefix, its
    responses merged in). ``app.include_router`` would build every route a second time --
    FastAPI 0.115 when including, later versions at the first request, which is then the
    first answer of ``errands up`` waiting for ~60 routes' models to be built again."""
    app.router.routes.extend(router.routes)


def create_app(ctx: ServerContext) -> FastAPI:
    app = FastAPI(
        title="errands",
        version=__version__,
        description="The errands server: start errands, follow them live, and decide "
        "what waits for your approval. See docs/server.md.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    # what errands explains (errands.errors, one table with the CLI); anything else: 500
    app.add_exception_handler(ErrandsError, _explained)
    app.add_exception_handler(RequestValidationError, _invalid)
    for router in (build_router(_context), build_probes(_context), build_inbox(_context)):
        _serve_routes(app, router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_middleware(_AllowHeader, api=app)
    app.add_middleware(RequestGuard, security=ctx.security)
    return app
