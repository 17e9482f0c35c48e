"""Retention in the store, backend-neutral: compacting a finished errand's log in one
transaction, trimming what schedules and watches keep, and giving space back.

The rules of what a compacted log keeps are in :mod:`errands.store.retention`; a
backend implements the hooks below with a few statements each
(:mod:`errands.store.sqlite.retention`).

Crash safety: a compaction is one transaction of the writer (the old rows deleted, the
new ones written, the orphaned blobs dropped, the projection rewritten): a kill before
its commit leaves the full log, after it the compacted one -- never a mix. Trimming is
one transaction too; giving the freed pages back to the file system
(:meth:`RetentionOps.reclaim`) moves no data a commit depends on.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from errands.core import events as ev
from errands.core.states import ErrandView, apply
from errands.errors import SchemaTooNew, StoreError
from errands.store.protocol import AppendCheck
from errands.store.retention import Compacted, RetentionPlan, compacted_log, same_outcome
from errands.store.writer import Prepared, Tx

__all__ = ["RetentionOps"]


class RetentionOps(abc.ABC):
    """Mixed into :class:`~errands.store.base.BaseStore`."""

    if TYPE_CHECKING:  # what the base store provides
        _views: dict[str, ErrandView]
        _written: dict[str, Any]
        _listeners: list[Any]

        async def _submit(self, fn: Callable[[Tx], Any]) -> Any: ...
        def _prepare(self, event: Any) -> Prepared: ...
        def _view_for(self, tx: Tx, errand_id: str) -> ErrandView: ...
        def _log_bodies(self, tx: Tx, errand_id: str) -> list[tuple[int, str, str | None]]: ...
        def _drop_orphan_blobs(self, tx: Tx, hashes: Sequence[str]) -> None: ...

    # ------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    def _delete_log(self, tx: Tx, errand_id: str) -> None:
        """Delete every event of the errand (and its timer); in the writer's transaction."""

    @abc.abstractmethod
    def _trim(
        self, tx: Tx, keep_runs: int, items_before: float, wakeups_before: float
    ) -> tuple[int, int, int]:
        """Delete each schedule's run rows beyond its newest *keep_runs*, watch items not
        seen since *items_before*, wake-ups older than *wakeups_before*; the counts."""

    @abc.abstractmethod
    def _compaction_candidates(self, cutoff: float, keep_runs: int) -> tuple[list[str], list[str]]:
        """Finished errands not compacted yet: those that finished before *cutoff*
        (oldest first), and the runs of a schedule past its newest *keep_runs* (by
        slot). Any thread."""

    @abc.abstractmethod
    def _log_sizes(self, errands: Sequence[str]) -> tuple[int, int]:
        """The events of these errands' logs and their stored bytes (bodies and blobs)."""

    @abc.abstractmethod
    def _trim_counts(
        self, keep_runs: int, items_before: float, wakeups_before: float
    ) -> tuple[int, int, int]:
        """What :meth:`_trim` would delete: (runs, items, wake-ups). Any thread."""

    @abc.abstractmethod
    def _space(self) -> tuple[int, int, str]:
        """The store's bytes on disk, the bytes of its free pages, and how it gives
        them back (``none``, ``full`` or ``incremental``). Any thread."""

    @abc.abstractmethod
    def _reclaim(self) -> int:
        """Give the file's free pages back to the file system; their bytes. (Any
        thread; its own transaction.)"""

    # ------------------------------------------------------------ writes

    async def compact(self, errand_id: str, guard: AppendCheck) -> Compacted:
        """Rewrite the errand's log as its compacted log (:mod:`errands.store.retention`),
        in one transaction, if *guard* accepts its current view; otherwise refuse
        (:class:`StoreError`), writing nothing."""

        def op(tx: Tx) -> Compacted:
            if errand_id in tx.dirty:  # written in this batch: look again next time
                raise StoreError(f"errand {errand_id} changed meanwhile")
            before = self._view_for(tx, errand_id)
            guard(before)
            rows = self._log_bodies(tx, errand_id)
            bodies = [body for _, body, _ in rows]
            try:
                kept = compacted_log(before, bodies, tx.now)
            except ev.EventTooNew as exc:
                raise SchemaTooNew(f"this store was written by a newer errands: {exc}") from None
            if not same_outcome(before, kept, errand_id):
                raise StoreError(f"errand {errand_id}: its compacted log would fold differently")
            self._delete_log(tx, errand_id)
            self._drop_orphan_blobs(tx, sorted({blob for _, _, blob in rows if blob}))
            view = ErrandView(id=errand_id)
            size = 0
            for seq, event in enumerate(kept, start=1):
                # (written as they are: already redacted, and booked when first logged)
                body = event.model_dump_json()
                size += len(body)
                tx.rows.append((errand_id, seq, event.type, event.at, body, None))
                apply(view, seq, event)
            tx.dirty[errand_id] = view
            self._views.pop(errand_id, None)
            self._written.pop(errand_id, None)  # (every column rewritten)
            if self._listeners:
                tx.appended.append((errand_id, view.last_seq))
            return Compacted(errand_id, len(rows), sum(map(len, bodies)), len(kept), size)

        result: Compacted = await self._submit(op)
        return result

    async def trim(
        self, keep_runs: int, items_before: float, wakeups_before: float
    ) -> tuple[int, int, int]:
        """Forget each schedule's run rows beyond its newest *keep_runs*, watch items not
        seen since *items_before*, and wake-ups older than *wakeups_before*, in one
        transaction: (runs, items, wake-ups) deleted."""

        def op(tx: Tx) -> tuple[int, int, int]:
            return self._trim(tx, keep_runs, items_before, wakeups_before)

        result: tuple[int, int, int] = await self._submit(op)
        return result

    async def retention_plan(
        self, cutoff: float, keep_runs: int, items_before: float, wakeups_before: float
    ) -> RetentionPlan:
        """What retention would do now, read without writing anything."""
        import asyncio

        return await asyncio.to_thread(self._plan, cutoff, keep_runs, items_before, wakeups_before)

    def _plan(
        self, cutoff: float, keep_runs: int, items_before: float, wakeups_before: float
    ) -> RetentionPlan:
        old, past_runs = self._compaction_candidates(cutoff, keep_runs)
        errands = tuple(dict.fromkeys(old + past_runs))
        events, size = self._log_sizes(errands)
        runs, items, wakeups = self._trim_counts(keep_runs, items_before, wakeups_before)
        file_bytes, free_bytes, auto_vacuum = self._space()
        return RetentionPlan(
            errands=errands,
            past_runs=tuple(past_runs),
            events=events,
            bytes=size,
            runs=runs,
            items=items,
            wakeups=wakeups,
            file_bytes=file_bytes,
            free_bytes=free_bytes,
            auto_vacuum=auto_vacuum,
        )

    async def reclaim(self) -> int:
        """Shrink the file by the pages freed (incremental vacuum, while the store is in
        use): the bytes given back."""
        import asyncio

        return await asyncio.to_thread(self._reclaim)
