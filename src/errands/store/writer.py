"""Group commit: one writer thread, one transaction and one commit per batch.

Callers enqueue an operation and await a future; the writer thread drains everything
queued, runs it in *one* transaction with *one* commit, and only then resolves the
futures -- an append returns once its event is durable, and a thousand concurrent
errands share a commit. Inside a batch each operation sees the effects of the ones
before it; an operation refused with a :class:`~errands.errors.StoreError` stages
nothing and the rest of the batch goes on. A batch that fails as a whole is retried one
operation at a time, so one broken operation fails alone.

A person's decision does not wait for the errands' batches (:class:`WriteQueue`): an
append without an owner -- an outside input: a decision, a message, a cancel -- goes to an
urgent lane. A batch being staged is cut short once it has staged ``URGENT_AFTER``
operations and commits what it staged; the urgent lane then commits in a transaction of
its own, its callers told at once, and the rest of the cut batch goes first after it.

A batch that fails because the store cannot write right now -- a full disk, another
process holding the write lock, an I/O error -- is rolled back and every operation in
it is answered with :class:`~errands.errors.StoreUnavailable` (nothing written). The
writer thread goes on: it remembers the condition (:attr:`GroupCommit.unavailable`,
for the server's health and the inbox), tries a write of its own now and then (every
``PROBE_MAX`` seconds at most), and forgets the condition at the first commit that
writes -- a held lock at the first commit.

:class:`GroupCommit` is the machinery, backend-neutral; :class:`~errands.store.base.BaseStore`
says what an operation does in a transaction, and a backend how a transaction begins
and commits.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from errands.core import events as ev
from errands.core.contracts import invariant
from errands.core.faults import fault
from errands.core.states import ErrandView
from errands.errors import StoreError, StoreUnavailable
from errands.store.protocol import AppendCheck, CommitListener

__all__ = ["MAX_BATCH", "GroupCommit", "Op", "Prepared", "Tx", "WriterStats"]

MAX_BATCH = 4096  # operations per group commit
YIELD_EVERY = 16  # staged operations between looks at whether a decision waits (_yield_now)
URGENT_AFTER = 4  # operations a batch stages before a queued decision cuts it short
URGENT_COMPANY = 4  # the bulk's next operations that share the urgent lane's commit
URGENT_SWITCH = 0.0001  # seconds: sys.setswitchinterval while the urgent lane commits
PROBE_FIRST, PROBE_MAX = 0.5, 5.0  # seconds between probes of an unavailable store

log = logging.getLogger("errands.store")

# (event as folded, its stored body, its blob hash or None)
Prepared = tuple[ev.Event, str, str | None]


class _Wake:
    """Put in the writer's queue after a decision: wakes a writer waiting for work."""


WAKE = _Wake()


@dataclass
class WriterStats:
    commits: int = 0
    events: int = 0
    ops: int = 0
    bytes: int = 0  # event bytes written (bodies and blobs)
    max_batch: int = 0
    # seconds the writer spent running operations, writing rows, and committing
    staging_s: float = 0.0
    writing_s: float = 0.0
    committing_s: float = 0.0


@dataclass(slots=True)
class Op:
    """One queued write: ``fn(tx)`` in the writer thread, or (``fn`` None) an append.

    Appends, the hot path, carry their arguments here rather than in a closure: fewer
    objects per append for the garbage collector to trace while it waits.
    """

    fn: Callable[[Tx], Any] | None
    future: asyncio.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    done: threading.Event | None = None  # for callers without an event loop
    result: Any = None
    error: BaseException | None = None
    errand_id: str = ""
    prepared: list[Prepared] | None = None
    owner: str | None = None
    guard: AppendCheck | None = None


