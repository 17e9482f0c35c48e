"""The scheduler: starts each schedule's runs, exactly once per slot, and checks watches.

It runs inside ``errands up`` beside the runner (:meth:`Scheduler.serve`), on the same
event loop. Each pass reads the schedules that are due -- one indexed query; nothing
else is read or written while no slot is due, so 10,000 schedules an hour away cost
nothing -- and for each one:

- a **schedule** is planned (:func:`errands.core.schedules.plan`: catch-up, overlap,
  the next slot) and fired (:meth:`Store.fire`): the slot's key, the run's errand and
  the schedule's next slot are one transaction, so a crash, a restart or a second
  process can neither lose a slot nor run it twice;
- a **watch** is checked without the model (:mod:`errands.tools.watchcheck`): an
  unchanged page (or a 304) updates the watch's row and writes no event; items not
  seen in the last 7 days start one errand, given only those items, as untrusted
  content; the first check records the baseline. A failed check backs off (doubling,
  up to an hour) and says why in the schedule's status.

Every run is an ordinary errand (``schedule`` names its schedule) given, as context,
its slot, how many slots were missed, and when the previous run happened and what it
answered -- labelled untrusted if that answer was derived from untrusted content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from errands.clock import SYSTEM, Clock
from errands.config import Settings
from errands.core import events as ev
from errands.core.faults import fault
from errands.core.ids import new_errand_id
from errands.core.labels import Confidentiality, Integrity, Provenance
from errands.core.schedules import ScheduleSpec, ScheduleStatus, describe, jitter, plan
from errands.core.states import TERMINAL
from errands.engine.operations import title_for
from errands.errors import ErrandsError, NotFound, StoreError, StoreUnavailable
from errands.store import Store
from errands.store.protocol import Firing, NewRun, ScheduleRow
from errands.tools import watchcheck
from errands.tools.canonical import UrlError, canonical_url
from errands.tools.workspace import make_workspace

__all__ = ["KEEP_ITEMS", "NotStarted", "Scheduler", "secret_problem"]

KEEP_ITEMS = 7 * 86400.0  # an item is new when no check saw it in this long
BACKOFF_MAX = 3600.0  # a failing watch is checked at least once an hour
RESULT_CHARS = 2000  # of the previous run's answer, given to the next run
DIFF_ITEMS = 50  # new items listed to the model (the rest are counted)
BATCH = 200  # schedules handled per pass
WATCHES_AT_ONCE = 16  # fetches in flight

log = logging.getLogger("errands.scheduler")


class NotStarted(StoreError):
    """*Run now* started nothing: the store refused the run (its schedule's daily budget
    is spent -- the slot's row says so -- or a run started this very second)."""


class Scheduler:
    """Fires due schedules of *store*; *started* is told the errands it started."""

    check = staticmethod(watchcheck.check)  # a watch's check (a variant: a subclass)

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Clock = SYSTEM,
        started: Callable[[Sequence[str]], object] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.started = started
        self._fetches = asyncio.Semaphore(WATCHES_AT_ONCE)
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ serving

    def nudge(self) -> None:
        """A schedule was added or changed: look again now (same event loop)."""
        self._wake.set()

    async def serve(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Fire schedules as they fall due until *stop*; look at least every *poll* s."""
        while not stop.is_set():
            try:
                wait = await self.tick()
            except StoreUnavailable as exc:
                log.warning("the scheduler waits for the store: %s", exc)
                wait = poll
            except Exception:  # a bug: logged, and the next pass tries again
                log.exception("a scheduler pass failed")
                wait = poll
            self._wake.clear()
            sleep = poll if wait is None else min(max(wait, 0.0), poll)
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait(
                    {waiter, stopper}, timeout=sleep, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (waiter, stopper):
                    task.cancel()

    async def tick(self) -> float | None:
        """Handle every due schedule; seconds until the next one is due (None: none)."""
        while True:
            now = self.clock.wall()
            due = await self.store.due_schedules(now, BATCH)
            if not due:
                break
            # all at once: their runs share the store's group commits (one by one, the
            # 100th schedule due in the same second would wait for 99 commits)
            await asyncio.gather(
                *(
                    self._guard(
                        r, self._watch(r, now) if r.spec.kind == "watch" else self._schedule(r, now)
                    )
                    for r in due
                )
            )
            if len(due) < BATCH:
                break
        following = await self.store.next_due()
        return None if following is None else following - self.clock.wall()

    async def _guard(self, row: ScheduleRow, work: Awaitable[None]) -> None:
        """One schedule's failure is its own: logged, and tried again at its next pass."""
        try:
            await work
        except StoreUnavailable:
            raise
        except Exception:
            log.exception("schedule %s: a pass failed", row.spec.name)

    # ------------------------------------------------------------------ schedules

    async def _schedule(self, row: ScheduleRow, now: float) -> None:
        spec = row.spec
        assert row.next_at is not None
        running = await self._running(row)
        what = plan(spec, row.next_at, now, running=running)
        runs, problem = [], ""
        for slot, missed in what.runs:
            try:
                runs.append(await self._new_run(row, slot, missed))
            except ErrandsError as exc:  # (the model spec became unusable, a full disk...)
                problem = str(exc)
                what.skips.append((slot, 1, f"could not start: {problem}"))
        handled = [slot for slot, _ in what.runs] + [slot for slot, _, _ in what.skips]
        status = row.status.model_copy(update={"last_slot": max(handled, default=row.next_at)})
        if problem:
            status = _failed(status, problem, now)
        elif runs:
            status = status.model_copy(update={"errors": 0, "last_error": ""})
        await self._fire(row, status, what.next_at, runs=runs, skips=what.skips)

    async def _running(self, row: ScheduleRow) -> str | None:
        """The previous run, if it has not finished."""
        last = row.status.last_run
        if last is None:
            return None
        try:
            view = await self.store.view(last)
        except NotFound:
            return None
        return None if view.state in TERMINAL else last

    async def _fire(
        self,
        row: ScheduleRow,
        status: ScheduleStatus,
        next_at: float | None,
        *,
        runs: list[NewRun] | None = None,
        skips: list[tuple[float, int, str]] | None = None,
        items: list[str] | None = None,
        expect_new: list[str] | None = None,
        due_at: float | None = None,
    ) -> None:
        runs = runs or []
        if due_at is None and next_at is not None:
            due_at = next_at + jitter(row.spec)
        if runs:
            fault("watch_changed" if row.spec.kind == "watch" else "schedule_due")
        firing = Firing(
            name=row.spec.name,
            expect_version=row.version,
            next_at=next_at,
            due_at=due_at,
            status=status,
            runs=runs,
            skips=skips or [],
            items=items,
            expect_new=expect_new,
            keep_seconds=KEEP_ITEMS,
        )
        fired = await self.store.fire(firing)
        if fired.started:
            fault("schedule_fired")
        unused = [r for r in runs if r.errand_id not in fired.started]
        _remove_workspaces(unused)
        if fired.started and self.started is not None:
            self.started(fired.started)
        if fired.stale:
            log.info("schedule %s: another process handled the slot", row.spec.name)

    async def run_now(self, name: str) -> str:
        """Start a run of schedule *name* now (a watch: check it now); the errand id,
        or "" for a watch check that found nothing new."""
        row = await self.store.schedule(name)
        now = float(int(self.clock.wall()))
        if row.spec.kind == "watch":
            before = row.status.runs
            await self._watch(row, now, forced=True)
            after = await self.store.schedule(name)
            return after.status.last_run or "" if after.status.runs > before else ""
        run = await self._new_run(row, now, 0, forced=True)
        firing = Firing(
            name=name,
            expect_version=row.version,
            next_at=row.next_at,
            due_at=row.due_at,
            status=row.status,
            runs=[run],
            check_version=False,
        )
        fired = await self.store.fire(firing)
        if not fired.started:
            _remove_workspaces([run])
            raise NotStarted(f"schedule {name!r} started no run")
        if self.started is not None:
            self.started(fired.started)
        return fired.started[0]

    # ------------------------------------------------------------------ watches

    async def _watch(self, row: ScheduleRow, now: float, *, forced: bool = False) -> None:
        spec = row.spec
        slot = now if forced else (row.next_at or now)
        what = plan(spec, slot, now, running=None)
        next_at = row.next_at if forced else what.next_at
        running = await self._running(row)
        status = row.status
        if running is not None and spec.overlap == "skip" and not forced:
            await self._fire(row, status, next_at)  # looked at again after the run ends
            return
        try:
            async with self._fetches:
                checked = await self.check(
                    spec.url or "",
                    self.settings,
                    select=spec.select,
                    json_path=spec.json_path,
                    headers=_secret_headers(spec, self.settings),
                    etag=status.etag,
                    last_modified=status.last_modified,
                )
        except watchcheck.WatchError as exc:
            failed = _failed(status, str(exc), now)
            wait = min(BACKOFF_MAX, (spec.every or 60.0) * 2 ** min(failed.errors, 20))
            failed = failed.model_copy(update={"retry_at": now + wait})
            log.info("watch %s: %s (next try in %.0f s)", spec.name, exc, wait)
            await self._fire(row, failed, row.next_at, due_at=now + wait)
            return
        status = status.model_copy(
            update={
                "checks": status.checks + 1,
                "last_check_at": now,
                "last_slot": slot,
                "errors": 0,
                "last_error": "",
                "retry_at": None,
                "etag": checked.etag,
                "last_modified": checked.last_modified,
            }
        )
        if checked.not_modified:
            await self._fire(row, status, next_at)
            return
        keys = [item.key for item in checked.items]
        runs: list[NewRun] = []
        new: list[str] = []
        if row.status.baseline:
            seen = await self.store.seen_items(spec.name, keys, now - KEEP_ITEMS)
            new = [k for k in keys if k not in seen]
        if new:
            fresh = [item for item in checked.items if item.key in set(new)]
            runs.append(await self._new_run(row, slot, 0, diff=(checked.url, fresh), forced=forced))
            status = status.model_copy(update={"changes": status.changes + 1})
        await self._fire(row, status, next_at, runs=runs, items=keys, expect_new=new)

    # ------------------------------------------------------------------ a run

    async def _new_run(
        self,
        row: ScheduleRow,
        slot: float,
        missed: int,
        *,
        diff: tuple[str, Sequence[watchcheck.Item]] | None = None,
        forced: bool = False,
    ) -> NewRun:
        """The errand for the slot, with its context; its workspace is made here (and
        removed again if the store does not start it)."""
        spec = row.spec
        errand_id = new_errand_id()
        workspace = make_workspace(self.settings, errand_id)
        now = self.clock.wall()
        limits = self.settings.limits.model_copy(
            update={
                k: v
                for k, v in {"max_steps": spec.max_steps, "max_cost_usd": spec.max_cost_usd}.items()
                if v is not None
            }
        )
        created = ev.ErrandCreated(
            at=now,
            title=title_for(f"{spec.name}: {spec.text}"),
            content=ev.Content(
                text=spec.text,
                provenance=Provenance(kind="user", name=spec.by),
                integrity=Integrity.trusted,
                confidentiality=Confidentiality.private,
            ),
            model=spec.model or self.settings.default_model,
            workspace=str(workspace),
            limits=limits,
            by=f"schedule:{spec.name}",
            channel="schedule",
            timezone=self.settings.timezone,
            schedule=spec.name,
            schedule_daily_usd=spec.daily_usd,
            tools=spec.tools,
            mode=spec.mode,
        )
        more: list[ev.Event] = [await self._context(row, slot, missed, forced, now)]
        if diff is not None:
            more.append(_diff_message(spec, diff[0], diff[1], now))
        return NewRun(
            slot=slot, missed=missed, errand_id=errand_id, created=created, more=tuple(more)
        )

    async def _context(
        self, row: ScheduleRow, slot: float, missed: int, forced: bool, now: float
    ) -> ev.UserMessage:
        """The run's slot, what it missed, and the previous run (``last_run``)."""
        spec = row.spec
        tz = ZoneInfo(spec.tz)
        when = "started by hand" if forced else f"for the slot at {_local(slot, tz)}"
        lines = [f"(This is a run of the schedule {spec.name!r}, {describe(spec)}, {when}.)"]
        if missed:
            lines.append(
                f"({missed} earlier slot{'s' if missed != 1 else ''} were missed while errands "
                "was not running; this one run stands for them.)"
            )
        untrusted = False
        last = row.status.last_run
        view = None
        if last is not None:
            with contextlib.suppress(NotFound):
                view = await self.store.view(last)
        if view is None:
            lines.append("(There is no previous run.)")
        else:
            result = (view.result or "").strip()
            if len(result) > RESULT_CHARS:
                result = result[:RESULT_CHARS] + " […]"
            untrusted = view.result_untrusted
            lines.append(
                f"(last_run: errand {view.id}, started {_local(view.created_at, tz)}, "
                f"{view.state.value}. Its answer: {result or '(none)'})"
            )
        return ev.UserMessage(
            at=now,
            content=ev.Content(
                text="\n".join(lines),
                provenance=Provenance(kind="system", name="schedule", source=spec.name),
                integrity=Integrity.untrusted if untrusted else Integrity.trusted,
                confidentiality=Confidentiality.private,
            ),
            by=f"schedule:{spec.name}",
            channel="schedule",
        )


def _diff_message(
    spec: ScheduleSpec, url: str, items: Sequence[watchcheck.Item], now: float
) -> ev.UserMessage:
    """What changed, as untrusted content: the new items only, never the whole page."""
    shown = [f"- {item.text}" for item in items[:DIFF_ITEMS]]
    if len(items) > DIFF_ITEMS:
        shown.append(f"(and {len(items) - DIFF_ITEMS} more new items)")
    count = len(items)
    head = f"{count} new item{'s' if count != 1 else ''} on {url} since the last check:"
    return ev.UserMessage(
        at=now,
        content=ev.Content(
            text="\n".join([head, *shown]),
            provenance=Provenance(kind="external", name="watch", source=url),
            integrity=Integrity.untrusted,
            confidentiality=Confidentiality.public,
        ),
        by=f"watch:{spec.name}",
        channel="watch",
    )


def _failed(status: ScheduleStatus, message: str, now: float) -> ScheduleStatus:
    return status.model_copy(
        update={"errors": status.errors + 1, "last_error": message[:500], "last_error_at": now}
    )


def _local(at: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(at, tz).strftime("%a %Y-%m-%d %H:%M:%S %Z")


def secret_problem(settings: Settings, name: str, url: str) -> str:
    """Why the secret *name* may not be sent to *url* ("" when it may): it must be
    declared in ``[secrets]`` of errands.toml, with *url*'s host among its ``hosts``."""
    declared = settings.secrets.get(name)
    if declared is None:
        return (
            f"no secret named {name} in errands.toml; declare it and where it may go: "
            f'[secrets.{name}] hosts = ["{_host_of(url) or "example.com"}"]'
        )
    host = _host_of(url)
    for allowed in declared.hosts:
        a = allowed.strip().strip(".").casefold()
        if host is not None and (host == a or host.endswith("." + a)):
            return ""
    return f"the secret {name} may be sent only to {', '.join(declared.hosts)}, not to {host}"


def _host_of(url: str) -> str | None:
    try:
        return canonical_url(url).host or None
    except UrlError:
        return None


def _secret_headers(spec: ScheduleSpec, settings: Settings) -> dict[str, str]:
    """A watch's headers, their values read from the secrets they name (declared in
    ``[secrets]``, for the watch's host); a missing or misdirected one fails the check."""
    out = {}
    for header, ref in spec.headers.items():
        name = ref.removeprefix("secret:")
        problem = secret_problem(settings, name, spec.url or "")
        if problem:
            raise watchcheck.WatchError(f"{header}: {problem}", transient=False)
        declared = settings.secrets[name]
        value = os.environ.get(declared.env or name)
        if value is None:
            raise watchcheck.WatchError(
                f"the secret {name} (for the {header} header) is not set: errands' environment "
                f"has no {declared.env or name}",
                transient=False,
            )
        out[header] = value
    return out


def _remove_workspaces(runs: Sequence[NewRun]) -> None:
    for run in runs:
        with contextlib.suppress(OSError):
            Path(run.created.workspace).rmdir()
