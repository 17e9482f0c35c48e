"""What a person does to schedules and watches -- add, edit, pause, resume, remove, run
now, look -- shared by the CLI and the API.

Every operation validates everything first (:class:`ScheduleRequest` ->
:class:`~errands.core.schedules.ScheduleSpec`: the cron expression, the zone, the
interval, the time, the model, a watch's URL through the network guard, its selector
or JSON path) and then writes once; bad input raises a :class:`UserError` naming the
field, and nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from errands.clock import SYSTEM, Clock
from errands.config import Settings
from errands.core.schedules import (
    CatchUp,
    Overlap,
    ScheduleError,
    ScheduleKind,
    ScheduleSpec,
    ScheduleStatus,
    check_spec,
    describe,
    first_slot,
    jitter,
    next_slot,
    parse_at,
    parse_duration,
    resolve_zone,
)
from errands.core.states import ErrandView
from errands.errors import NotFound, StoreError, UserError
from errands.store import Store, StoreReader
from errands.store.protocol import RunRow, ScheduleRow

__all__ = [
    "RunNow",
    "ScheduleInfo",
    "SchedulePatch",
    "ScheduleRequest",
    "add_schedule",
    "edit_schedule",
    "pause_schedule",
    "remove_schedule",
    "resume_schedule",
    "run_now",
    "schedule_info",
    "schedule_infos",
    "spec_from",
    "state_of",
]


class ScheduleRequest(BaseModel):
    """A schedule as a person asks for it (the API's body; the CLI builds one)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: ScheduleKind
    text: str
    cron: str | None = None
    tz: str | None = None  # default: the person's ``timezone``
    every: str | float | None = None  # "30m", "1h30m", or seconds
    at: str | None = None  # ISO 8601
    url: str | None = None
    select: str | None = None
    json_path: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)  # header -> "secret:NAME"
    model: str | None = None
    max_cost_usd: float | None = None
    daily_usd: float | None = None
    max_steps: int | None = None
    tools: list[str] | None = None  # only these tools (default: every tool)
    mode: Literal["default", "plan"] = "default"  # plan: each run in plan mode
    catch_up: CatchUp = "one"
    overlap: Overlap = "skip"


class SchedulePatch(BaseModel):
    """An edit (PATCH): only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    cron: str | None = None
    tz: str | None = None
    every: str | float | None = None
    at: str | None = None
    url: str | None = None
    select: str | None = None
    json_path: str | None = None
    headers: dict[str, str] | None = None
    model: str | None = None
    max_cost_usd: float | None = None
    daily_usd: float | None = None
    max_steps: int | None = None
    tools: list[str] | None = None
    mode: Literal["default", "plan"] | None = None
    catch_up: CatchUp | None = None
    overlap: Overlap | None = None
    paused: bool | None = None


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as people see it: its row, its newest runs, its cost."""

    row: ScheduleRow
    runs: list[RunRow]
    run_views: dict[str, ErrandView]
    spent_today_usd: float

    def as_dict(self, *, full: bool = True) -> dict[str, Any]:
        spec, status = self.row.spec, self.row.status
        last = self.run_views.get(status.last_run or "")
        out: dict[str, Any] = {
            "name": spec.name,
            "kind": spec.kind,
            "when": describe(spec),
            "text": spec.text,
            "state": state_of(self.row),
            "paused": self.row.paused,
            "next_at": self.row.next_at,
            "due_at": self.row.due_at,
            "model": spec.model,
            "max_cost_usd": spec.max_cost_usd,
            "daily_usd": spec.daily_usd,
            "mode": spec.mode or "default",
            "spent_today_usd": round(self.spent_today_usd, 6),
            "runs": status.runs,
            "skipped": status.skipped,
            "last_run": status.last_run,
            "last_run_state": last.state.value if last else None,
            "last_run_result": (last.result or "")[:500] if last else None,
            "last_run_cost_usd": round(last.usage.cost_usd, 6) if last else None,
            "last_error": status.last_error or None,
            "note": status.note or None,
            "errors": status.errors,
            "retry_at": status.retry_at,
        }
        if spec.kind == "watch":
            out.update(
                url=spec.url,
                select=spec.select,
                json_path=spec.json_path,
                checks=status.checks,
                changes=status.changes,
                last_check_at=status.last_check_at,
            )
        if full:
            out["spec"] = spec.model_dump()
            out["recent"] = [
                {
                    "slot": r.slot,
                    "outcome": r.outcome,
                    "errand_id": r.errand_id,
                    "count": r.count,
                    "reason": r.reason,
                    "at": r.at,
                    "state": (
                        v.state.value if (v := self.run_views.get(r.errand_id or "")) else None
                    ),
                    "cost_usd": round(v.usage.cost_usd, 6) if v else None,
                }
                for r in self.runs
            ]
        return out