class WriteQueue:
    """The writer's queue, in two lanes. An append without an owner -- an outside input: a
    person's decision, message or cancel -- goes to the urgent lane, which the writer
    takes first and commits in a transaction of its own; everything else (the errands'
    own steps, claims, renewals) to the bulk lane. Each lane keeps its order, and an
    errand's appends keep theirs: while an errand has appends queued or uncommitted in
    one lane, its next append goes to the same lane (an outside input queued behind the
    errand's own steps stays behind them). So only appends to different errands, none
    of them acknowledged yet -- concurrent -- change places."""

    __slots__ = ("bulk", "inflight", "lock", "urgent")

    def __init__(self) -> None:
        self.bulk: queue.SimpleQueue[Op | _Wake | None] = queue.SimpleQueue()
        self.urgent: queue.SimpleQueue[Op] = queue.SimpleQueue()
        # errand -> [its appends queued and not yet told, whether in the urgent lane]
        self.inflight: dict[str, list[Any]] = {}
        self.lock = threading.Lock()

    def put(self, op: Op | None) -> None:
        if op is None or op.fn is not None:
            self.bulk.put(op)
            return
        with self.lock:
            held = self.inflight.get(op.errand_id)
            if held is None:
                urgent = op.owner is None
                self.inflight[op.errand_id] = [1, urgent]
            else:
                held[0] += 1
                urgent = held[1]
        if urgent:
            self.urgent.put(op)
            self.bulk.put(WAKE)  # (a writer waiting for work looks at the urgent lane)
        else:
            self.bulk.put(op)

    def done(self, op: Op) -> None:
        """*op*, an append, was answered (the writer thread)."""
        with self.lock:
            held = self.inflight.get(op.errand_id)
            if held is not None:
                held[0] -= 1
                if not held[0]:
                    del self.inflight[op.errand_id]


@dataclass
class Tx:
    """What one batch accumulates before its single commit (``conn``: the backend's)."""

    conn: Any
    now: float
    rows: list[tuple[str, int, str, float, str, str | None]] = field(default_factory=list)
    blobs: dict[str, str] = field(default_factory=dict)
    dirty: dict[str, ErrandView] = field(default_factory=dict)
    wakeups: list[str] = field(default_factory=list)
    appended: list[tuple[str, int]] = field(default_factory=list)
    body_bytes: int = 0


