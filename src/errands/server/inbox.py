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
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from errands import __version__
from errands.config import Settings
from errands.core.errand import ApprovalOut, ErrandSummary
from errands.core.events import Usage
from errands.core.localtime import local_time
from errands.core.progress import Progress
from errands.core.schedules import local_zone_name
from errands.core.states import TERMINAL, ErrandState, ErrandView
from errands.costs.report import build_report
from errands.engine.limits import exceeded
from errands.engine.schedules import schedule_infos
from errands.errors import ErrandsError, NotFound
from errands.models.spec import check_spec
from errands.server.context import ServerContext, model_help
from errands.server.editing import Editor, editor_for
from errands.server.handlers import listing, marks, pending_with_titles, store_condition
from errands.server.inbox_tree import add_tree_routes, grouped, tree_of
from errands.server.mcp_inbox import add_mcp_page
from errands.server.memory_inbox import add_memory_page
from errands.server.prices import price_hint
from errands.server.schemas import ERRAND_ID
from errands.server.workspace_files import list_workspace, read_workspace_file
from errands.store.protocol import Store, StoredEvent
from errands.tools.tool import ToolError

if TYPE_CHECKING:
    from jinja2 import Environment, Template

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
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_when,
        money=_money,
        pretty=_pretty,
        preview=_preview,
        arg_text=_arg_text,
        local=local_time,  # {{ ts | local(zone) }}: in the person's time zone
    )
    env.globals.update(STATE_LABEL=STATE_LABEL, version=__version__, TERMINAL=TERMINAL)
    return env


class Templates:
    """The inbox's templates, their :func:`environment` made at the first page rendered:
    ``errands up`` answers before it imports jinja2 (issue 17, item 5: start-up)."""

    def __init__(self) -> None:
        self._env: Environment | None = None

    def get_template(self, name: str) -> Template:
        if self._env is None:
            self._env = environment()
        return self._env.get_template(name)


# models the Start form may suggest, when they would be accepted (their key is there)
WELL_KNOWN = (
    "openai:gpt-4o-mini",
    "openai-responses:gpt-5-mini",
    "anthropic:claude-sonnet-4-5",
    "gemini:gemini-2.5-flash",
)
CHOICES_TTL = 30.0  # seconds a list of suggestions is kept (keys rarely come and go)
_choices: list[tuple[Settings, float, list[str], str | None]] = []  # the last one made


def _problem(spec: str, settings: Settings) -> str | None:
    """Why *spec* would be refused (the one check every surface makes), or None."""
    try:
        check_spec(spec, settings)
    except (ErrandsError, ValueError, OSError) as exc:
        return " ".join(str(exc).split())  # one line
    return None


def model_choices(settings: Settings) -> tuple[list[str], str | None]:
    """What the Start form suggests -- only complete specs that would be accepted: the
    default model, the scripted one, the configured chains and their members, the
    well-known models whose key is there -- and why the default cannot be used (None
    when it can)."""
    now = time.monotonic()
    for made_for, at, choices, problem in _choices:
        if made_for is settings and now - at < CHOICES_TTL:
            return choices, problem
    wanted = [settings.default_model, "scripted:demo"]
    wanted += [f"chain:{name}" for name in sorted(settings.chains)]
    wanted += [m.strip() for members in settings.chains.values() for m in members]
    wanted += WELL_KNOWN
    if os.environ.get("OPENAI_BASE_URL"):
        wanted.append("openai:llama3.2")
    problems = {spec: _problem(spec, settings) for spec in dict.fromkeys(wanted) if spec}
    choices = [spec for spec, problem in problems.items() if problem is None]
    default_problem = problems.get(settings.default_model)
    _choices[:] = [(settings, now, choices, default_problem)]
    return choices, default_problem


