"""What the API and the CLI share about schedules: the tools a schedule may name, and
running one now and saying what happened (``POST /api/schedules/{name}/run``, and
``errands schedule run-now`` when no server runs).

Kept free of web-framework imports: ``errands schedule run-now`` uses it on the store
directly when no ``errands up`` runs for the home.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from errands.config import Settings
from errands.core.schedules import ScheduleError
from errands.core.states import ErrandView
from errands.engine.scheduler import Scheduler
from errands.errors import NotFound, StoreError
from errands.harness import Harness
from errands.store import Store

__all__ = ["RunNow", "check_at", "known_tools", "run_now"]

LAST_YEAR = 9000  # an ``at`` later than this is refused (a time in year 10,000 breaks)

Outcome = Literal["started", "baseline", "unchanged", "skipped", "failed"]


def check_at(at: str | None) -> None:
    """Refuse an ``at`` in the year 9000 or later (naming the field): such a time cannot
    be shown in every zone (``datetime`` ends with the year 9999), and a schedule kept
    with one would break every listing of schedules. (A malformed time is left to the
    operation, which explains it.)"""
    if at is None:
        return
    try:
        year = datetime.fromisoformat(at.strip()).year
    except ValueError:
        return
    if year >= LAST_YEAR:
        raise ScheduleError("at", f"at: {at!r} is too far in the future (before {LAST_YEAR})")


def known_tools(harness: Harness) -> list[str]:
    """The tools a schedule's ``tools`` may name: every tool an errand could use here."""
    return [tool.name for tool in harness.toolset.tools(ErrandView(id="any"))]


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
    before = await store.schedule(name)  # (NotFound: no such schedule)
    try:
        errand_id = await Scheduler(store, settings, started=started).run_now(name)
    except NotFound:  # (the scheduler's word for "the store started nothing")
        await store.schedule(name)  # removed meanwhile: that NotFound stands
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
    """Why the newest slot of *name* was skipped, if it was (e.g. its daily budget)."""
    newest = await store.schedule_runs(name, 1)
    if newest and newest[0].outcome == "skipped" and newest[0].reason:
        return newest[0].reason
    return ""
