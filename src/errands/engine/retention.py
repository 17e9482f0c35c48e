"""Retention, applied: ``errands gc`` and the periodic run inside ``errands up``.

One run (:meth:`Retention.run`) reads the plan (:meth:`Store.retention_plan`), compacts
each finished errand past its retention -- one transaction each, guarded in that
transaction (:func:`errands.store.retention.finished_before`), so an errand a message
reopened meanwhile is left alone -- then trims schedule runs, watch items and old
wake-ups, and gives the freed pages back to the file system. A dry run reads the plan
and writes nothing.

Which errands may go is the guard's to say; a test that wants a retention that ignores
it subclasses :class:`Retention` and overrides :meth:`Retention.guard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from errands.clock import SYSTEM, Clock
from errands.config import RetentionSettings
from errands.engine.scheduler import KEEP_ITEMS
from errands.errors import StoreError
from errands.store.protocol import AppendCheck, Store
from errands.store.retention import GcReport, RetentionPlan, finished_before

__all__ = ["WAKEUPS_KEPT", "Retention"]

log = logging.getLogger("errands.retention")

DAY = 86400.0
WAKEUPS_KEPT = 3600.0  # wake-up rows are read within a second; an hour is ample


class Retention:
    """Applies ``[retention]`` to *store*, by *clock*'s wall time."""

    def __init__(self, store: Store, rules: RetentionSettings, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.rules = rules
        self.clock = clock

    def guard(self, plan: RetentionPlan, cutoff: float) -> AppendCheck:
        """What a compaction checks of the errand, inside its transaction."""
        return finished_before(cutoff, frozenset(plan.past_runs))

    async def plan(self) -> tuple[RetentionPlan, float]:
        now = self.clock.wall()
        cutoff = now - self.rules.keep_days * DAY
        plan = await self.store.retention_plan(
            cutoff, self.rules.schedule_runs, now - KEEP_ITEMS, now - WAKEUPS_KEPT
        )
        return plan, cutoff

    async def run(self, *, dry_run: bool = False) -> GcReport:
        plan, cutoff = await self.plan()
        report = GcReport(
            dry_run=dry_run,
            file_bytes_before=plan.file_bytes,
            file_bytes_after=plan.file_bytes,
            auto_vacuum=plan.auto_vacuum,
        )
        if dry_run:
            report.errands, report.events, report.bytes = len(plan.errands), plan.events, plan.bytes
            report.runs, report.items, report.wakeups = plan.runs, plan.items, plan.wakeups
            report.compacted = list(plan.errands)
            if plan.auto_vacuum == "incremental":
                report.reclaimed_bytes = plan.free_bytes  # (at least: more once compacted)
            return report
        guard = self.guard(plan, cutoff)
        for errand_id in plan.errands:
            try:
                done = await self.store.compact(errand_id, guard)
            except StoreError as exc:  # it changed meanwhile: the next run looks again
                log.info("not compacted: %s", exc)
                report.refused += 1
                continue
            report.errands += 1
            report.events += done.events_before - done.events_after
            report.bytes += done.bytes_before - done.bytes_after
            report.compacted.append(errand_id)
        now = self.clock.wall()
        report.runs, report.items, report.wakeups = await self.store.trim(
            self.rules.schedule_runs, now - KEEP_ITEMS, now - WAKEUPS_KEPT
        )
        report.reclaimed_bytes = await self.store.reclaim()
        report.file_bytes_after = (await self.plan())[0].file_bytes
        return report

    async def serve(self, stop: asyncio.Event) -> None:
        """Run every ``every_minutes`` until *stop* is set (``errands up``)."""
        every = self.rules.every_minutes * 60.0
        while not stop.is_set():
            try:
                report = await self.run()
                if report.errands or report.runs or report.items:
                    log.info(
                        "retention: %d errands compacted (%d bytes), %d runs, %d items"
                        " forgotten, %d bytes given back",
                        report.errands, report.bytes, report.runs, report.items,
                        report.reclaimed_bytes,
                    )  # fmt: skip
            except Exception:
                log.exception("retention failed (it runs again later)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