def state_of(row: ScheduleRow) -> str:
    """paused | erroring | done (an ``at`` that ran) | active."""
    if row.paused:
        return "paused"
    if row.status.errors:
        return "erroring"
    if row.next_at is None:
        return "done"
    return "active"


# ------------------------------------------------------------------ validating


def _every(value: str | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return parse_duration(repr(float(value)))
    return parse_duration(value)


async def spec_from(
    request: ScheduleRequest,
    settings: Settings,
    *,
    now: float,
    by: str = "local",
    need_offset: bool = False,
    known_tools: Collection[str] | None = None,
) -> ScheduleSpec:
    """Validate *request* into a schedule (the model pinned, the zone resolved, a
    watch's URL checked by the network guard, its tools among *known_tools* when
    given); :class:`UserError` naming the field."""
    from errands.engine.scheduler import secret_problem
    from errands.models.spec import check_spec as check_model
    from errands.tools import watchcheck

    if request.tools is not None and known_tools is not None:
        unknown = sorted(set(request.tools) - set(known_tools))
        if unknown:
            raise ScheduleError(
                "tools",
                f"tools: no tool named {', '.join(unknown)} (errands tools lists them)",
            )
    tz = resolve_zone(request.tz, settings.timezone)
    url = request.url
    if request.kind == "watch":
        if not url:
            raise ScheduleError("url", "url: a watch needs the URL of the page to watch")
        url = await asyncio.to_thread(
            watchcheck.validate_watch, url, request.select, request.json_path, settings
        )
    for header, ref in request.headers.items():
        problem = secret_problem(settings, ref.removeprefix("secret:"), url or "")
        if ref.startswith("secret:") and problem:
            raise ScheduleError("headers", f"headers: {header}: {problem}")
    model = (request.model or settings.default_model).strip()
    try:
        check_model(model, settings)
    except UserError as exc:
        raise ScheduleError("model", f"model: {exc}") from None
    spec = ScheduleSpec(
        name=request.name.strip(),
        kind=request.kind,
        text=request.text,
        cron=" ".join(request.cron.split()) if request.cron is not None else None,
        tz=tz,
        every=_every(request.every),
        at=(parse_at(request.at, tz, need_offset=need_offset) if request.at is not None else None),
        anchor=float(int(now)),
        url=url,
        select=request.select,
        json_path=request.json_path,
        headers=request.headers,
        model=model,
        max_cost_usd=request.max_cost_usd,
        daily_usd=request.daily_usd,
        max_steps=request.max_steps,
        tools=sorted(set(request.tools)) if request.tools is not None else None,
        mode="plan" if request.mode == "plan" else None,
        catch_up=request.catch_up,
        overlap=request.overlap,
        by=by,
        created_at=now,
    )
    check_spec(spec, now)
    return spec


# ------------------------------------------------------------------ operations


async def add_schedule(
    store: Store,
    settings: Settings,
    request: ScheduleRequest,
    *,
    by: str = "local",
    clock: Clock = SYSTEM,
    need_offset: bool = False,
    known_tools: Collection[str] | None = None,
) -> ScheduleRow:
    """Validate and keep a new schedule; its first slot is the first after now."""
    now = clock.wall()
    spec = await spec_from(
        request, settings, now=now, by=by, need_offset=need_offset, known_tools=known_tools
    )
    first = first_slot(spec, now)
    row = ScheduleRow(
        spec=spec,
        paused=False,
        next_at=first,
        due_at=None if first is None else first + jitter(spec),
        status=ScheduleStatus(),
        updated_at=now,
    )
    await store.add_schedule(row)
    return await store.schedule(spec.name)


async def edit_schedule(
    store: Store,
    settings: Settings,
    name: str,
    patch: SchedulePatch,
    *,
    clock: Clock = SYSTEM,
    need_offset: bool = False,
    known_tools: Collection[str] | None = None,
) -> ScheduleRow:
    """Change what *patch* gives; a change of timing starts from the next slot after now.
    The row is changed in one transaction: an edit never undoes a slot fired meanwhile."""
    spec = (await store.schedule(name)).spec
    fields = patch.model_dump(exclude_unset=True)
    paused = fields.pop("paused", None)
    edited: ScheduleSpec | None = None
    if fields:
        base = spec.model_dump(
            include={
                "name", "kind", "text", "cron", "tz", "every", "url", "select", "json_path",
                "headers", "model", "max_cost_usd", "daily_usd", "max_steps", "tools",
                "mode", "catch_up", "overlap",
            }
        )  # fmt: skip
        if spec.at is not None:
            base["at"] = _iso(spec.at, spec.tz)
        base["mode"] = base["mode"] or "default"
        base.update(fields)
        edited = await spec_from(
            ScheduleRequest(**base),
            settings,
            now=clock.wall(),
            by=spec.by,
            need_offset=need_offset,
            known_tools=known_tools,
        )

    def change(row: ScheduleRow, now: float) -> ScheduleRow:
        if edited is not None:
            old = row.spec
            timing = (edited.cron, edited.tz, edited.every, edited.at) != (
                old.cron, old.tz, old.every, old.at
            )  # fmt: skip
            new = edited.model_copy(
                update={"created_at": old.created_at, "anchor": now if timing else old.anchor}
            )
            status = row.status
            if (new.url, new.select, new.json_path) != (old.url, old.select, old.json_path):
                status = status.model_copy(
                    update={"baseline": False, "etag": None, "last_modified": None}
                )
            if timing:
                nxt = first_slot(new, now)
                row = ScheduleRow(new, row.paused, nxt, _due(new, nxt), status, row.updated_at)
            else:
                row = ScheduleRow(new, row.paused, row.next_at, row.due_at, status, row.updated_at)
        if paused is not None and paused != row.paused:
            row = _paused(row, paused, now)
        return row

    return await store.update_schedule(name, change)


def _iso(at: float, tz: str) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(tz)).isoformat()