# the inbox's errand lists: all (not archived), by what they wait for, or archived
SHOWS: dict[str, tuple[str, frozenset[ErrandState] | None]] = {
    "all": ("All", None),
    "waiting": (
        "Waiting for you",
        frozenset({ErrandState.waiting_approval, ErrandState.needs_attention}),
    ),
    "running": ("Running", frozenset({ErrandState.queued, ErrandState.running})),
    "failed": ("Failed", frozenset({ErrandState.failed})),
    "scheduled": ("Scheduled", frozenset({ErrandState.sleeping})),
    "archived": ("Archived", None),
}
MAX_ROWS = 100  # errands in a list
KEEP_STEPS = 6  # a long timeline shows its latest steps; the earlier ones fold away
COLLAPSE_AFTER = 10  # ... once it has more steps than this
PAGE_EVENTS = 200  # a page shows the request and at most this many of the newest events


@dataclass(frozen=True)
class Cost:
    """An errand's cost as shown: the amount, or why there is none (no price known)."""

    text: str
    hint: str | None = None


def cost_of(model: str, usage: Usage, settings: Settings) -> Cost:
    return Cost(_money(usage.cost_usd), price_hint(model, usage, settings))


@dataclass(frozen=True)
class Row:
    """One errand in a list."""

    e: ErrandSummary
    headline: str
    unread: bool
    archived: bool
    cost: Cost


@dataclass(frozen=True)
class DeadEnd:
    """An errand stopped at one of its limits: a message cannot continue it."""

    reason: str
    steps: bool  # it was the step limit: more steps let it go on


def dead_end(view: ErrandView, events: Sequence[StoredEvent]) -> DeadEnd | None:
    """Why the errand cannot go on with a reply (a limit it reached), or None."""
    if view.state not in (ErrandState.failed, ErrandState.needs_attention):
        return None
    progress = Progress.empty(view.id)
    for stored in events:
        progress.apply(stored.seq, stored.event)
    reason = exceeded(progress.view, progress.limits, max(0.0, time.time() - view.created_at))
    if reason is None:
        return None
    return DeadEnd(reason, reason.startswith("step limit"))


@dataclass(frozen=True)
class Timeline:
    first: list[StoredEvent]  # what was asked
    earlier: list[StoredEvent]  # folded away
    earlier_steps: int
    latest: list[StoredEvent]


_LEADS_IN = frozenset({"model_requested", "user_message", "limits_raised"})


def timeline(events: Sequence[StoredEvent]) -> Timeline:
    """The errand's events, with all but the latest steps folded once there are many."""
    items = list(events)
    first, rest = items[:1], items[1:]
    steps = [i for i, s in enumerate(rest) if s.event.type == "model_responded"]
    if len(steps) <= COLLAPSE_AFTER:
        return Timeline(first, [], 0, rest)
    cut = steps[-KEEP_STEPS]
    while cut > 0 and rest[cut - 1].event.type in _LEADS_IN:  # what led to the step
        cut -= 1
    return Timeline(first, rest[:cut], len(steps) - KEEP_STEPS, rest[cut:])


async def run_by(store: Store, view: ErrandView) -> str | None:
    """Which process runs the errand now (its lease holder, ``HOST:PID:NAME``), as the
    errand's page says it: ``NAME on HOST (pid PID)``; None when none does."""
    if view.state in TERMINAL:
        return None
    held = await store.lease_holder(view.id)
    if held is None:
        return None
    host, _, rest = held[0].partition(":")
    pid, _, name = rest.partition(":")
    return f"{name} on {host} (pid {pid})" if pid else held[0]


def store_banner(ctx: ServerContext) -> dict[str, Any] | None:
    """What the banner says while the store cannot write; None while it can."""
    found = store_condition(ctx)
    if found is None:
        return None
    condition, since = found
    return {"condition": condition.condition, "detail": str(condition), "since": since}


