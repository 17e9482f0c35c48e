"""Schedules in the store, backend-neutral: the transaction that fires a slot.

Everything a slot changes is one transaction (:meth:`ScheduleOps.fire`): the slot's key
``(schedule, slot)``, the run's errand (its creation and the context it is given), a
watch's item keys, and the schedule's next slot. A crash before the commit leaves the
slot due (it fires again, once); after it, the key is there (it never fires twice). Two
processes that fire the same slot meet at the key, or at the compare-and-set on the
schedule's version (every write of its row adds one), which refuses the later one as a
whole -- as it refuses a firing planned from a row a person edited meanwhile.

A backend implements the hooks below with a few statements each
(:mod:`errands.store.sqlite.schedules`).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from errands.core import events as ev
from errands.core.schedules import ScheduleSpec, ScheduleStatus
from errands.core.states import ErrandView
from errands.costs import spend
from errands.errors import ErrandExists, NotFound, ScheduleExists, StoreError
from errands.store.protocol import Fired, Firing, NewRun, RunRow, ScheduleRow
from errands.store.writer import Prepared, Tx

__all__ = ["ScheduleOps", "run_from_row", "run_values", "schedule_from_row", "schedule_values"]

REFRESH_SEEN = 3600.0  # an item seen again is re-stamped at most once an hour


def schedule_from_row(values: Sequence[object]) -> ScheduleRow:
    """A schedule from the columns ``spec, paused, next_at, due_at, status, updated_at,
    version``."""
    spec, paused, next_at, due_at, status, updated_at, version = values
    return ScheduleRow(
        spec=ScheduleSpec.model_validate_json(str(spec)),
        paused=bool(paused),
        next_at=None if next_at is None else float(str(next_at)),
        due_at=None if due_at is None else float(str(due_at)),
        status=ScheduleStatus.model_validate_json(str(status)),
        updated_at=float(str(updated_at)),
        version=int(str(version)),
    )


def schedule_values(row: ScheduleRow) -> tuple[object, ...]:
    """*row* as the values of the columns ``spec, paused, next_at, due_at, status,
    updated_at, version, name`` (the status without its defaults)."""
    return (
        row.spec.model_dump_json(),
        row.paused,
        row.next_at,
        row.due_at,
        row.status.model_dump_json(exclude_defaults=True),
        row.updated_at,
        row.version,
        row.spec.name,
    )


def run_values(run: RunRow) -> tuple[object, ...]:
    """*run* as the values of the columns ``schedule, slot, outcome, errand_id, count,
    reason, at`` (the slot a whole second)."""
    return (run.schedule, int(run.slot), run.outcome, run.errand_id, run.count, run.reason, run.at)


def run_from_row(values: Sequence[Any]) -> RunRow:
    """A run row from the columns of :func:`run_values`."""
    schedule, slot, outcome, errand_id, count, reason, at = values
    return RunRow(
        str(schedule), float(slot), str(outcome), errand_id, int(count), str(reason), float(at)
    )


class ScheduleOps(abc.ABC):
    """Mixed into :class:`~errands.store.base.BaseStore`."""

    if TYPE_CHECKING:  # what the base store provides
        _views: dict[str, ErrandView]

        async def _submit(self, fn: Callable[[Tx], Any]) -> Any: ...
        def _prepare(self, event: ev.Event) -> Prepared: ...
        def _exists(self, tx: Tx, errand_id: str) -> bool: ...
        def _stage(self, tx: Tx, view: ErrandView, prepared: Sequence[Prepared]) -> list[int]: ...
        def _cache(self, view: ErrandView) -> None: ...
        def _spent_on(self, tx: Tx, scope: str) -> int: ...

    # ------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    def _get_schedule(self, tx: Tx, name: str) -> ScheduleRow | None: ...

    @abc.abstractmethod
    def _set_schedule(self, tx: Tx, row: ScheduleRow, *, new: bool) -> None:
        """Insert (*new*) or replace the schedule's row."""

    @abc.abstractmethod
    def _delete_schedule(self, tx: Tx, name: str) -> bool:
        """Delete the schedule, its slot keys and its items; False if there was none."""

    @abc.abstractmethod
    def _add_run(self, tx: Tx, run: RunRow) -> bool:
        """Insert the slot's key; False (and nothing written) if the slot has one."""

    @abc.abstractmethod
    def _seen(self, tx: Tx, name: str, keys: Sequence[str], since: float) -> dict[str, float]:
        """Of *keys*, those seen at or after *since*, with when they were last seen."""

    @abc.abstractmethod
    def _mark_seen(self, tx: Tx, name: str, keys: Sequence[str], now: float) -> None: ...

    @abc.abstractmethod
    def _forget_seen(self, tx: Tx, name: str, before: float) -> None:
        """Drop the schedule's items not seen since *before*."""

    # ------------------------------------------------------------ writes

    async def add_schedule(self, row: ScheduleRow) -> None:
        def op(tx: Tx) -> None:
            if self._get_schedule(tx, row.spec.name) is not None:
                raise ScheduleExists(
                    f"a schedule named {row.spec.name!r} exists already; choose another name "
                    f"or remove it first (errands schedule rm {row.spec.name})"
                )
            self._set_schedule(tx, dataclasses.replace(row, updated_at=tx.now, version=1), new=True)

        await self._submit(op)

    async def update_schedule(
        self, name: str, change: Callable[[ScheduleRow, float], ScheduleRow]
    ) -> ScheduleRow:
        def op(tx: Tx) -> ScheduleRow:
            current = self._get_schedule(tx, name)
            if current is None:
                raise NotFound(f"no schedule named {name!r}")
            row = dataclasses.replace(
                change(current, tx.now), updated_at=tx.now, version=current.version + 1
            )
            if row.spec.name != name:
                raise StoreError("a schedule's name cannot change")
            self._set_schedule(tx, row, new=False)
            return row

        result: ScheduleRow = await self._submit(op)
        return result

    async def remove_schedule(self, name: str) -> None:
        def op(tx: Tx) -> None:
            if not self._delete_schedule(tx, name):
                raise NotFound(f"no schedule named {name!r}")

        await self._submit(op)

    async def fire(self, firing: Firing) -> Fired:
        # (serialised and redacted here, in the caller's thread, like any append)
        ready = [(run, self._prepared(run)) for run in firing.runs]

        def op(tx: Tx) -> Fired:
            row = self._get_schedule(tx, firing.name)
            if row is None or (
                firing.check_version and (row.paused or row.version != firing.expect_version)
            ):
                return Fired(stale=True)
            status = firing.status
            runs, skips = ready, list(firing.skips)
            seen: tuple[list[str], list[str]] = ([], [])
            if firing.items is not None:
                seen = self._look_at(tx, firing)  # (reads only: nothing written yet)
                if row.status.baseline and seen[0] != (firing.expect_new or []):
                    return Fired(stale=True)  # what the caller read of the items changed
                if not row.status.baseline:
                    runs = []  # the first check only records what is there
                status = status.model_copy(update={"baseline": True, "note": ""})
            runs, skips, capped = self._within_daily_cap(tx, row, runs, skips)
            if firing.items is not None:
                new, stale = seen
                if capped:  # the new items wait for a day with budget: not seen yet
                    new, skips = [], []
                    status = status.model_copy(
                        update={"note": capped, "changes": row.status.changes}
                    )
                self._remember(tx, firing, new, stale)
            started = []
            for run, prepared in runs:
                key = RunRow(
                    firing.name, run.slot, "started", run.errand_id, run.missed, "", tx.now
                )
                if not self._add_run(tx, key):
                    continue  # this slot ran already: never twice
                if run.errand_id in self._views or self._exists(tx, run.errand_id):
                    raise ErrandExists(f"errand {run.errand_id} exists already")
                view = ErrandView(id=run.errand_id)
                self._stage(tx, view, prepared)
                self._cache(view)
                started.append(run.errand_id)
            skipped = 0
            for slot, count, reason in skips:
                if self._add_run(
                    tx, RunRow(firing.name, slot, "skipped", None, count, reason, tx.now)
                ):
                    skipped += count
            if started:
                status = status.model_copy(
                    update={
                        "runs": status.runs + len(started),
                        "last_run": started[-1],
                        "last_run_slot": runs[-1][0].slot,
                    }
                )
            if skipped:
                status = status.model_copy(update={"skipped": status.skipped + skipped})
            moved = dataclasses.replace(
                row,
                next_at=firing.next_at,
                due_at=firing.due_at,
                status=status,
                updated_at=tx.now,
                version=row.version + 1,
            )
            self._set_schedule(tx, moved, new=False)
            return Fired(started=tuple(started), new_items=len(seen[0]))

        result: Fired = await self._submit(op)
        return result

    def _prepared(self, run: NewRun) -> list[Prepared]:
        return [self._prepare(run.created), *(self._prepare(e) for e in run.more)]

    def _look_at(self, tx: Tx, firing: Firing) -> tuple[list[str], list[str]]:
        """The check's item keys not seen in the last ``keep_seconds`` (in page order),
        and the seen ones due a new stamp (at most once an hour)."""
        keys = list(dict.fromkeys(firing.items or ()))
        seen = self._seen(tx, firing.name, keys, tx.now - firing.keep_seconds)
        new = [k for k in keys if k not in seen]
        stale = [k for k in keys if k in seen and seen[k] < tx.now - REFRESH_SEEN]
        return new, stale

    def _remember(self, tx: Tx, firing: Firing, new: list[str], stale: list[str]) -> None:
        if new or stale:
            self._mark_seen(tx, firing.name, new + stale, tx.now)
        if new:  # (only when something changed: an unchanged check writes one row)
            self._forget_seen(tx, firing.name, tx.now - firing.keep_seconds)

    def _within_daily_cap(
        self,
        tx: Tx,
        row: ScheduleRow,
        runs: list[tuple[NewRun, list[Prepared]]],
        skips: list[tuple[float, int, str]],
    ) -> tuple[list[tuple[NewRun, list[Prepared]]], list[tuple[float, int, str]], str]:
        """A schedule that spent its daily cap today starts nothing more today: its runs
        become skips, and why ("" when nothing was held back)."""
        cap = row.spec.daily_usd
        if not runs or cap is None:
            return runs, skips, ""
        spent = self._spent_on(tx, spend.schedule_scope(row.spec.name, tx.now))
        if spent < spend.nanos(cap):
            return runs, skips, ""
        why = f"the schedule's daily budget (${cap:g}) is spent"
        return [], skips + [(run.slot, 1, why) for run, _ in runs], why