def _due(spec: ScheduleSpec, next_at: float | None) -> float | None:
    return None if next_at is None else next_at + jitter(spec)


def _paused(row: ScheduleRow, paused: bool, now: float) -> ScheduleRow:
    """Pausing stops the slots; resuming starts from the next slot after now (the
    slots that fell while it was paused are not run), errors forgotten."""
    if paused:
        return ScheduleRow(row.spec, True, row.next_at, row.due_at, row.status, row.updated_at)
    nxt = next_slot(row.spec, now) if row.next_at is not None else None
    if row.next_at is not None and row.next_at > now:
        nxt = row.next_at
    status = row.status.model_copy(update={"errors": 0, "retry_at": None})
    return ScheduleRow(row.spec, False, nxt, _due(row.spec, nxt), status, row.updated_at)


async def pause_schedule(store: Store, name: str) -> ScheduleRow:
    return await store.update_schedule(name, lambda row, now: _paused(row, True, now))


async def resume_schedule(store: Store, name: str) -> ScheduleRow:
    return await store.update_schedule(name, lambda row, now: _paused(row, False, now))


async def remove_schedule(store: Store, name: str) -> None:
    """Forget the schedule (its runs stay, as ordinary errands)."""
    await store.remove_schedule(name)


async def schedule_info(
    store: StoreReader, name: str, *, runs: int = 10, clock: Clock = SYSTEM
) -> ScheduleInfo:
    row = await store.schedule(name)
    recent = await store.schedule_runs(name, runs)
    ids = {r.errand_id for r in recent if r.errand_id}
    if row.status.last_run:
        ids.add(row.status.last_run)
    views: dict[str, ErrandView] = {}
    for errand_id in ids:
        try:
            views[errand_id] = await store.view(errand_id)
        except NotFound:
            continue
    spent = await store.schedule_spent(name, clock.wall())
    return ScheduleInfo(row, recent, views, spent)


