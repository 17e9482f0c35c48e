"""The inbox: server-rendered pages, and fragments the page script swaps in live.

No build step: Jinja templates and one small script (``inbox/static/inbox.js``) that
listens to the server-sent event streams and fetches fresh fragments when something
changed. The page calls the JSON API for every action, with the CSRF header.

While the store cannot write (a full disk, another process holding the write lock, an
I/O error), every page shows a banner saying so: reading works, actions wait until it
clears, and errands goes on by itself; the page script keeps it current from
``/api/health``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from errands import __version__
from errands.core.errand import ApprovalOut, ErrandSummary
from errands.core.states import TERMINAL, ErrandState, ErrandView
from errands.errors import NotFound
from errands.server.context import ServerContext, model_help
from errands.server.handlers import pending_with_titles, store_condition
from errands.server.schemas import ERRAND_ID

__all__ = ["STATIC_DIR", "build_inbox"]

HERE = Path(__file__).parent / "inbox"
MAX_CARDS = 50  # approval cards on the inbox page; the rest wait their turn
STATIC_DIR = HERE / "static"

STATE_LABEL = {
    ErrandState.queued: "queued",
    ErrandState.running: "running",
    ErrandState.waiting_approval: "waiting for you",
    ErrandState.sleeping: "sleeping",
    ErrandState.done: "done",
    ErrandState.failed: "failed",
    ErrandState.cancelled: "cancelled",
    ErrandState.needs_attention: "needs attention",
}


def _when(ts: float) -> str:
    moment = dt.datetime.fromtimestamp(ts)
    if moment.date() == dt.date.today():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def _money(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _preview(text: str) -> Markup:
    """The preview, with a diff's added and removed lines marked."""
    lines = text.split("\n")
    is_diff = any(line.startswith("@@") for line in lines)
    out = []
    for line in lines:
        cls = ""
        if is_diff:
            if line.startswith(("+++", "---")):
                cls = "diff-file"
            elif line.startswith("+"):
                cls = "diff-add"
            elif line.startswith("-"):
                cls = "diff-del"
            elif line.startswith("@@"):
                cls = "diff-hunk"
        escaped = escape(line)
        out.append(Markup(f'<span class="{cls}">{escaped}</span>') if cls else escaped)
    return Markup("\n").join(out)


def _arg_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_when, money=_money, pretty=_pretty, preview=_preview, arg_text=_arg_text
    )
    env.globals.update(STATE_LABEL=STATE_LABEL, version=__version__, TERMINAL=TERMINAL)
    return env


def _model_choices(ctx: ServerContext) -> list[str]:
    s = ctx.settings
    choices = [s.default_model, "scripted:demo"]
    if not model_help(s):
        choices += ["openai:gpt-4o-mini", "openai:llama3.2"]
    choices += [f"{name}:" for name in sorted(s.providers)]
    return list(dict.fromkeys(choices))


def store_banner(ctx: ServerContext) -> dict[str, Any] | None:
    """What the banner says while the store cannot write; None while it can."""
    found = store_condition(ctx)
    if found is None:
        return None
    condition, since = found
    return {"condition": condition.condition, "detail": str(condition), "since": since}


def build_inbox(get_ctx: Callable[[Request], ServerContext]) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    env = environment()

    def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        ctx = get_ctx(request)
        sec = ctx.security
        csrf = request.cookies.get(sec.csrf_cookie) or secrets.token_urlsafe(24)
        html = env.get_template(template).render(
            csrf=csrf,
            token_mode=sec.token is not None,
            # (not on the login page: the detail names the store's path)
            store_banner=None if template == "login.html" else store_banner(ctx),
            **values,
        )
        response = HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})
        if request.cookies.get(sec.csrf_cookie) != csrf:
            response.set_cookie(sec.csrf_cookie, csrf, httponly=True, samesite="strict", path="/")
        return response

    async def inbox_values(ctx: ServerContext) -> dict[str, Any]:
        approvals = await pending_with_titles(ctx)
        views = await ctx.store.list_errands(limit=100)
        return {
            "approvals": approvals[:MAX_CARDS],  # the oldest first
            "errands": [ErrandSummary.of(v) for v in views],
            "pending_count": len(approvals),
            "budget": (await ctx.store.budget(ctx.settings.budget.daily_usd)).as_dict(),
        }

    @router.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        ctx = get_ctx(request)
        return page(
            request,
            "index.html",
            help=model_help(ctx.settings),
            models=_model_choices(ctx),
            default_model=ctx.settings.default_model,
            **(await inbox_values(ctx)),
        )

    @router.get("/fragments/inbox", response_class=HTMLResponse)
    async def inbox_fragment(request: Request) -> HTMLResponse:
        values = await inbox_values(get_ctx(request))
        return HTMLResponse(
            env.get_template("inbox_fragment.html").render(**values),
            headers={"cache-control": "no-store"},
        )

    async def errand_values(ctx: ServerContext, errand_id: str, after: int) -> dict[str, Any]:
        view: ErrandView = await ctx.store.view(errand_id)
        stored = await ctx.store.read(errand_id, after=after)
        count = len(await ctx.store.pending_approvals()) if view.pending or after else None
        return {
            "errand": ErrandSummary.of(view),
            "workspace": view.workspace,
            "events": stored,
            "approvals": [ApprovalOut.of(p, view.title) for p in view.pending.values()],
            "pending_count": count,
            "terminal": view.state in TERMINAL,
        }

    @router.get("/errands/{errand_id}", response_class=HTMLResponse)
    async def errand_page(request: Request, errand_id: str) -> HTMLResponse:
        ctx = get_ctx(request)
        try:
            values = await errand_values(ctx, errand_id, 0)
        except NotFound:
            return page(request, "missing.html", status=404, errand_id=errand_id)
        values["pending_count"] = len(await ctx.store.pending_approvals())
        return page(request, "errand.html", models=_model_choices(ctx), **values)

    @router.get("/fragments/errands/{errand_id}", response_class=HTMLResponse)
    async def errand_fragment(request: Request, errand_id: str, after: int = 0) -> Response:
        if not re.match(ERRAND_ID, errand_id) or after < 0:
            return Response(status_code=404)
        try:
            values = await errand_values(get_ctx(request), errand_id, after)
        except NotFound:
            return Response(status_code=404)
        return HTMLResponse(
            env.get_template("errand_fragment.html").render(**values),
            headers={"cache-control": "no-store"},
        )

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> Response:
        ctx = get_ctx(request)
        if ctx.security.token is None:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", next=_local(next), error=None)

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        ctx = get_ctx(request)
        sec = ctx.security
        if sec.token is None:
            return RedirectResponse("/", status_code=303)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        csrf = (form.get("csrf") or [""])[0]
        target = _local((form.get("next") or ["/"])[0])
        expected = request.cookies.get(sec.csrf_cookie, "")
        if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
            return page(
                request, "login.html", status=403, next=target, error="The form expired: try again."
            )
        if not sec.token_matches(token):
            return page(
                request, "login.html", status=401, next=target, error="That is not the token."
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            sec.session_cookie,
            sec.new_session(),
            httponly=True,
            samesite="strict",
            path="/",
            max_age=30 * 24 * 3600,
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(get_ctx(request).security.session_cookie, path="/")
        return response

    @router.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    return router


def _local(target: str) -> str:
    """Only paths on this server (no //host, no scheme): a login never redirects away."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
