"""The SQLite store: one file, WAL, ``synchronous=FULL``, group commit.

Writes go through one writer thread. Callers on the event loop enqueue an operation
and await a future; the writer drains everything queued, runs it in *one*
transaction with *one* fsync, and only then resolves the futures -- so an append
returns only once its event is on disk, and a thousand concurrent errands share a
commit. Reads use per-thread connections (WAL lets them run beside the writer).

The ``errands`` table is a projection: a cache of :func:`errands.core.states.fold` over
the log, updated in the same transaction as the events and rebuildable from them
(:meth:`SQLiteStore.rebuild_projections`). Its queryable columns (state, title, times,
sequence, parent, pending count) are real columns; the ``view`` column holds only the
rest of the :class:`~errands.core.states.ErrandView`, with default values left out, so that
the row rewritten for every errand in every batch stays small.

The writer thread is the one serial part, so what it does per event is kept small:
callers serialise and redact their events before they enqueue them; a projection row
whose indexed columns did not change is updated without touching the indexes, and its
JSON is not re-dumped when its fields did not change; WAL checkpoints run in a thread
of their own; and a batch's callers are told it committed while the *next* batch waits
for its fsync, so that their tasks run while the writer does not need the GIL. See
``docs/store.md`` for the design and the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import operator
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errands.core import events as ev
from errands.core.contracts import ensure, invariant, require
from errands.core.faults import fault
from errands.core.states import RUNNABLE, ErrandState, ErrandView, PendingApproval, apply
from errands.store import spend
from errands.store.base import ErrandExists, Guard, LeaseLost, NotFound, StoredEvent, StoreError
from errands.store.migrations import migrate
from errands.store.redact import Redactor

__all__ = ["BLOB_THRESHOLD", "SQLiteStore", "WriterStats"]

BLOB_THRESHOLD = 16 * 1024  # event bodies above this go to content-addressed blobs
MAX_BATCH = 4096  # operations per group commit
PURGED = "[purged]"
WRITER_CACHE_KIB = 64 * 1024  # the writer's page cache: the hot leaf pages of every errand
VIEW_CACHE_MAX = 20_000  # views the writer keeps in memory
# Checkpoints run in their own thread, off the writer's path (see _checkpointer).
CHECKPOINT_INTERVAL = 0.5  # seconds between two checkpoints at most
WAL_RESTART_FRAMES = 16_384  # past this many WAL frames (64 MiB), restart the WAL
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # what a restarted WAL file is truncated back to
BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write lock

# The projection's columns; the ``view`` column holds the other fields of ErrandView.
_BOOKED = frozenset({"model_responded", "state_changed"})  # events that touch the budget tables
_COLUMNS = ("id", "state", "title", "created_at", "updated_at", "last_seq", "parent")
_COLUMN_SET = set(_COLUMNS)
# The rest, which the ``view`` column holds (as JSON, defaults left out).
_EXTRA_FIELDS = tuple(f for f in ErrandView.model_fields if f not in _COLUMN_SET)
_extras = operator.attrgetter(*_EXTRA_FIELDS)
_SELECT_VIEW = (
    "SELECT id, state, title, created_at, updated_at, last_seq, parent, view FROM errands"
)
_UPSERT_VIEW = (
    "INSERT INTO errands(id, state, title, created_at, updated_at, last_seq, parent,"
    " pending_count, view) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
    " state=excluded.state, title=excluded.title, created_at=excluded.created_at,"
    " updated_at=excluded.updated_at, last_seq=excluded.last_seq, parent=excluded.parent,"
    " pending_count=excluded.pending_count, view=excluded.view"
)
# When state and pending_count are unchanged: leave the indexed columns (and so the
# indexes) alone. This is the common case -- a running errand logging its steps.
_UPDATE_VIEW = "UPDATE errands SET title=?, updated_at=?, last_seq=?, parent=?, view=? WHERE id=?"

# (event as folded, its stored body, its blob hash or None)
_Prepared = tuple[ev.Event, str, str | None]


@dataclass
class WriterStats:
    commits: int = 0
    events: int = 0
    ops: int = 0
    bytes: int = 0  # event bytes written (bodies and blobs)
    max_batch: int = 0
    # seconds the writer spent running operations, writing rows, and committing (fsync)
    staging_s: float = 0.0
    writing_s: float = 0.0
    committing_s: float = 0.0


@dataclass(slots=True)
class _Op:
    """One queued write: ``fn(tx)`` in the writer thread, or (``fn`` None) an append.

    Appends, the hot path, carry their arguments here rather than in a closure: fewer
    objects per append for the garbage collector to trace while it waits.
    """

    fn: Callable[[_Tx], Any] | None
    future: asyncio.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    done: threading.Event | None = None  # for callers without an event loop
    result: Any = None
    error: BaseException | None = None
    errand_id: str = ""
    prepared: list[_Prepared] | None = None
    owner: str | None = None
    guard: Guard | None = None


@dataclass
class _Tx:
    """What one batch accumulates before its single commit."""

    conn: sqlite3.Connection
    now: float
    rows: list[tuple[str, int, str, float, str, str | None]] = field(default_factory=list)
    blobs: dict[str, str] = field(default_factory=dict)
    dirty: dict[str, ErrandView] = field(default_factory=dict)
    wakeups: list[str] = field(default_factory=list)
    appended: list[tuple[str, int]] = field(default_factory=list)
    body_bytes: int = 0


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteStore:
    """The default store: ``SQLiteStore(path)`` opens (and migrates) the file; close it
    with :meth:`close`."""

    def __init__(
        self,
        path: str | Path,
        *,
        redactor: Redactor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.redact = redactor or Redactor()
        self.clock = clock
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[str, int], None]]] = []
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # writer-thread state: caches, dropped whenever a transaction fails or another
        # connection has written (PRAGMA data_version)
        self._views: dict[str, ErrandView] = {}
        # errand -> what its projection row on disk holds: (state, pending count), and the
        # values of the view column's fields with their JSON (to skip dumping it again)
        self._written: dict[str, tuple[tuple[str, int], tuple[Any, ...], str]] = {}
        self._held: dict[str, str] = {}  # errand -> owner, leases this writer knows are held
        # errands with budget holds this writer made: only their responses and state
        # changes need to touch the holds (one left by a dead process expires, or the
        # run that resumes its errand replaces it)
        self._reserved: set[str] = set()
        self._data_version = -1
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._wconn = _connect(self.path)
        try:
            # purged content is overwritten on disk, not just unlinked
            self._wconn.execute("PRAGMA secure_delete = ON")
            self._wconn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            # the checkpointer thread checkpoints, not the writer's COMMIT
            self._wconn.execute("PRAGMA wal_autocheckpoint = 0")
            self._wconn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            migrate(self._wconn)
            # the writer waits for other processes' locks itself (see _begin)
            self._wconn.execute("PRAGMA busy_timeout = 0")
            self._cconn = _connect(self.path)
        except BaseException:
            self._wconn.close()
            raise
        self._untold: list[_Op] = []  # committed, callers not told yet (writer thread only)
        self._restart_wal = False  # set by the checkpointer when the WAL has grown too big
        self._committed = threading.Event()  # set after each commit: wakes the checkpointer
        self._stopping = threading.Event()  # set by close: stops the checkpointer
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="errands-store-writer", daemon=True)
        self._checkpoint_thread = threading.Thread(
            target=self._checkpointer, name="errands-store-checkpointer", daemon=True
        )
        self._thread.start()
        self._checkpoint_thread.start()

    # ---------------------------------------------------------------- plumbing

    def subscribe(self, listener: Callable[[str, int], None]) -> None:
        """Call *listener(errand_id, last_seq)* on this event loop after each commit."""
        self._listeners.append((asyncio.get_running_loop(), listener))

    async def _submit(self, fn: Callable[[_Tx], Any]) -> Any:
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Op(fn, future, loop))
        return await future

    def submit_sync(self, fn: Callable[[_Tx], Any]) -> Any:
        """Run a write operation from a thread with no event loop (waits for durability)."""
        if self._closed:
            raise StoreError("the store is closed")
        op = _Op(fn, done=threading.Event())
        self._queue.put(op)
        assert op.done is not None
        op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            try:
                first = get_nowait()
            except queue.Empty:  # nothing to overlap with: tell the last batch's callers now
                self._tell()
                first = get()
            if first is None:
                self._tell()
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            self._commit_batch(batch)

    def _checkpointer(self) -> None:
        """Copy committed WAL frames into the database file, beside the writer.

        SQLite's automatic checkpoint would run inside the writer's COMMIT, holding up
        every append of the next batch. Here a PASSIVE checkpoint (which never blocks
        the writer) runs after commits, at most every ``CHECKPOINT_INTERVAL``. Under
        continuous load the WAL is never found fully copied when a transaction starts,
        so it is never reset and keeps growing; past ``WAL_RESTART_FRAMES`` this thread
        asks the writer to restart it (``_restart_wal``), which the writer does between
        two batches, when little is left to copy. (A RESTART checkpoint from this
        thread would have to win the write lock from a writer that never pauses.)
        Durability is unaffected: a commit is durable once its WAL frames are synced,
        before any checkpoint.
        """
        conn = self._cconn
        try:
            while not self._stopping.is_set():
                if not self._committed.wait(timeout=1.0):
                    continue
                if self._stopping.wait(CHECKPOINT_INTERVAL):  # (a pause close can cut short)
                    return
                self._committed.clear()
                try:
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    continue  # busy or interrupted: the next commit tries again
                if frames >= WAL_RESTART_FRAMES:
                    self._restart_wal = True
        finally:
            conn.close()

    def _tell(self) -> None:
        """Resolve the futures of the last committed batch (see ``_run_tx``)."""
        if self._untold:
            self._resolve(self._untold)
            self._untold = []

    def _commit_batch(self, batch: list[_Op]) -> None:
        conn = self._wconn
        try:
            self._run_tx(conn, batch)
            self._untold = batch  # told just before the next COMMIT, or when idle
            if self._restart_wal:
                self._restart()
            return
        except Exception as exc:  # a batch-level failure: retry each op on its own
            self._tell()
            self._forget()
            if len(batch) > 1:
                for op in batch:
                    op.result = None
                    op.error = None
                    self._commit_batch([op])
                return
            batch[0].result = None
            batch[0].error = exc
        self._resolve(batch)

    def _restart(self) -> None:
        """Checkpoint what is left of the WAL, so that the next transaction restarts it."""
        self._tell()  # (they are committed; this may take a moment)
        try:
            busy, _, _ = self._wconn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error:
            return  # another checkpoint is running: after the next batch, then
        if not busy:
            self._restart_wal = False

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting (up to ``BUSY_TIMEOUT``) while another process writes."""
        deadline = 0.0
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                self._tell()  # don't keep committed callers waiting on another's lock
                now = time.monotonic()
                if not deadline:
                    deadline = now + BUSY_TIMEOUT
                elif now >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _run_tx(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        """One batch in one transaction.

        The previous batch's callers are told (their futures resolved) only once this
        batch is written and about to COMMIT: their tasks then run on the event loop
        while this thread waits for the fsync with the GIL released, instead of
        contending for the GIL with this thread's staging and row writing. Nothing is
        acknowledged before its own COMMIT; the wait is only as long as one batch's
        staging (and when the queue is empty, there is none).
        """
        self._begin(conn)
        try:
            t0 = time.perf_counter()
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._forget()  # someone else committed: our caches may be stale
                self._data_version = version
            tx = _Tx(conn=conn, now=self.clock())
            rows = tx.rows
            for op in batch:
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
            conn.execute("COMMIT")
            t3 = time.perf_counter()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        stats = self.stats
        stats.commits += 1
        stats.ops += len(batch)
        stats.events += len(rows)
        stats.bytes += tx.body_bytes
        stats.max_batch = max(stats.max_batch, len(batch))
        # waiting costs nothing: an errand that stopped (waiting, finished) leaves the
        # writer's caches; its row is read back if it is written to again
        for errand_id, view in tx.dirty.items():
            if view.state not in RUNNABLE:
                self._views.pop(errand_id, None)
                self._written.pop(errand_id, None)
        stats.staging_s += t1 - t0
        stats.writing_s += t2 - t1
        stats.committing_s += t3 - t2
        self._committed.set()
        self._after_commit(tx)

    def _flush(self, tx: _Tx) -> None:
        conn = tx.conn
        if tx.blobs:
            conn.executemany(
                "INSERT OR IGNORE INTO blobs(hash, data) VALUES (?, ?)", list(tx.blobs.items())
            )
        if tx.rows:
            conn.executemany(
                "INSERT INTO events(errand_id, seq, type, at, body, blob) VALUES (?,?,?,?,?,?)",
                tx.rows,
            )
        if tx.dirty:
            upserts: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            written = self._written
            for errand_id, view in tx.dirty.items():
                key = (view.state.value, len(view.pending))
                extras = _extras(view)
                before = written.get(errand_id)
                if before is not None and before[1] == extras:
                    data = before[2]  # apply replaces values, never mutates them: unchanged
                else:
                    data = view.model_dump_json(exclude=_COLUMN_SET, exclude_defaults=True)
                written[errand_id] = (key, extras, data)
                if before is not None and before[0] == key:
                    updates.append(
                        (view.title, view.updated_at, view.last_seq, view.parent, data, errand_id)
                    )
                else:
                    upserts.append(
                        (
                            errand_id,
                            key[0],
                            view.title,
                            view.created_at,
                            view.updated_at,
                            view.last_seq,
                            view.parent,
                            key[1],
                            data,
                        )
                    )
            if upserts:
                conn.executemany(_UPSERT_VIEW, upserts)
            if updates:
                conn.executemany(_UPDATE_VIEW, updates)
        if tx.wakeups:
            conn.executemany(
                "INSERT INTO wakeups(errand_id, at) VALUES (?, ?)",
                [(e, tx.now) for e in tx.wakeups],
            )

    def _after_commit(self, tx: _Tx) -> None:
        if tx.appended and self._listeners:
            latest: dict[str, int] = {}
            for errand_id, seq in tx.appended:
                latest[errand_id] = seq
            for loop, listener in self._listeners:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_notify, listener, latest)

    def _resolve(self, batch: list[_Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        for op in batch:
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

    def _forget(self) -> None:
        self._views.clear()
        self._written.clear()
        self._held.clear()

    # ------------------------------------------------------- writer-side helpers

    def _prepare(self, event: ev.Event) -> _Prepared:
        """Serialise and redact one event (in the caller's thread, not the writer's).

        When redaction changed the body, the event folded into the projection is the
        one parsed back from the redacted body: the projection is a fold of the log as
        stored, and a secret reaches neither.
        """
        body = event.model_dump_json()
        if self.redact:
            redacted = self.redact(body)
            if redacted != body:
                body = redacted
                event = ev.load_event(body)
        blob = None
        if len(body) > BLOB_THRESHOLD:
            blob = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
        return event, body, blob

    def _view_for(self, tx: _Tx, errand_id: str) -> ErrandView:
        view = tx.dirty.get(errand_id)
        if view is not None:
            return view
        view = self._views.get(errand_id)
        if view is not None:
            return view
        row = tx.conn.execute(_SELECT_VIEW + " WHERE id = ?", (errand_id,)).fetchone()
        if row is None:
            raise NotFound(f"no errand {errand_id}")
        view = _view_from_row(row)
        self._cache(view)
        return view

    def _cache(self, view: ErrandView) -> None:
        if len(self._views) >= VIEW_CACHE_MAX:
            self._views.clear()
            self._written.clear()
        self._views[view.id] = view

    def _check_lease(self, tx: _Tx, errand_id: str, owner: str) -> None:
        if self._held.get(errand_id) == owner:
            return
        row = tx.conn.execute(
            "SELECT owner FROM leases WHERE errand_id = ?", (errand_id,)
        ).fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(f"errand {errand_id} is owned by another process now")
        self._held[errand_id] = owner

    def _stage(self, tx: _Tx, view: ErrandView, prepared: Sequence[_Prepared]) -> list[int]:
        errand_id = view.id
        rows = tx.rows
        seqs: list[int] = []
        for event, body, blob in prepared:
            seq = view.last_seq + 1
            if blob is None:
                rows.append((errand_id, seq, event.type, event.at, body, None))
            else:
                tx.blobs[blob] = body
                rows.append((errand_id, seq, event.type, event.at, "", blob))
            tx.body_bytes += len(body)
            apply(view, seq, event)
            seqs.append(seq)
            if event.type in _BOOKED:
                self._book(tx, view, event)
        tx.dirty[errand_id] = view
        if self._listeners:
            tx.appended.append((errand_id, seqs[-1]))
        return seqs

    def _book(self, tx: _Tx, view: ErrandView, event: ev.Event) -> None:
        """Keep the budget tables in step with the log, in the same transaction."""
        conn = tx.conn
        if isinstance(event, ev.ModelResponded):
            if view.id in self._reserved:
                spend.settle(conn, spend.hold_id(view.id, event.request_seq))
            cost = spend.nanos(event.usage.cost_usd)
            if cost:

                def parent_of(errand_id: str) -> str | None:
                    if errand_id == view.id:
                        return view.parent
                    try:
                        return self._view_for(tx, errand_id).parent
                    except NotFound:
                        return None

                spend.add(conn, spend.scopes_of(view.id, event.at, parent_of), cost)
        elif view.id in self._reserved:  # it changed state: no call of its is in flight
            spend.release(conn, view.id)
            self._reserved.discard(view.id)

    # ------------------------------------------------------------------ writes

    async def create(self, errand_id: str, created: ev.ErrandCreated) -> None:
        require(bool(errand_id), "an errand id")
        prepared = [self._prepare(created)]

        def op(tx: _Tx) -> None:
            exists = (
                errand_id in self._views
                or errand_id in tx.dirty
                or tx.conn.execute("SELECT 1 FROM errands WHERE id = ?", (errand_id,)).fetchone()
            )
            if exists:
                raise ErrandExists(f"errand {errand_id} exists already")
            view = ErrandView(id=errand_id)
            self._stage(tx, view, prepared)
            self._cache(view)

        await self._submit(op)

    async def append(
        self,
        errand_id: str,
        events: Sequence[ev.Event],
        *,
        owner: str | None = None,
        guard: Guard | None = None,
    ) -> list[int]:
        require(len(events) > 0, "at least one event")
        prepared: list[_Prepared] = []
        for event in events:
            require(event.type != "errand_created", "errand_created only through create()")
            prepared.append(self._prepare(event))
        # (the hot path: no closure, and _submit inlined -- fewer objects per append)
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._queue.put(
            _Op(None, future, loop, None, None, None, errand_id, prepared, owner, guard)
        )
        return await future

    def _append_in_tx(self, tx: _Tx, op: _Op) -> list[int]:
        errand_id, prepared, owner, guard = op.errand_id, op.prepared, op.owner, op.guard
        assert prepared is not None
        view = self._view_for(tx, errand_id)
        if owner is not None:
            self._check_lease(tx, errand_id, owner)
        if guard is not None:
            guard(view)
        first = view.last_seq + 1
        seqs = self._stage(tx, view, prepared)
        ensure(
            seqs[0] == first and seqs[-1] == first + len(prepared) - 1 == view.last_seq,
            "contiguous sequence numbers",
        )
        if owner is None:
            tx.wakeups.append(errand_id)
        return seqs

    async def acquire(self, errand_id: str, owner: str, ttl: float) -> bool:
        def op(tx: _Tx) -> bool:
            return self._acquire(tx, errand_id, owner, ttl)

        result: bool = await self._submit(op)
        return result

    def _acquire(self, tx: _Tx, errand_id: str, owner: str, ttl: float) -> bool:
        cur = tx.conn.execute(
            "INSERT INTO leases(errand_id, owner, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT(errand_id) DO UPDATE SET owner = excluded.owner,"
            " expires_at = excluded.expires_at"
            " WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
            (errand_id, owner, tx.now + ttl, tx.now),
        )
        if cur.rowcount == 1:
            self._held[errand_id] = owner
            return True
        if self._held.get(errand_id) == owner:
            del self._held[errand_id]
        return False

    async def claim_runnable(self, owner: str, ttl: float, limit: int) -> list[str]:
        def op(tx: _Tx) -> list[str]:
            rows = tx.conn.execute(
                "SELECT e.id FROM errands e LEFT JOIN leases l ON l.errand_id = e.id"
                " WHERE e.state IN ('queued', 'running')"
                " AND (l.owner IS NULL OR l.expires_at <= ?) ORDER BY e.updated_at LIMIT ?",
                (tx.now, limit),
            ).fetchall()
            return [r[0] for r in rows if self._acquire(tx, r[0], owner, ttl)]

        result: list[str] = await self._submit(op)
        return result

    async def renew(self, owner: str, ttl: float) -> set[str]:
        def op(tx: _Tx) -> set[str]:
            tx.conn.execute(
                "UPDATE leases SET expires_at = ? WHERE owner = ?", (tx.now + ttl, owner)
            )
            spend.extend(tx.conn, owner, tx.now + ttl)
            held = {
                r[0]
                for r in tx.conn.execute("SELECT errand_id FROM leases WHERE owner = ?", (owner,))
            }
            for errand_id in [e for e, o in self._held.items() if o == owner and e not in held]:
                del self._held[errand_id]
            return held

        result: set[str] = await self._submit(op)
        return result

    async def release(self, errand_id: str, owner: str) -> None:
        def op(tx: _Tx) -> None:
            tx.conn.execute(
                "DELETE FROM leases WHERE errand_id = ? AND owner = ?", (errand_id, owner)
            )
            if self._held.get(errand_id) == owner:
                del self._held[errand_id]

        await self._submit(op)

    async def reserve(
        self,
        errand_id: str,
        request_seq: int,
        amount_usd: float,
        *,
        daily_usd: float | None,
        ttl: float,
    ) -> spend.Refusal | None:
        """Reserve *amount_usd* for the model call of request *request_seq*, against the
        daily cap and the budget of the errand and of each of its ancestors; or say why
        not (nothing written). Settled by the transaction that logs the response."""
        require(amount_usd >= 0 and ttl > 0, "a non-negative amount and a positive ttl")

        def op(tx: _Tx) -> spend.Refusal | None:
            view = self._view_for(tx, errand_id)
            caps = []
            if daily_usd is not None:
                caps.append(spend.Cap(spend.DAY, spend.nanos(daily_usd), "the daily budget"))
            current: ErrandView | None = view
            depth = 0
            while current is not None and depth < spend.MAX_DEPTH:
                if current.budget_usd is not None:
                    what = (
                        "this errand's budget"
                        if current is view
                        else (f"the budget of errand {current.id} (an ancestor)")
                    )
                    caps.append(
                        spend.Cap(
                            spend.tree_scope(current.id), spend.nanos(current.budget_usd), what
                        )
                    )
                try:
                    current = self._view_for(tx, current.parent) if current.parent else None
                except NotFound:
                    current = None
                depth += 1
            refusal = spend.reserve(
                tx.conn,
                spend.hold_id(errand_id, request_seq),
                caps,
                spend.nanos(amount_usd),
                tx.now,
                tx.now + ttl,
            )
            if refusal is None and caps:
                self._reserved.add(errand_id)
            return refusal

        result: spend.Refusal | None = await self._submit(op)
        return result

    def budget_sync(self, daily_usd: float | None = None) -> dict[str, Any]:
        """Today's spend and reservations, for people (``errands cost``, the API)."""
        now = self.clock()
        reader = self._reader()
        row = reader.execute(
            "SELECT nanos FROM spend WHERE scope = ?", (spend.day_scope(now),)
        ).fetchone()
        spent = int(row[0]) if row else 0
        held, calls = spend.held_total(reader, spend.DAY, now)
        if daily_usd is None:  # no daily cap: no day holds either; count every errand's
            held, calls = spend.held_all(reader, now)
        return {
            "day": spend.day_scope(now).removeprefix("day:"),
            "spent_usd": spend.usd(spent),
            "reserved_usd": spend.usd(held),
            "calls_in_flight": calls,
            "daily_usd": daily_usd,
            "left_usd": None
            if daily_usd is None
            else max(0.0, daily_usd - spend.usd(spent + held)),
        }

    async def purge(self, errand_id: str) -> None:
        """Remove the errand's private content from the log (and from disk pages).

        Every event is rewritten (upgraded to the current version first) with its
        private text, arguments and free-text fields replaced; orphaned blobs are
        deleted (``secure_delete`` zeroes the freed space); the projection is refolded
        from the rewritten log; and the WAL is checkpointed and truncated, so that the
        old page images do not survive in it either.
        """

        def op(tx: _Tx) -> None:
            self._view_for(tx, errand_id)  # NotFound before anything is written
            conn = tx.conn
            rows = conn.execute(
                "SELECT e.seq, e.body, e.blob, b.data FROM events e LEFT JOIN blobs b"
                " ON b.hash = e.blob WHERE e.errand_id = ? ORDER BY e.seq",
                (errand_id,),
            ).fetchall()
            view = ErrandView(id=errand_id)
            blobs: set[str] = set()
            for seq, body, blob, blob_data in rows:
                data = _purge_value(ev.upgrade(json.loads(blob_data if blob else body)))
                cleaned = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
                conn.execute(
                    "UPDATE events SET body = ?, blob = NULL WHERE errand_id = ? AND seq = ?",
                    (cleaned, errand_id, seq),
                )
                if blob:
                    blobs.add(blob)
                apply(view, seq, ev.parse_event(data))
            conn.executemany(
                "DELETE FROM blobs WHERE hash = ?1 AND NOT EXISTS"
                " (SELECT 1 FROM events WHERE blob = ?1)",
                [(b,) for b in sorted(blobs)],
            )
            self._views[errand_id] = view
            self._stage(tx, view, [self._prepare(ev.ErrandPurged())])

        await self._submit(op)
        await asyncio.to_thread(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (retried while readers block it)."""
        conn = self._reader()
        for _ in range(50):
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return
            time.sleep(0.05)
        raise StoreError("could not checkpoint the WAL: the database is busy")

    # ------------------------------------------------------------------- reads

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def read_sync(self, errand_id: str, after: int = 0) -> list[StoredEvent]:
        rows = (
            self._reader()
            .execute(
                "SELECT e.seq, e.body, e.blob, b.data FROM events e LEFT JOIN blobs b"
                " ON b.hash = e.blob WHERE e.errand_id = ? AND e.seq > ? ORDER BY e.seq",
                (errand_id, after),
            )
            .fetchall()
        )
        out = [
            StoredEvent(errand_id, seq, ev.load_event(blob_data if blob else body))
            for seq, body, blob, blob_data in rows
        ]
        if out:
            invariant(
                [s.seq for s in out] == list(range(out[0].seq, out[0].seq + len(out))),
                f"no gaps in the log of {errand_id}",
            )
        return out

    async def read(self, errand_id: str, after: int = 0) -> list[StoredEvent]:
        return await asyncio.to_thread(self.read_sync, errand_id, after)

    def view_sync(self, errand_id: str) -> ErrandView:
        row = self._reader().execute(_SELECT_VIEW + " WHERE id = ?", (errand_id,)).fetchone()
        if row is None:
            raise NotFound(f"no errand {errand_id}")
        return _view_from_row(row)

    async def view(self, errand_id: str) -> ErrandView:
        return await asyncio.to_thread(self.view_sync, errand_id)

    def find_sync(self, prefix: str) -> str:
        """The full id of the one errand whose id starts with *prefix*."""
        rows = (
            self._reader()
            .execute(
                "SELECT id FROM errands WHERE id >= ? AND id < ? LIMIT 2",
                (prefix, prefix + "\U0010ffff"),
            )
            .fetchall()
        )
        if not rows:
            raise NotFound(f"no errand {prefix}")
        if len(rows) > 1:
            raise NotFound(f"{prefix} matches several errands; give more of the id")
        return str(rows[0][0])

    def list_errands_sync(
        self, *, states: Sequence[ErrandState] | None = None, limit: int = 100
    ) -> list[ErrandView]:
        sql = _SELECT_VIEW
        params: list[Any] = []
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params.extend(s.value for s in states)
        sql += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        return [_view_from_row(r) for r in self._reader().execute(sql, params).fetchall()]

    async def list_errands(
        self, *, states: Sequence[ErrandState] | None = None, limit: int = 100
    ) -> list[ErrandView]:
        return await asyncio.to_thread(self.list_errands_sync, states=states, limit=limit)

    def pending_approvals_sync(self) -> list[PendingApproval]:
        rows = (
            self._reader()
            .execute(_SELECT_VIEW + " WHERE pending_count > 0 ORDER BY updated_at")
            .fetchall()
        )
        out: list[PendingApproval] = []
        for row in rows:
            out.extend(_view_from_row(row).pending.values())
        return out

    async def pending_approvals(self) -> list[PendingApproval]:
        return await asyncio.to_thread(self.pending_approvals_sync)

    async def wakeups(self, after: int) -> tuple[int, list[str]]:
        return await asyncio.to_thread(self.wakeups_sync, after)

    def wakeups_sync(self, after: int) -> tuple[int, list[str]]:
        rows = (
            self._reader()
            .execute("SELECT id, errand_id FROM wakeups WHERE id > ? ORDER BY id", (after,))
            .fetchall()
        )
        if not rows:
            if after == 0:
                top = self._reader().execute("SELECT max(id) FROM wakeups").fetchone()[0]
                return int(top or 0), []
            return after, []
        return int(rows[-1][0]), list(dict.fromkeys(r[1] for r in rows))

    def usage_rows_sync(
        self, *, since: float = 0.0, errand_id: str | None = None
    ) -> list[tuple[str, float, str, ev.Usage]]:
        """(errand, time, model, usage) of every logged model call since *since*."""
        sql = (
            "SELECT e.errand_id, e.at, COALESCE(b.data, e.body) FROM events e"
            " LEFT JOIN blobs b ON b.hash = e.blob WHERE e.type = 'model_responded' AND e.at >= ?"
        )
        params: list[Any] = [since]
        if errand_id is not None:
            sql += " AND e.errand_id = ?"
            params.append(errand_id)
        out = []
        for eid, at, body in self._reader().execute(sql, params):
            event = ev.load_event(body)
            assert isinstance(event, ev.ModelResponded)
            out.append((str(eid), float(at), event.model, event.usage))
        return out

    def lease_holder(self, errand_id: str) -> tuple[str, float] | None:
        """Who holds the errand's lease, and until when (None if nobody)."""
        row = (
            self._reader()
            .execute("SELECT owner, expires_at FROM leases WHERE errand_id = ?", (errand_id,))
            .fetchone()
        )
        return None if row is None else (str(row[0]), float(row[1]))

    def rebuild_projections(self) -> int:
        """Refold every log and rewrite the projection table; return the errand count."""

        def op(tx: _Tx) -> int:
            ids = [r[0] for r in tx.conn.execute("SELECT DISTINCT errand_id FROM events")]
            for errand_id in ids:
                view = ErrandView(id=errand_id)
                for stored in self.read_sync(errand_id):
                    apply(view, stored.seq, stored.event)
                tx.dirty[errand_id] = view
                self._written.pop(errand_id, None)  # rewrite every column
                self._cache(view)
            spend.rebuild(tx.conn)
            return len(ids)

        result: int = self.submit_sync(op)
        return result

    def integrity_check(self) -> list[str]:
        """Compare every projection with a fresh fold of its log; return the mismatches."""
        problems = []
        reader = self._reader()
        for (errand_id,) in reader.execute("SELECT DISTINCT errand_id FROM events").fetchall():
            view = ErrandView(id=errand_id)
            for stored in self.read_sync(errand_id):
                apply(view, stored.seq, stored.event)
            try:
                cached = self.view_sync(errand_id)
            except NotFound:
                problems.append(f"{errand_id}: no projection")
                continue
            if cached.model_dump() != view.model_dump():
                problems.append(f"{errand_id}: projection differs from the fold")
            (pending,) = reader.execute(
                "SELECT pending_count FROM errands WHERE id = ?", (errand_id,)
            ).fetchone()
            if pending != len(view.pending):
                problems.append(f"{errand_id}: pending_count differs from the fold")
        orphans = reader.execute(
            "SELECT id FROM errands WHERE id NOT IN (SELECT errand_id FROM events)"
        ).fetchall()
        problems.extend(f"{errand_id}: a projection without a log" for (errand_id,) in orphans)
        expected, actual = spend.expected(reader), spend.totals(reader)
        problems.extend(
            f"spend {scope}: {actual.get(scope, 0)} nano-USD, the log says {expected.get(scope, 0)}"
            for scope in sorted(expected.keys() | actual.keys())
            if expected.get(scope, 0) != actual.get(scope, 0)
        )
        return problems

    # ----------------------------------------------------------------- closing

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._stopping.set()
        self._committed.set()  # (wakes the checkpointer if it is waiting for a commit)
        self._checkpoint_thread.join()
        self._wconn.close()
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()


def _settle(ops: list[_Op]) -> None:
    for op in ops:
        fut = op.future
        if fut is None or fut.done():
            continue
        if op.error is not None:
            fut.set_exception(op.error)
        else:
            fut.set_result(op.result)


def _notify(listener: Callable[[str, int], None], latest: dict[str, int]) -> None:
    for errand_id, seq in latest.items():
        listener(errand_id, seq)


def _view_from_row(row: Sequence[Any]) -> ErrandView:
    """An ErrandView from ``_SELECT_VIEW``'s columns.

    The ``view`` column of a schema-1 database holds the whole view; the columns say
    the same, so overlaying them reads both layouts.
    """
    data: dict[str, Any] = json.loads(row[7])
    data.update(zip(_COLUMNS, row[:7], strict=True))
    return ErrandView.model_validate(data)


# Free-text fields that may carry the person's private words or derived content.
_PURGE_TEXT_KEYS = frozenset({"title", "preview", "reason", "message", "raw_arguments"})
_PURGE_ARG_KEYS = frozenset({"arguments", "edited_arguments"})
_PURGE_DROP_KEYS = frozenset({"replay"})


def _purge_value(value: Any) -> Any:
    if isinstance(value, dict):
        if {"text", "provenance", "confidentiality"} <= value.keys():  # a content item
            if value["confidentiality"] == "public":
                return value
            provenance = value["provenance"]
            if isinstance(provenance, dict) and provenance.get("source") is not None:
                provenance = {**provenance, "source": None}
            return {**value, "text": PURGED, "provenance": provenance}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _PURGE_ARG_KEYS and isinstance(item, dict):
                out[key] = {"purged": True}
            elif key in _PURGE_DROP_KEYS:
                out[key] = None  # opaque provider state: nothing of it can stay
            elif key in _PURGE_TEXT_KEYS and isinstance(item, str) and item:
                out[key] = PURGED
            else:
                out[key] = _purge_value(item)
        return out
    if isinstance(value, list):
        return [_purge_value(v) for v in value]
    return value