class GroupCommit(abc.ABC):
    """The writer thread and its batches. Start it with :meth:`_start_writer` once the
    backend's connections are open."""

    _queue_class: type[WriteQueue] = WriteQueue
    # the interpreter's thread switch interval while the urgent lane commits (None: as is)
    urgent_switch: float | None = URGENT_SWITCH

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.stats = WriterStats()
        self._queue = self._queue_class()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, CommitListener]] = []
        self._untold: list[Op] = []  # committed, callers not told yet (writer thread only)
        self._carried: list[Op] = []  # a batch's rest, cut short for a decision: next first
        self._carried_urgent = False  # is it the urgent lane's batch's rest?
        self._ran = 0  # how many operations of its batch the last transaction ran
        self._urgent_now = False  # committing the urgent lane (not cut short for it)
        self._switch_before: float | None = None  # the switch interval _hurry replaced
        self._closed = False
        # why the store cannot write (the last failure), until a commit writes again
        self.unavailable: StoreUnavailable | None = None
        self.unavailable_since = 0.0  # when it started (the clock's time)
        self._probe_delay = PROBE_FIRST
        self._next_probe = 0.0  # (time.monotonic) when to probe an unavailable store next
        # called in the writer thread with each commit's seconds (errands.observe's metric)
        self.commit_timer: Callable[[float], None] | None = None
        self._thread = threading.Thread(target=self._run, name="errands-store-writer", daemon=True)

    def _start_writer(self) -> None:
        self._thread.start()

    # -- what a subclass provides (all run in the writer thread) --------------------------

    @abc.abstractmethod
    def _begin(self) -> Any:
        """Start the batch's transaction; return the connection it runs on."""

    @abc.abstractmethod
    def _commit(self, conn: Any) -> None: ...

    @abc.abstractmethod
    def _rollback(self, conn: Any) -> None: ...

    def _written_elsewhere(self, conn: Any) -> bool:
        """Has another process committed since this writer's last transaction?"""
        return True

    def _after_batch(self) -> None:
        """After a batch committed and its callers were told (housekeeping)."""
        return None

    def _unavailable(self, exc: BaseException) -> StoreUnavailable | None:
        """*exc*, a failed transaction's, as the condition of the world it reports (a
        full disk, a held lock, an I/O error); None if it is not one."""
        return exc if isinstance(exc, StoreUnavailable) else None

    def _wrote(self, conn: Any) -> bool:
        """Did the transaction that just committed write anything (not only read)?"""
        return True

    def _cleared(self, condition: StoreUnavailable, conn: Any) -> bool:
        """A batch committed: is *condition* over? A held lock is (this commit had the
        lock); a full disk or an I/O error once a commit wrote something -- a commit
        that only read proves nothing."""
        return condition.condition == "locked" or self._wrote(conn)

    def _probe_write(self, tx: Tx) -> None:
        """Write something that reaches the disk and leaves nothing behind (a probe of
        an unavailable store)."""
        return None

    def _yield_now(self) -> bool:
        """Does a writer that must not wait (another process's, with a person's decision)
        wait for this one? Asked every ``YIELD_EVERY`` operations while a batch stages:
        the batch then commits what it staged and its rest goes first in the next."""
        return False

    def _retry_alone(self, exc: StoreUnavailable) -> bool:
        """Is a batch that failed with *exc* worth retrying one operation at a time? Only
        on a full disk (one large operation may be what does not fit); a held lock or an
        I/O error would fail each again, after as long a wait."""
        return exc.condition == "disk_full"

    @abc.abstractmethod
    def _append_in_tx(self, tx: Tx, op: Op) -> list[int]:
        """Stage an append (an :class:`Op` without ``fn``) in the batch."""

    @abc.abstractmethod
    def _flush(self, tx: Tx) -> None:
        """Write what the batch staged."""

    @abc.abstractmethod
    def _committed_tx(self, tx: Tx) -> None:
        """The batch committed (before its callers are told)."""

    @abc.abstractmethod
    def _forget(self) -> None:
        """Drop every cache (a failed transaction, or another process wrote)."""

    @abc.abstractmethod
    def _close_backend(self) -> None: ...

    # -- the machinery ---------------------------------------------------------------------

    def subscribe(self, listener: CommitListener) -> None:
        """Call *listener(errand_id, last_seq)* on this event loop after each commit."""
        self._listeners.append((asyncio.get_running_loop(), listener))

    async def probe(self) -> None:
        """Write something through the writer and take it away again, in one commit
        (:meth:`_probe_write`): raises what a write would raise now -- a
        :class:`~errands.errors.StoreUnavailable` when the store cannot write. (The
        server's ``/readyz``.)"""
        await self._submit(self._probe_write)

    async def _submit(self, fn: Callable[[Tx], Any]) -> Any:
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(Op(fn, future, loop))
        return await future

    def _run(self) -> None:
        get, get_nowait = self._queue.bulk.get, self._queue.bulk.get_nowait
        urgent = self._queue.urgent
        while True:
            if self.unavailable is not None and time.monotonic() >= self._next_probe:
                self._probe()  # (also between batches that only read: claims, renewals)
            if self._carried_urgent or not urgent.empty():  # decisions first, told at once
                self._urgent_batch()
                continue
            if self._carried:  # the rest of a batch cut short: before anything newer
                batch, self._carried = self._carried, []
                self._fill(batch)
                continue
            try:
                first = get_nowait()
            except queue.Empty:  # nothing to overlap with: tell the last batch's callers now
                self._tell()
                if self.unavailable is None:
                    first = get()
                else:  # wait for work until the next probe is due
                    try:
                        first = get(timeout=max(0.0, self._next_probe - time.monotonic()))
                    except queue.Empty:
                        continue
            if first is None:
                while not urgent.empty():
                    self._urgent_batch()
                self._tell()
                return
            if isinstance(first, _Wake):
                continue
            self._fill([first])

    def _urgent_batch(self) -> None:
        """Commit what waits in the urgent lane, and tell its callers at once. The rest
        of an urgent batch cut short goes first; up to ``URGENT_COMPANY`` of the bulk's
        next operations (in their order: a cut batch's rest first) share the commit, so
        that operations queued together still share one."""
        batch: list[Op] = []
        if self._carried_urgent:
            batch, self._carried, self._carried_urgent = self._carried, [], False
        get_nowait = self._queue.urgent.get_nowait
        with contextlib.suppress(queue.Empty):
            while len(batch) < MAX_BATCH:
                batch.append(get_nowait())
        company = min(URGENT_COMPANY, len(self._carried))
        batch.extend(self._carried[:company])
        del self._carried[:company]
        bulk = self._queue.bulk
        while company < URGENT_COMPANY and not self._carried:
            try:
                nxt = bulk.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                bulk.put(None)  # (stop after this batch)
                break
            if not isinstance(nxt, _Wake):
                batch.append(nxt)
                company += 1
        self._urgent_now = True
        try:
            self._commit_batch(batch)
            self._tell()
        finally:
            self._urgent_now = False
            self._unhurry()

    def _hurry(self) -> None:
        """The urgent lane holds the write lock: switch threads every ``urgent_switch``
        seconds until it is done, so the writer gets the interpreter back at once after
        each SQL call and the sync. (Not while it waits for the lock: a short interval
        then only costs the other threads switches.)"""
        switch = self.urgent_switch
        if switch is None or self._switch_before is not None:
            return
        before = sys.getswitchinterval()
        if switch < before:
            self._switch_before = before
            sys.setswitchinterval(switch)

    def _unhurry(self) -> None:
        before, self._switch_before = self._switch_before, None
        if before is not None and sys.getswitchinterval() == self.urgent_switch:
            sys.setswitchinterval(before)

    def _fill(self, batch: list[Op]) -> None:
        """Add what is queued to *batch* (up to ``MAX_BATCH``) and commit it."""
        get_nowait = self._queue.bulk.get_nowait
        while len(batch) < MAX_BATCH:
            try:
                nxt = get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.bulk.put(None)  # stop after this batch
                break
            if isinstance(nxt, _Wake):
                continue
            batch.append(nxt)
        self._commit_batch(batch)

    def _tell(self) -> None:
        """Resolve the futures of the last committed batch (see :meth:`_run_tx`)."""
        if self._untold:
            self._resolve(self._untold)
            self._untold = []

    def _commit_batch(self, batch: list[Op]) -> None:
        try:
            self._ran = len(batch)
            self._run_tx(batch)
            if self._ran < len(batch):  # cut short for a decision: the rest goes next
                self._carried = batch[self._ran :]
                self._carried_urgent = self._urgent_now  # (an urgent batch's rest: first)
                batch = batch[: self._ran]
            self._untold = batch  # told just before the next commit, or when idle
            self._after_batch()
            return
        except Exception as exc:  # a batch-level failure: retry each op on its own
            self._tell()
            self._forget()
            condition = self._unavailable(exc)
            if condition is not None:
                self._record(condition)
            if len(batch) > 1 and (condition is None or self._retry_alone(condition)):
                for op in batch:
                    op.result = None
                    op.error = None
                    self._commit_batch([op])
                return
            for op in batch:  # (nothing of the batch was written)
                op.result = None
                op.error = exc if condition is None else condition
        self._resolve(batch)

    def _probe(self) -> None:
        """While the store cannot write, try a write now and then (backing off), so that
        the condition is forgotten when it clears even if nothing else writes."""
        self._probe_delay = min(2 * self._probe_delay, PROBE_MAX)
        self._next_probe = time.monotonic() + self._probe_delay
        self._commit_batch([Op(self._probe_write, done=threading.Event())])

    def _record(self, condition: StoreUnavailable) -> None:
        """The store cannot write: remember why (and since when, if it is new)."""
        if self.unavailable is None:
            self.unavailable_since = self.clock()
            self._probe_delay = PROBE_FIRST
            self._next_probe = time.monotonic() + PROBE_FIRST
            log.info("the store cannot write: %s", condition)  # (info: a CLI shows the error)
        self.unavailable = condition

    def _recovered(self, conn: Any) -> None:
        """A batch committed: forget the condition if it is over (:meth:`_cleared`)."""
        gone = self.unavailable
        if gone is None or not self._cleared(gone, conn):
            return
        self.unavailable = None
        log.info(
            "the store writes again (it could not for %.0f s: %s)",
            self.clock() - self.unavailable_since,
            gone.condition,
        )

    def _run_tx(self, batch: list[Op]) -> None:
        """One batch in one transaction. It runs every operation, unless a decision
        cuts it short -- one queued in the urgent lane (after ``URGENT_AFTER`` operations,
        unless this is the urgent lane's batch) or another process's (:meth:`_yield_now`):
        ``_ran`` says how many it ran then.

        The previous batch's callers are told (their futures resolved) only once this
        batch is written and about to commit: their tasks then run on the event loop
        while this thread waits for the commit's sync with the GIL released, instead
        of contending for the GIL with this thread's staging and row writing. Nothing
        is acknowledged before its own commit; the wait is only as long as one batch's
        staging (and when the queue is empty, there is none).
        """
        conn = self._begin()
        if self._urgent_now:
            self._hurry()
        try:
            t0 = time.perf_counter()
            if self._written_elsewhere(conn):
                self._forget()  # someone else committed: our caches may be stale
            tx = Tx(conn=conn, now=self.clock())
            rows = tx.rows
            ran = len(batch)
            calm = _calm if self._urgent_now else self._queue.urgent.empty
            for i, op in enumerate(batch):
                if i and (
                    (i >= URGENT_AFTER and not calm())
                    or (not i % YIELD_EVERY and self._yield_now())
                ):
                    ran = i  # (a person's decision waits for this transaction)
                    break
                staged = len(rows)
                try:
                    op.result = self._append_in_tx(tx, op) if op.fn is None else op.fn(tx)
                except StoreError as exc:
                    # refused before it staged anything: the rest of the batch goes on
                    invariant(len(rows) == staged, "a refused operation staged nothing")
                    op.error = exc
            t1 = time.perf_counter()
            self._flush(tx)
            t2 = time.perf_counter()
            self._tell()
            fault("mid_batch")
            self._commit(conn)
            t3 = time.perf_counter()
        except BaseException:
            with contextlib.suppress(Exception):
                self._rollback(conn)
            raise
        if self.unavailable is not None:
            self._recovered(conn)
        stats = self.stats
        stats.commits += 1
        stats.ops += ran
        stats.events += len(rows)
        stats.bytes += tx.body_bytes
        stats.max_batch = max(stats.max_batch, ran)
        self._committed_tx(tx)
        stats.staging_s += t1 - t0
        stats.writing_s += t2 - t1
        stats.committing_s += t3 - t2
        if self.commit_timer is not None:
            self.commit_timer(t3 - t2)
        self._ran = ran
        self._after_commit(tx)

    def announce(self, changed: dict[str, int]) -> None:
        """Tell the listeners of commits another process made (errand id -> last seq)."""
        if changed:
            for loop, listener in self._listeners:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_notify, listener, dict(changed))

    def _after_commit(self, tx: Tx) -> None:
        if tx.appended and self._listeners:
            latest: dict[str, int] = {}
            for errand_id, seq in tx.appended:
                latest[errand_id] = seq
            for loop, listener in self._listeners:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_notify, listener, latest)

    def _resolve(self, batch: list[Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Op]] = {}
        answered = self._queue.done
        for op in batch:
            if op.fn is None:
                answered(op)
            if op.done is not None:
                op.done.set()
                continue
            assert op.loop is not None
            ops = by_loop.get(op.loop)
            if ops is None:
                by_loop[op.loop] = [op]
            else:
                ops.append(op)
        for loop, ops in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, ops)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()
        self._close_backend()


def _calm() -> bool:
    return True


def _settle(ops: list[Op]) -> None:
    for op in ops:
        fut = op.future
        if fut is None or fut.done():
            continue
        if op.error is not None:
            fut.set_exception(op.error)
        else:
            fut.set_result(op.result)


def _notify(listener: CommitListener, latest: dict[str, int]) -> None:
    for errand_id, seq in latest.items():
        listener(errand_id, seq)
