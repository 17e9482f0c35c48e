"""The SQLite store: one file, WAL, ``synchronous=FULL``, group commit.

Writes go through one writer thread. Callers on the event loop enqueue an operation
and await a future; the writer drains everything queued, runs it in *one*
transaction with *one* fsync, and only then resolves the futures -- so an append
returns only once its event is on disk, and a thousand concurrent errands share a
commit. Reads use per-thread connections (WAL lets them run beside the writer).

The ``errands`` table is a projection: a cache of :func:`errands.states.fold` over
the log, updated in the same transaction as the events and rebuildable from them
(:meth:`SQLiteStore.rebuild_projections`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errands import events as ev
from errands.contracts import ensure, invariant, require
from errands.faults import fault
from errands.states import ErrandState, ErrandView, PendingApproval, apply
from errands.store.base import ErrandExists, Guard, LeaseLost, NotFound, StoredEvent, StoreError
from errands.store.migrations import migrate
from errands.store.redact import Redactor

__all__ = ["BLOB_THRESHOLD", "SQLiteStore", "WriterStats"]

BLOB_THRESHOLD = 16 * 1024  # event bodies above this go to content-addressed blobs
MAX_BATCH = 4096  # operations per group commit
PURGED = "[purged]"


@dataclass
class WriterStats:
    commits: int = 0
    events: int = 0
    ops: int = 0
    bytes: int = 0  # event bytes written (bodies and blobs)
    max_batch: int = 0


@dataclass
class _Op:
    fn: Callable[[_Tx], Any]
    future: asyncio.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    done: threading.Event | None = None  # for callers without an event loop
    result: Any = None
    error: BaseException | None = None


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


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteStore:
    """The default store. Open with :meth:`open`; close with :meth:`close`."""

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
        # writer-thread state
        self._views: dict[str, ErrandView] = {}
        self._held: dict[str, str] = {}  # errand -> owner, leases this writer knows are held
        self._data_version = -1
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._wconn = _connect(self.path)
        # purged content is overwritten on disk, not just unlinked
        self._wconn.execute("PRAGMA secure_delete = ON")
        migrate(self._wconn)
        self._thread = threading.Thread(target=self._run, name="errands-store-writer", daemon=True)
        self._closed = False
        self._thread.start()

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
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[_Op]) -> None:
        conn = self._wconn
        try:
            self._run_tx(conn, batch)
        except Exception as exc:  # a batch-level failure: retry each op on its own
            self._forget()
            if len(batch) > 1:
                for op in batch:
                    op.error = None
                    self._commit_batch([op])
                return
            batch[0].error = exc
        self._resolve(batch)

    def _run_tx(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._forget()  # someone else committed: our caches may be stale
                self._data_version = version
            tx = _Tx(conn=conn, now=self.clock())
            for op in batch:
                staged = len(tx.rows)
                try:
                    op.result = op.fn(tx)
                except StoreError as exc:
                    # refused before it staged anything: the rest of the batch goes on
                    invariant(len(tx.rows) == staged, "a refused operation staged nothing")
                    op.error = exc
            self._flush(tx)
            fault("mid_batch")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.stats.commits += 1
        self.stats.ops += len(batch)
        self.stats.events += len(tx.rows)
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        self._after_commit(batch, tx)

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
            conn.executemany(
                "INSERT INTO errands(id, state, title, created_at, updated_at, last_seq, parent,"
                " pending_count, view) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
                " state=excluded.state, title=excluded.title, updated_at=excluded.updated_at,"
                " last_seq=excluded.last_seq, pending_count=excluded.pending_count,"
                " view=excluded.view",
                [_view_row(v) for v in tx.dirty.values()],
            )
        if tx.wakeups:
            conn.executemany(
                "INSERT INTO wakeups(errand_id, at) VALUES (?, ?)",
                [(e, tx.now) for e in tx.wakeups],
            )
        self.stats.bytes += sum(len(r[4]) for r in tx.rows) + sum(len(b) for b in tx.blobs.values())

    def _after_commit(self, batch: list[_Op], tx: _Tx) -> None:
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
            by_loop.setdefault(op.loop, []).append(op)
        for loop, ops in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, ops)

    def _forget(self) -> None:
        self._views.clear()
        self._held.clear()

    # ------------------------------------------------------- writer-side helpers

    def _view_for(self, tx: _Tx, errand_id: str) -> ErrandView:
        view = tx.dirty.get(errand_id) or self._views.get(errand_id)
        if view is None:
            row = tx.conn.execute("SELECT view FROM errands WHERE id = ?", (errand_id,)).fetchone()
            if row is None:
                raise NotFound(f"no errand {errand_id}")
            view = ErrandView.model_validate_json(row[0])
            if len(self._views) > 20_000:
                self._views.clear()
            self._views[errand_id] = view
        return view

    def _check_lease(self, tx: _Tx, errand_id: str, owner: str) -> None:
        if self._held.get(errand_id) == owner:
            return
        row = tx.conn.execute(
            "SELECT owner FROM leases WHERE errand_id = ?", (errand_id,)
        ).fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(f"errand {errand_id} is owned by another process now")
        self._held[errand_id] = owner

    def _stage(self, tx: _Tx, view: ErrandView, events: Sequence[ev.Event]) -> list[int]:
        seqs: list[int] = []
        for event in events:
            seq = view.last_seq + 1
            body = self.redact(event.model_dump_json())
            blob = None
            if len(body) > BLOB_THRESHOLD:
                blob = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
                tx.blobs[blob] = body
                body = ""
            tx.rows.append((view.id, seq, event.type, event.at, body, blob))
            apply(view, seq, event)
            seqs.append(seq)
            tx.appended.append((view.id, seq))
        tx.dirty[view.id] = view
        return seqs

    # ------------------------------------------------------------------ writes

    async def create(self, errand_id: str, created: ev.ErrandCreated) -> None:
        require(bool(errand_id), "an errand id")

        def op(tx: _Tx) -> None:
            exists = (
                errand_id in self._views
                or tx.conn.execute("SELECT 1 FROM errands WHERE id = ?", (errand_id,)).fetchone()
            )
            if exists or errand_id in tx.dirty:
                raise ErrandExists(f"errand {errand_id} exists already")
            view = ErrandView(id=errand_id)
            self._views[errand_id] = view
            self._stage(tx, view, [created])

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
        require(
            not any(isinstance(e, ev.ErrandCreated) for e in events),
            "errand_created only through create()",
        )

        def op(tx: _Tx) -> list[int]:
            view = self._view_for(tx, errand_id)
            if owner is not None:
                self._check_lease(tx, errand_id, owner)
            else:
                tx.wakeups.append(errand_id)
            if guard is not None:
                guard(view)
            first = view.last_seq + 1
            seqs = self._stage(tx, view, events)
            ensure(seqs == list(range(first, first + len(events))), "contiguous sequence numbers")
            return seqs

        result: list[int] = await self._submit(op)
        return result

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
            self._held.pop(errand_id, None)

        await self._submit(op)

    async def purge(self, errand_id: str) -> None:
        """Remove the errand's private content from the log (and from disk pages)."""

        def op(tx: _Tx) -> None:
            view = self._view_for(tx, errand_id)
            conn = tx.conn
            rows = conn.execute(
                "SELECT e.seq, e.body, e.blob, b.data FROM events e LEFT JOIN blobs b"
                " ON b.hash = e.blob WHERE e.errand_id = ?",
                (errand_id,),
            ).fetchall()
            for seq, body, blob, blob_data in rows:
                data = json.loads(blob_data if blob else body)
                cleaned = json.dumps(_purge_value(data), separators=(",", ":"))
                conn.execute(
                    "UPDATE events SET body = ?, blob = NULL WHERE errand_id = ? AND seq = ?",
                    (cleaned, errand_id, seq),
                )
            conn.execute(
                "DELETE FROM blobs WHERE hash NOT IN (SELECT blob FROM events WHERE blob IS NOT NULL)"
            )
            self._stage(tx, view, [ev.ErrandPurged()])
            view.result = PURGED if view.result is not None else None
            view.title = PURGED

        await self._submit(op)
        await asyncio.to_thread(self._checkpoint)

    def _checkpoint(self) -> None:
        conn = self._reader()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
        row = (
            self._reader().execute("SELECT view FROM errands WHERE id = ?", (errand_id,)).fetchone()
        )
        if row is None:
            raise NotFound(f"no errand {errand_id}")
        return ErrandView.model_validate_json(row[0])

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
        sql = "SELECT view FROM errands"
        params: list[Any] = []
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params.extend(s.value for s in states)
        sql += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        return [
            ErrandView.model_validate_json(r[0])
            for r in self._reader().execute(sql, params).fetchall()
        ]

    async def list_errands(
        self, *, states: Sequence[ErrandState] | None = None, limit: int = 100
    ) -> list[ErrandView]:
        return await asyncio.to_thread(self.list_errands_sync, states=states, limit=limit)

    def pending_approvals_sync(self) -> list[PendingApproval]:
        rows = (
            self._reader()
            .execute("SELECT view FROM errands WHERE pending_count > 0 ORDER BY updated_at")
            .fetchall()
        )
        out: list[PendingApproval] = []
        for (raw,) in rows:
            out.extend(ErrandView.model_validate_json(raw).pending.values())
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

    def rebuild_projections(self) -> int:
        """Refold every log and rewrite the projection table; return the errand count."""

        def op(tx: _Tx) -> int:
            ids = [r[0] for r in tx.conn.execute("SELECT DISTINCT errand_id FROM events")]
            for errand_id in ids:
                view = ErrandView(id=errand_id)
                for stored in self.read_sync(errand_id):
                    apply(view, stored.seq, stored.event)
                tx.dirty[errand_id] = view
                self._views[errand_id] = view
            return len(ids)

        result: int = self.submit_sync(op)
        return result

    def integrity_check(self) -> list[str]:
        """Compare every projection with a fresh fold of its log; return the mismatches."""
        problems = []
        for (errand_id,) in self._reader().execute("SELECT DISTINCT errand_id FROM events"):
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


def _view_row(view: ErrandView) -> tuple[Any, ...]:
    return (
        view.id,
        view.state.value,
        view.title,
        view.created_at,
        view.updated_at,
        view.last_seq,
        view.parent,
        len(view.pending),
        view.model_dump_json(),
    )


def _purge_value(value: Any) -> Any:
    if isinstance(value, dict):
        if {"text", "provenance", "confidentiality"} <= value.keys():
            if value["confidentiality"] != "public":
                return {**value, "text": PURGED}
            return value
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("arguments", "edited_arguments") and isinstance(item, dict):
                out[key] = {"purged": True}
            elif key in ("title", "preview") and isinstance(item, str):
                out[key] = PURGED
            else:
                out[key] = _purge_value(item)
        return out
    if isinstance(value, list):
        return [_purge_value(v) for v in value]
    return value