def build_inbox(get_ctx: Callable[[Request], ServerContext]) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    env = Templates()

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

    async def editors(ctx: ServerContext, approvals: Sequence[ApprovalOut]) -> dict[str, Editor]:
        """Each card's form, from what its tool declares (:mod:`.editing`)."""
        out: dict[str, Editor] = {}
        views: dict[str, ErrandView] = {}
        for a in approvals:
            try:
                view = views.get(a.errand_id) or await ctx.store.view(a.errand_id)
                views[a.errand_id] = view
                tools = ctx.harness.toolset.tools(view)
                tool = tools.get(a.tool) if a.tool in tools else None
                out[a.id] = editor_for(tool, a.arguments, Path(view.workspace), a.errand_id)
            except (NotFound, ToolError, OSError, ValueError):
                out[a.id] = Editor([])
        return out

    def rows(
        ctx: ServerContext, views: Sequence[ErrandView], approvals: Sequence[ApprovalOut]
    ) -> list[Row]:
        m = marks(ctx)
        waiting: dict[str, list[str]] = {}
        for a in approvals:
            waiting.setdefault(a.errand_id, []).append(a.tool)
        out = []
        for view in views:
            e = ErrandSummary.of(view)
            headline = e.headline(waiting.get(e.id, ()))
            if e.status is ErrandState.failed and (e.reason or "").startswith("step limit"):
                headline += " · open it to continue with more steps"
            out.append(
                Row(
                    e=e,
                    headline=headline,
                    unread=m.unread(e.id, e.last_seq),
                    archived=m.is_archived(e.id),
                    cost=cost_of(e.model, e.usage, ctx.settings),
                )
            )
        return out

    async def inbox_values(ctx: ServerContext, show: str) -> dict[str, Any]:
        # (a sub-errand's cards grouped under its parent: errands.server.inbox_tree)
        approvals = await grouped(ctx.store, await pending_with_titles(ctx))
        cards = approvals[:MAX_CARDS]  # the oldest first
        show = show if show in SHOWS else "all"
        states = SHOWS[show][1]
        views = await listing(
            ctx,
            states=None if states is None else sorted(states),
            limit=MAX_ROWS,
            order="activity",
            archived=show == "archived",
        )
        return {
            "approvals": cards,
            "editors": await editors(ctx, cards),
            "rows": rows(ctx, views, approvals),
            "show": show,
            "shows": {key: label for key, (label, _) in SHOWS.items()},
            "pending_count": len(approvals),
            "budget": (await ctx.store.budget(ctx.settings.budget.daily_usd)).as_dict(),
        }

    @router.get("/", response_class=HTMLResponse)
    async def index(request: Request, show: str = "all") -> HTMLResponse:
        ctx = get_ctx(request)
        choices, default_problem = model_choices(ctx.settings)
        return page(
            request,
            "index.html",
            help=model_help(ctx.settings),
            models=choices,
            default_model=ctx.settings.default_model,
            default_problem=default_problem,
            **(await inbox_values(ctx, show)),
        )

    @router.get("/fragments/inbox", response_class=HTMLResponse)
    async def inbox_fragment(request: Request, show: str = "all") -> HTMLResponse:
        values = await inbox_values(get_ctx(request), show)
        return HTMLResponse(
            env.get_template("inbox_fragment.html").render(**values),
            headers={"cache-control": "no-store"},
        )

    async def errand_values(
        ctx: ServerContext, errand_id: str, after: int, before: int | None = None
    ) -> dict[str, Any]:
        """What the errand's page (*after* 0: its request and its newest events, or those
        before *before*) or a fragment of what came *after* shows."""
        view: ErrandView = await ctx.store.view(errand_id)
        older = 0  # events neither shown nor folded: between the request and the page
        if after:
            stored = await ctx.store.read(errand_id, after=after)
        else:  # a long log is read a page at a time, never whole
            stored = await ctx.store.read_latest(errand_id, PAGE_EVENTS, before)
            if stored and stored[0].seq > 1:
                first = await ctx.store.read_latest(errand_id, 1, before=2)
                older = stored[0].seq - 1 - len(first)
                stored = first + stored
        count = len(await ctx.store.pending_approvals()) if view.pending or after else None
        approvals = [ApprovalOut.of(p, view.title) for p in view.pending.values()]
        stopped = None
        if view.state in (ErrandState.failed, ErrandState.needs_attention):
            everything = stored if after == 0 and not older else await ctx.store.read(errand_id)
            stopped = dead_end(view, everything)
        await marks(ctx).see(errand_id, view.last_seq)  # the person has it open
        summary = ErrandSummary.of(view)
        return {
            "errand": summary,
            "workspace": view.workspace,
            "events": stored,
            "older": older,
            "older_before": stored[1].seq if older else None,
            "approvals": approvals,
            "editors": await editors(ctx, approvals),
            "pending_count": count,
            "terminal": view.state in TERMINAL,
            "dead_end": stopped,
            "cost": cost_of(summary.model, summary.usage, ctx.settings),
            "archived": marks(ctx).is_archived(errand_id),
            "zone": ctx.settings.timezone,
            "run_by": await run_by(ctx.store, view),
        }

    @router.get("/errands/{errand_id}", response_class=HTMLResponse)
    async def errand_page(
        request: Request, errand_id: str, before: int | None = None
    ) -> HTMLResponse:
        ctx = get_ctx(request)
        try:
            values = await errand_values(ctx, errand_id, 0, before if before else None)
        except NotFound:
            return page(request, "missing.html", status=404, errand_id=errand_id)
        values["pending_count"] = len(await ctx.store.pending_approvals())
        values["timeline"] = timeline(values["events"])
        values["tree"] = await tree_of(ctx.store, errand_id)  # its sub-errands, live
        return page(request, "errand.html", **values)

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

    @router.get("/errands/{errand_id}/files", response_class=HTMLResponse)
    async def files_page(request: Request, errand_id: str, path: str | None = None) -> Response:
        ctx = get_ctx(request)
        try:
            view = await ctx.store.view(errand_id)
        except NotFound:
            return page(request, "missing.html", status=404, errand_id=errand_id)
        workspace = Path(view.workspace)
        status, shown, listed = 200, None, None
        if path is not None:
            shown = read_workspace_file(workspace, errand_id, path)
            status = shown.status
        else:
            listed = list_workspace(workspace)
        return page(
            request,
            "files.html",
            status=status,
            errand=ErrandSummary.of(view),
            workspace=view.workspace,
            listing=listed,
            shown=shown,
            pending_count=len(await ctx.store.pending_approvals()),
        )

    async def schedule_values(ctx: ServerContext) -> dict[str, Any]:
        infos = await schedule_infos(ctx.store)
        return {
            "schedules": [info.as_dict(full=False) for info in infos],
            "zone": ctx.settings.timezone,
        }

    @router.get("/schedules", response_class=HTMLResponse)
    async def schedules_page(request: Request) -> HTMLResponse:
        ctx = get_ctx(request)
        zone = ctx.settings.timezone
        label = f"{local_zone_name()} (this machine's)" if zone == "local" else zone
        return page(
            request,
            "schedules.html",
            zone_label=label,
            pending_count=len(await ctx.store.pending_approvals()),
            **(await schedule_values(ctx)),
        )

    @router.get("/fragments/schedules", response_class=HTMLResponse)
    async def schedules_fragment(request: Request) -> HTMLResponse:
        values = await schedule_values(get_ctx(request))
        return HTMLResponse(
            env.get_template("schedules_fragment.html").render(**values),
            headers={"cache-control": "no-store"},
        )

    add_mcp_page(router, get_ctx, page)  # /mcp: MCP servers' pins (errands.server.mcp_inbox)
    add_memory_page(router, get_ctx, page)  # /memory (errands.server.memory_inbox)
    add_tree_routes(router, get_ctx, env)  # sub-errands (errands.server.inbox_tree)

    @router.get("/costs", response_class=HTMLResponse)
    async def costs_page(request: Request, days: int | None = None) -> HTMLResponse:
        ctx = get_ctx(request)
        days = days if days is not None and 0 < days <= 36500 else None
        since = time.time() - days * 86400 if days else 0.0
        report = build_report(await ctx.store.usage(since=since))
        titles: dict[str, str] = {}
        hints = {r.key: price_hint(r.key, r.usage, ctx.settings) for r in report.by_model}
        for r in report.by_errand[:MAX_ROWS]:
            try:
                view = await ctx.store.view(r.key)
            except NotFound:
                titles[r.key] = r.key
                continue
            titles[r.key] = view.title
            hints[r.key] = price_hint(view.model, r.usage, ctx.settings)
        return page(
            request,
            "costs.html",
            report=report,
            by_errand=report.by_errand[:MAX_ROWS],
            titles=titles,
            hints=hints,
            days=days,
            budget=(await ctx.store.budget(ctx.settings.budget.daily_usd)).as_dict(),
            pending_count=len(await ctx.store.pending_approvals()),
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