async def schedule_infos(store: StoreReader, *, clock: Clock = SYSTEM) -> list[ScheduleInfo]:
    """Every schedule, with its last run (not its history)."""
    out = []
    for row in await store.schedules():
        views: dict[str, ErrandView] = {}
        if row.status.last_run:
            with contextlib.suppress(NotFound):
                views[row.status.last_run] = await store.view(row.status.last_run)
        spent = await store.schedule_spent(row.spec.name, clock.wall())
        out.append(ScheduleInfo(row, [], views, spent))
    return out


# ------------------------------------------------------------------ running now

Outcome = Literal["started", "baseline", "unchanged", "skipped", "failed"]


@dataclass(frozen=True)
class RunNow:
    """What *run now* did: a run started (*errand_id*), or -- a watch -- what its check
    found: the baseline recorded, nothing new, new items but no run (its daily budget is
    spent), or a failure (*detail* says why)."""

    schedule: str
    errand_id: str | None
    outcome: Outcome
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_now(
    store: Store,
    settings: Settings,
    name: str,
    *,
    started: Callable[[Sequence[str]], object] | None = None,
) -> RunNow:
    """Start a run of *name* now (a watch: check it now). ``NotFound`` for an unknown
    schedule; a :class:`StoreError` (409) when no run started: the schedule's daily
    budget is spent, or a run of it started this very second."""
    from errands.engine.scheduler import NotStarted, Scheduler

    before = await store.schedule(name)  # (NotFound: no such schedule)
    try:
        errand_id = await Scheduler(store, settings, started=started).run_now(name)
    except NotStarted:
        why = await _skipped(store, name) or "a run of it started this very second; try again"
        raise StoreError(f"schedule {name} started no run: {why}") from None
    kind = "watch" if before.spec.kind == "watch" else "schedule"
    if errand_id:
        what = "found new items; " if kind == "watch" else ""
        return RunNow(name, errand_id, "started", f"{kind} {name}: {what}run started: {errand_id}")
    after = (await store.schedule(name)).status
    if after.errors > before.status.errors:  # (each failure in a row counts one)
        return RunNow(name, None, "failed", f"watch {name}: the check failed: {after.last_error}")
    if after.changes > before.status.changes:  # new items, and no run: the store said why
        why = await _skipped(store, name) or "no run started"
        return RunNow(name, None, "skipped", f"watch {name}: found new items, but {why}")
    if after.baseline and not before.status.baseline:
        return RunNow(
            name,
            None,
            "baseline",
            f"watch {name}: first check: what is there now is the baseline; "
            "later checks start an errand only for new items",
        )
    return RunNow(name, None, "unchanged", f"watch {name}: checked: nothing new, no errand started")


async def _skipped(store: Store, name: str) -> str:
    """Why the newest slot of *name* was skipped, if it was (e.g. its daily budget); for
    a watch whose new items wait, its note."""
    newest = await store.schedule_runs(name, 1)
    if newest and newest[0].outcome == "skipped" and newest[0].reason:
        return newest[0].reason
    return (await store.schedule(name)).status.note
