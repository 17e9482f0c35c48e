"""The SQLite store: one file, WAL, ``synchronous=FULL``, group commit.

Everything that is not SQL -- the writer thread and its batches, staging and the fold,
the projection cache, budgets, purge rules -- is in :class:`~errands.store.base.BaseStore`;
this is the SQL, the connections, and the checkpointer.

Writes go through one writer connection (in the base's writer thread); reads use
per-thread connections, which WAL lets run beside the writer. The ``errands`` table
is a projection: a cache of the fold over the log, updated in the same transaction as
the events and rebuildable from them. Its queryable columns (state, title, times,
sequence, parent, pending count) are real columns; the ``view`` column holds only the
rest of the view, with default values left out, so that the row rewritten for every
errand in every batch stays small. WAL checkpoints run in a thread of their own. See
``docs/store.md`` for the design and the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from errands.clock import SYSTEM, Clock
from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.costs import spend as money
from errands.errors import NotFound, SchemaTooNew, StoreError, StoreUnavailable
from errands.private import private_dir, private_file
from errands.store import health
from errands.store.base import BaseStore, ProjectionRow, ProjectionUpdate, SpendTables, Tx
from errands.store.integrity import pending_problems, spend_problems
from errands.store.protocol import StoredEvent, UsageRow
from errands.store.redact import Redactor
from errands.store.rows import (
    MAX_SEQ,
    changes,
    found_errand,
    log_bodies,
    pending_of,
    stored_events,
    usage_rows,
    view_from_row,
    wakeups_after,
)
from errands.store.sqlite import leaseclock, snapshots, spend
from errands.store.sqlite.connection import (
    BUSY_TIMEOUT,
    UNAVAILABLE_WAIT,
    WriteGate,
    begin_immediate,
    checkpointer,
    connect,
    disk_has_room,
    probe_write,
    unavailable,
    writer_connection,
)
from errands.store.sqlite.mail_cursor import SQLiteMailCursor
from errands.store.sqlite.mcp_pins import SQLiteMcpPins
from errands.store.sqlite.memory import SQLiteMemory
from errands.store.sqlite.migrations import migrate
from errands.store.sqlite.retention import SQLiteRetention, incremental_if_new
from errands.store.sqlite.schedules import SQLiteSchedules
from errands.store.sqlite.snapshots import SQLiteSnapshots

__all__ = ["SQLiteStore"]

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
# indexes) alone.
_UPDATE_VIEW = "UPDATE errands SET title=?, updated_at=?, last_seq=?, parent=?, view=? WHERE id=?"
_SELECT_LOG = (
    "SELECT e.seq, e.body, e.blob, b.data FROM events e LEFT JOIN blobs b"
    " ON b.hash = e.blob WHERE e.errand_id = ?"
)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reads(
    fn: Callable[Concatenate[SQLiteStore, _P], _R],
) -> Callable[Concatenate[SQLiteStore, _P], _R]:
    """A read that meets a condition of the world (an I/O error, a file it cannot open)
    raises StoreUnavailable, like a write."""

    @functools.wraps(fn)
    def read(self: SQLiteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(self, *args, **kwargs)
        except ev.EventTooNew as exc:  # (a newer errands wrote it: refused, not misread)
            raise SchemaTooNew(f"this store was written by a newer errands: {exc}") from None
        except sqlite3.Error as exc:
            condition = unavailable(exc, self.path)
            if condition is None:
                raise
            raise condition from exc

    return read


def _reads_async(
    fn: Callable[Concatenate[SQLiteStore, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[SQLiteStore, _P], Coroutine[Any, Any, _R]]:
    """:func:`_reads`, for a read that is a coroutine."""

    @functools.wraps(fn)
    async def read(self: SQLiteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            condition = unavailable(exc, self.path)
            if condition is None:
                raise
            raise condition from exc

    return read


class SQLiteStore(
    SQLiteSnapshots,
    SQLiteRetention,
    SQLiteSchedules,
    SQLiteMcpPins,
    SQLiteMailCursor,
    SQLiteMemory,
    BaseStore,
):
    """The default store: ``SQLiteStore(path)`` opens (and migrates) the file; close it
    with :meth:`close`."""

    _spend: ClassVar[SpendTables] = spend  # the budget tables' SQL

    def __init__(
        self,
        path: str | Path,
        *,
        redactor: Redactor | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        super().__init__(redactor=redactor, clock=clock)
        self.path = str(path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._data_version = -1
        # errand -> (its projection row, its pending approvals), as _pending last read them
        self._pending_memo: dict[str, tuple[Any, list[PendingApproval]]] = {}
        self._wconn = _open_writer(self.path)
        # taking turns with other processes' writers (share_writes): none by default
        self._gate: WriteGate | None = None
        leaseclock.forget_other_boots(self._wconn, clock)
        try:
            cconn = connect(self.path)
        except BaseException:
            self._wconn.close()
            raise
        self._restart_wal = False  # set by the checkpointer when the WAL has grown too big
        self._committed = threading.Event()  # set after each commit: wakes the checkpointer
        self._stopping = threading.Event()  # set by close: stops the checkpointer
        self._checkpoint_thread = threading.Thread(
            target=checkpointer,
            args=(cconn, self._committed, self._stopping, self._ask_restart),
            name="errands-store-checkpointer",
            daemon=True,
        )
        self._start_writer()
        self._checkpoint_thread.start()

    # ---------------------------------------------------------------- transactions

    _changes = 0  # the writer connection's total_changes when its transaction began

    def _begin(self) -> sqlite3.Connection:
        locked = self.unavailable is not None and self.unavailable.condition == "locked"
        # (tell committed callers while waiting)
        gate = self._gate
        if gate is None:
            begin_immediate(self._wconn, self._tell, known_locked=locked)
        else:
            gate.acquire(UNAVAILABLE_WAIT if locked else BUSY_TIMEOUT, self._tell)
            try:
                begin_immediate(self._wconn, self._tell, known_locked=locked)
            except BaseException:
                gate.release()
                raise
        self._changes = self._wconn.total_changes
        return self._wconn

    def _yield_now(self) -> bool:
        return self._gate is not None and self._gate.urgent()

    def _written_elsewhere(self, conn: sqlite3.Connection) -> bool:
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version == self._data_version:
            return False
        self._data_version = version
        return True

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")
        if self._gate is not None:
            self._gate.release()
        self._committed.set()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if self._gate is not None:
            self._gate.release()

    def _unavailable(self, exc: BaseException) -> StoreUnavailable | None:
        return unavailable(exc, self.path)

    def _wrote(self, conn: sqlite3.Connection) -> bool:
        return conn.total_changes != self._changes

    def _cleared(self, condition: StoreUnavailable, conn: sqlite3.Connection) -> bool:
        if condition.condition == "disk_full" and not disk_has_room(self.path):
            return False  # (what fits in the WAL's free frames still goes through)
        return super()._cleared(condition, conn)

    def _probe_write(self, tx: Tx) -> None:
        probe_write(tx.conn)

    def _ask_restart(self) -> None:
        self._restart_wal = True

    def _after_batch(self) -> None:
        if not self._restart_wal:
            return
        # checkpoint what is left of the WAL, so that the next transaction restarts it
        self._tell()  # (they are committed; this may take a moment)
        try:
            busy, _, _ = self._wconn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error:
            return  # another checkpoint is running: after the next batch, then
        if not busy:
            self._restart_wal = False

    # ---------------------------------------------------------------- writes

    def _load_view(self, tx: Tx, errand_id: str) -> ErrandView | None:
        row = tx.conn.execute(_SELECT_VIEW + " WHERE id = ?", (errand_id,)).fetchone()
        return None if row is None else view_from_row(row)

    def _exists(self, tx: Tx, errand_id: str) -> bool:
        return (
            tx.conn.execute("SELECT 1 FROM errands WHERE id = ?", (errand_id,)).fetchone()
            is not None
        )

    def _write(self, tx: Tx, upserts: list[ProjectionRow], updates: list[ProjectionUpdate]) -> None:
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
        if upserts:
            conn.executemany(_UPSERT_VIEW, upserts)
        if updates:
            conn.executemany(_UPDATE_VIEW, updates)
        if tx.wakeups:
            conn.executemany(
                "INSERT INTO wakeups(errand_id, at) VALUES (?, ?)",
                [(e, tx.now) for e in tx.wakeups],
            )

    def _lease_owner(self, tx: Tx, errand_id: str) -> str | None:
        row = tx.conn.execute(
            "SELECT owner FROM leases WHERE errand_id = ?", (errand_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _take_lease(self, tx: Tx, errand_id: str, owner: str, until: float) -> bool:
        cur = tx.conn.execute(
            "INSERT INTO leases(errand_id, owner, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT(errand_id) DO UPDATE SET owner = excluded.owner,"
            " expires_at = excluded.expires_at"
            " WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
            (errand_id, owner, until, self._lease_now()),
        )
        return bool(cur.rowcount == 1)

    def _free_active(self, tx: Tx, lease_now: float, limit: int) -> list[str]:
        rows = tx.conn.execute(
            "SELECT e.id FROM errands e LEFT JOIN leases l ON l.errand_id = e.id"
            " WHERE e.state IN ('queued', 'running')"
            " AND (l.owner IS NULL OR l.expires_at <= ?) ORDER BY e.updated_at LIMIT ?",
            (lease_now, limit),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _free_due(self, tx: Tx, now: float, lease_now: float, limit: int) -> list[str]:
        rows = tx.conn.execute(
            "SELECT e.id FROM timers t JOIN errands e ON e.id = t.errand_id"
            " LEFT JOIN leases l ON l.errand_id = e.id"
            " WHERE t.wake_at <= ? AND e.state = 'sleeping'"
            " AND (l.owner IS NULL OR l.expires_at <= ?) ORDER BY t.wake_at LIMIT ?",
            (now, lease_now, limit),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _set_timer(self, tx: Tx, errand_id: str, wake_at: float) -> None:
        tx.conn.execute(
            "INSERT OR REPLACE INTO timers(errand_id, wake_at) VALUES (?, ?)", (errand_id, wake_at)
        )

    def _renew_leases(self, tx: Tx, owner: str, until: float) -> set[str]:
        tx.conn.execute("UPDATE leases SET expires_at = ? WHERE owner = ?", (until, owner))
        spend.extend(tx.conn, owner, until)
        return {
            str(r[0])
            for r in tx.conn.execute("SELECT errand_id FROM leases WHERE owner = ?", (owner,))
        }

    def _drop_lease(self, tx: Tx, errand_id: str, owner: str) -> None:
        tx.conn.execute("DELETE FROM leases WHERE errand_id = ? AND owner = ?", (errand_id, owner))

    def _log_bodies(self, tx: Tx, errand_id: str) -> list[tuple[int, str, str | None]]:
        return log_bodies(tx.conn.execute(_SELECT_LOG + " ORDER BY e.seq", (errand_id,)))

    def _rewrite_body(self, tx: Tx, errand_id: str, seq: int, body: str) -> None:
        tx.conn.execute(
            "UPDATE events SET body = ?, blob = NULL WHERE errand_id = ? AND seq = ?",
            (body, errand_id, seq),
        )
        snapshots.drop(tx.conn, errand_id)  # (a purge: the snapshot holds what goes)

    def _drop_orphan_blobs(self, tx: Tx, hashes: Sequence[str]) -> None:
        # (secure_delete zeroes the freed space)
        tx.conn.executemany(
            "DELETE FROM blobs WHERE hash = ?1 AND NOT EXISTS (SELECT 1 FROM events WHERE blob = ?1)",
            [(h,) for h in hashes],
        )

    async def _after_purge(self) -> None:
        # the WAL still holds the old page images: copy it in and truncate it
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

    def _errand_ids(self, tx: Tx) -> list[str]:
        return [str(r[0]) for r in tx.conn.execute("SELECT DISTINCT errand_id FROM events")]

    # ---------------------------------------------------------------- reads

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @_reads
    def _read_log(self, errand_id: str, after: int) -> list[StoredEvent]:
        rows = (
            self._reader()
            .execute(_SELECT_LOG + " AND e.seq > ? ORDER BY e.seq", (errand_id, after))
            .fetchall()
        )
        return stored_events(errand_id, rows)

    @_reads
    def _read_latest(self, errand_id: str, limit: int, before: int | None) -> list[StoredEvent]:
        bound = MAX_SEQ if before is None else before
        rows = (
            self._reader()
            .execute(
                _SELECT_LOG + " AND e.seq < ? ORDER BY e.seq DESC LIMIT ?",
                (errand_id, bound, limit),
            )
            .fetchall()
        )
        return stored_events(errand_id, reversed(rows))

    @_reads
    def _read_view(self, errand_id: str) -> ErrandView:
        row = self._reader().execute(_SELECT_VIEW + " WHERE id = ?", (errand_id,)).fetchone()
        if row is None:
            raise NotFound(f"no errand {errand_id}")
        return view_from_row(row)

    @_reads_async
    async def find(self, prefix: str) -> str:
        rows = (
            self._reader()
            .execute(
                "SELECT id FROM errands WHERE id >= ? AND id < ? LIMIT 2",
                (prefix, prefix + "\U0010ffff"),
            )
            .fetchall()
        )
        return found_errand(prefix, rows)

    @_reads
    def _list(self, states: Sequence[ErrandState] | None, limit: int) -> list[ErrandView]:
        sql = _SELECT_VIEW
        params: list[Any] = []
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params.extend(s.value for s in states)
        sql += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        return [view_from_row(r) for r in self._reader().execute(sql, params).fetchall()]

    @_reads
    def _children(self, errand_id: str) -> list[ErrandView]:
        sql = _SELECT_VIEW + " WHERE parent = ? ORDER BY created_at, id"
        return [view_from_row(r) for r in self._reader().execute(sql, (errand_id,)).fetchall()]

    async def children(self, errand_id: str) -> list[ErrandView]:
        return self._children(errand_id)  # (a point lookup on an index: no thread hop)

    @_reads
    def _pending(self) -> list[PendingApproval]:
        """Every pending approval, oldest errand first. Decoding a view is most of the
        cost (~0.1 ms each), so the approvals of each row read are kept with the row and
        a row read again unchanged is not decoded again; the result is always what this
        read found. (The approvals returned are shared between calls: not to be changed.)"""
        rows = (
            self._reader()
            .execute(_SELECT_VIEW + " WHERE pending_count > 0 ORDER BY updated_at")
            .fetchall()
        )
        memo, fresh = self._pending_memo, {}
        out: list[PendingApproval] = []
        for row in rows:
            kept = memo.get(row[0])
            if kept is None or kept[0] != row:
                kept = (row, pending_of((row,)))
            fresh[row[0]] = kept
            out.extend(kept[1])
        self._pending_memo = fresh  # (only the rows pending now: its size is theirs)
        return out

    @_reads_async
    async def lease_holder(self, errand_id: str) -> tuple[str, float] | None:
        row = (
            self._reader()
            .execute("SELECT owner, expires_at FROM leases WHERE errand_id = ?", (errand_id,))
            .fetchone()
        )
        return None if row is None else (str(row[0]), float(row[1]))

    def share_writes(self, favoured: bool = False) -> None:
        gate = self._gate or WriteGate(self.path)
        if favoured:
            gate.favour()
        self._gate = gate

    @_reads_async
    async def changed_since(self, since: float) -> list[tuple[str, int, float]]:
        rows = (
            self._reader()
            .execute(
                "SELECT id, last_seq, updated_at FROM errands WHERE updated_at > ?"
                " ORDER BY updated_at",
                (since,),
            )
            .fetchall()
        )
        return changes(rows)

    @_reads_async
    async def wakeups(self, after: int) -> tuple[int, list[str]]:
        reader = self._reader()
        rows = reader.execute(
            "SELECT id, errand_id FROM wakeups WHERE id > ? ORDER BY id", (after,)
        ).fetchall()
        return wakeups_after(
            after, rows, lambda: reader.execute("SELECT max(id) FROM wakeups").fetchone()[0]
        )

    @_reads
    def _usage(self, since: float, errand_id: str | None) -> list[UsageRow]:
        sql = (
            "SELECT e.errand_id, e.at, COALESCE(b.data, e.body) FROM events e"
            " LEFT JOIN blobs b ON b.hash = e.blob"
            " WHERE e.type IN ('model_responded', 'model_used') AND e.at >= ?"
        )
        params: list[Any] = [since]
        if errand_id is not None:
            sql += " AND e.errand_id = ?"
            params.append(errand_id)
        return usage_rows(self._reader().execute(sql, params))

    @_reads
    def _budget_now(self, now: float, lease_now: float, daily: bool) -> tuple[int, int, int]:
        reader = self._reader()
        spent = spend.spent(reader, money.DAY, now)
        if daily:
            held, calls = spend.held_total(reader, money.DAY, lease_now)
        else:  # no daily cap: no day holds either; count every errand's
            held, calls = spend.held_all(reader, lease_now)
        return spent, held, calls

    @_reads
    def _all_ids(self) -> list[str]:
        return [str(r[0]) for r in self._reader().execute("SELECT DISTINCT errand_id FROM events")]

    @_reads
    def _integrity_extra(self) -> list[str]:
        reader = self._reader()
        problems = pending_problems(reader.execute("SELECT id, pending_count, view FROM errands"))
        orphans = reader.execute(
            "SELECT id FROM errands WHERE id NOT IN (SELECT errand_id FROM events)"
        ).fetchall()
        problems.extend(f"{errand_id}: a projection without a log" for (errand_id,) in orphans)
        return problems + spend_problems(spend.expected(reader), spend.totals(reader))

    # ---------------------------------------------------------------- closing

    def _close_backend(self) -> None:
        self._stopping.set()
        self._committed.set()  # (wakes the checkpointer if it is waiting for a commit)
        if self._checkpoint_thread.is_alive():
            self._checkpoint_thread.join()
        self._wconn.close()
        if self._gate is not None:
            self._gate.close()
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()


def _open_writer(path: str) -> sqlite3.Connection:
    """The writer's connection, migrated, after the checks every open makes: a file
    that is not a database or is truncated is refused as damaged
    (:mod:`errands.store.health`), and so is one SQLite finds malformed while
    migrating; a home this user cannot write is refused saying so."""
    try:  # the home 0700, the store 0600 (its -wal and -shm take the store's mode)
        private_file(private_dir(Path(path).parent) / Path(path).name)
    except OSError as exc:
        raise health.not_writable(path, exc.strerror or str(exc)) from None
    problem = health.header_problem(path)
    if problem is not None:
        raise health.damaged(path, problem)
    try:
        return writer_connection(path, _migrate)
    except sqlite3.Error as exc:
        explained = health.explain(path, exc)
        if explained is None:
            raise
        raise explained from exc


def _migrate(conn: sqlite3.Connection) -> int:
    incremental_if_new(conn)  # (a new file gives freed pages back: store/sqlite/retention.py)
    return migrate(conn)
