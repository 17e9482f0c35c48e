"""The PostgreSQL store: the same log, projections, leases and budgets as the SQLite
store, on a database server that many processes on many hosts share.

Everything that is not SQL -- group commit (one transaction, one commit, for every
operation queued meanwhile, many errands' appends together), staging and the fold, the
projection cache, budgets' admission, purge rules -- is
:class:`~errands.store.base.BaseStore`'s; this is the SQL, the connections, and what
sharing the database with other writers needs:

- **fencing**: an append made under a lease reads the lease row ``FOR SHARE`` in its
  own transaction (one query for every such append of the batch), so a process that
  takes an expired lease waits for that commit, and one whose lease was taken is
  refused (:class:`~errands.errors.LeaseLost`) -- never answered from a cache;
- **caches**: every batch bumps the ``errands_commits`` sequence; a writer that sees
  another's number drops its caches (as the SQLite store does on ``data_version``),
  and the log's primary key ``(errand_id, seq)`` refuses whatever a stale cache still
  gets wrong (the batch is then retried one operation at a time, caches dropped);
- **wake-ups** are numbered in commit order (an advisory lock held to the commit), so
  a reader that keeps the newest id it saw misses none;
- **the lease clock**: this host's steady clock, aligned once per boot to the
  database's clock (``meta`` row ``lease_clock:BOOT``): every host's leases expire on
  the database's time, and a wall clock stepped on any host moves none of them.

Writes use one connection (in the base's writer thread); reads a small pool of
autocommit connections. Durability is the server's: a commit returns once it is
flushed (``synchronous_commit`` as the server has it; ``on`` by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
import psycopg_pool
from psycopg import errors as pgerrors

from errands.clock import SYSTEM, Clock
from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.costs import spend as money
from errands.errors import LeaseLost, NotFound, SchemaTooNew, StoreError, StoreUnavailable
from errands.store.base import BaseStore, ProjectionRow, ProjectionUpdate, SpendTables, Tx
from errands.store.integrity import pending_problems, spend_problems
from errands.store.postgres import spend
from errands.store.postgres import workers as worker_rows
from errands.store.postgres.extras import PostgresExtras, drop_snapshot
from errands.store.postgres.listen import WAKE, Listener, Notified, notify
from errands.store.postgres.memory import PostgresMemory
from errands.store.postgres.policy import PolicyVersions
from errands.store.postgres.schema import migrate
from errands.store.postgres.snapshots import PostgresSnapshots
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
from errands.store.writer import Op

__all__ = ["PostgresStore", "first_value", "redacted_url", "url_password"]

_SELECT_VIEW = (
    "SELECT id, state, title, created_at, updated_at, last_seq, parent, view FROM errands"
)
_UPSERT_VIEW = (
    "INSERT INTO errands(id, state, title, created_at, updated_at, last_seq, parent,"
    " pending_count, view) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO UPDATE SET"
    " state=EXCLUDED.state, title=EXCLUDED.title, created_at=EXCLUDED.created_at,"
    " updated_at=EXCLUDED.updated_at, last_seq=EXCLUDED.last_seq, parent=EXCLUDED.parent,"
    " pending_count=EXCLUDED.pending_count, view=EXCLUDED.view"
)
_UPDATE_VIEW = (
    "UPDATE errands SET title=%s, updated_at=%s, last_seq=%s, parent=%s, view=%s WHERE id=%s"
)
_SELECT_LOG = (
    "SELECT e.seq, e.body, e.blob, b.data FROM events e LEFT JOIN blobs b"
    " ON b.hash = e.blob WHERE e.errand_id = %s"
)
_WAKEUPS_LOCK = 0x6572_7261_6E65  # pg_advisory_xact_lock key: wake-ups in commit order
CONNECT_TIMEOUT = 10  # seconds
# what errands asks of its sessions unless the URL says otherwise: a session to a host
# that vanished (a dead primary, a cut cable: no reset ever comes) fails within seconds,
# not TCP's ~15 minutes, so the process reconnects (a multi-host URL: to the new primary)
SESSION_DEFAULTS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms: data sent and unacknowledged this long: broken
}
# and, unless the server, database or role sets one, the server ends a transaction left
# idle by a process that vanished, so the locks it held (a lease row FOR SHARE) cannot
# hold a takeover back (a SET, not a startup option: connection poolers refuse those)
IDLE_IN_TRANSACTION = (
    "SELECT set_config('idle_in_transaction_session_timeout', '10s', false)"
    " WHERE current_setting('idle_in_transaction_session_timeout') = '0'"
)

log = logging.getLogger("errands.store")


def session_defaults(url: str) -> dict[str, Any]:
    """:data:`SESSION_DEFAULTS` that *url* does not set itself."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        given = {}
    return {
        k: v
        for k, v in SESSION_DEFAULTS.items()
        if k not in given and not (k == "connect_timeout" and os.environ.get("PGCONNECT_TIMEOUT"))
    }


def _set_up(conn: psycopg.Connection[Any]) -> None:
    """The writer's new session: :data:`IDLE_IN_TRANSACTION`, committed. (The readers'
    sessions run in autocommit: they are never idle in a transaction.)"""
    conn.execute(IDLE_IN_TRANSACTION)
    conn.commit()


def redacted_url(url: str) -> str:
    """*url* without its password (for messages and logs)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    if "password" in info:
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo("", **info)


def url_password(url: str) -> str | None:
    """The password *url* holds, if any (a secret the store redacts from the logs)."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(password) if password else None


def _unavailable(exc: BaseException, url: str) -> StoreUnavailable | None:
    """A failed statement's error as a condition of the world, or None (a bug, a refusal)."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, pgerrors.DiskFull | pgerrors.OutOfMemory):
        return StoreUnavailable(f"the PostgreSQL server is out of space: {exc}", "disk_full")
    if isinstance(exc, pgerrors.LockNotAvailable):
        return StoreUnavailable(f"PostgreSQL: {exc}", "locked")
    if isinstance(exc, pgerrors.ReadOnlySqlTransaction):
        return StoreUnavailable(
            f"the PostgreSQL server at {redacted_url(url)} is read-only (a standby?): give"
            " [store] url the primary (target_session_attrs=read-write)"
        )
    if isinstance(
        exc,
        psycopg.OperationalError
        | pgerrors.AdminShutdown
        | pgerrors.CannotConnectNow
        | psycopg_pool.PoolTimeout,
    ):
        return StoreUnavailable(
            f"cannot reach the PostgreSQL server at {redacted_url(url)}: {exc}".strip()
        )
    return None


class PostgresStore(PostgresSnapshots, PostgresMemory, PostgresExtras, BaseStore):
    """``PostgresStore(url)`` connects (and migrates the database); close it with
    :meth:`close`."""

    attempts = 5  # a batch that met another process's commit: run again from fresh reads
    _spend: ClassVar[SpendTables] = spend  # the budget tables' SQL

    def __init__(
        self,
        url: str,
        *,
        redactor: Redactor | None = None,
        clock: Clock = SYSTEM,
        pool_size: int = 4,
    ) -> None:
        super().__init__(redactor=redactor, clock=clock)
        self.url = url
        self._wconn = self._connect()
        try:
            migrate(self._wconn)
            self._offset = self._align_lease_clock()
            self._pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True, **session_defaults(url)},
                name="errands-readers",
                check=psycopg_pool.ConnectionPool.check_connection,  # (after a restart)
                timeout=30,
                open=True,
            )
        except BaseException:
            self._wconn.close()
            raise
        self._commit_no = -1  # the errands_commits number of this writer's last batch
        self._seen_no = -1  # the number when this batch began
        self._batch_owned: list[str] = []  # errands a batch appends to under a lease
        self._batch_leases: dict[str, str] = {}  # their lease owners, read FOR SHARE
        # what this batch gives other processes to do, NOTIFYed in its transaction:
        # a wake-up or something to claim ("wake"), and the soonest timer it set
        self._batch_wakes = False
        self._batch_timer: float | None = None
        self._reclaim_lock = threading.Lock()
        self._committing = False  # the batch reached its commit (a failure is in doubt)
        self._start_writer()

    # ---------------------------------------------------------------- connections

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=False, **session_defaults(self.url))
            try:
                _set_up(conn)
            except BaseException:
                conn.close()
                raise
            return conn
        except psycopg.Error as exc:
            condition = _unavailable(exc, self.url)
            raise condition or exc from None

    def _align_lease_clock(self) -> float:
        """The offset from this host's steady clock to the database's lease clock, kept
        per boot (the first process of a boot measures it; later ones read it)."""
        key = f"lease_clock:{self.time.boot_id()}"
        with self._wconn.transaction():
            row = self._wconn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
            if row is not None:
                return float(row[0])
            db_now = first_value(
                self._wconn, "SELECT extract(epoch FROM clock_timestamp())::float8"
            )
            offset = float(db_now) - self.time.steady()
            self._wconn.execute(
                "INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (key, repr(offset)),
            )
            return float(first_value(self._wconn, "SELECT value FROM meta WHERE key = %s", (key,)))

    def _lease_now(self) -> float:
        return self.time.steady() + self._offset

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read on a pooled autocommit connection (any thread)."""
        try:
            with self._pool.connection() as conn:
                rows: list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
                return rows
        except ev.EventTooNew as exc:
            raise SchemaTooNew(f"this store was written by a newer errands: {exc}") from None
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            condition = _unavailable(exc, self.url)
            if condition is None:
                raise
            raise condition from exc

    # ---------------------------------------------------------------- transactions

    def _run_tx(self, batch: list[Op]) -> None:
        """The batch in one transaction; run again from fresh reads (caches dropped)
        when it met another process's commit: a log row numbered from a view that was
        stale (the primary key refused it), or a deadlock. Nothing of a failed attempt
        was written; the last attempt's failure is the batch's."""
        self._batch_owned = sorted(
            {op.errand_id for op in batch if op.fn is None and op.owner is not None}
        )
        for attempt in range(self.attempts):
            self._committing = False
            try:
                super()._run_tx(batch)
                return
            except (pgerrors.UniqueViolation, pgerrors.DeadlockDetected):
                if attempt == self.attempts - 1:
                    raise
            except psycopg.OperationalError:
                # the session was gone before the batch reached its commit (a restarted
                # server, a failover, an idle connection cut): nothing of it was written,
                # so it runs again on a new session. A session lost *during* the commit
                # is not retried: whether it committed is unknown (StoreUnavailable).
                if self._committing or not self._wconn.broken or attempt == self.attempts - 1:
                    raise
            self._forget()
            self._commit_no = -1
            for op in batch:
                op.result = op.error = None

    def _begin(self) -> psycopg.Connection[Any]:
        if self._wconn.closed or self._wconn.broken:
            self._wconn = self._connect()  # (a restarted server, a failover: a new session)
        return self._wconn

    def _written_elsewhere(self, conn: psycopg.Connection[Any]) -> bool:
        self._batch_leases = {}
        self._batch_wakes, self._batch_timer = False, None  # (a batch begins)
        if self._batch_owned:  # fencing: these leases cannot change hands before our commit
            rows = conn.execute(
                "SELECT errand_id, owner FROM leases WHERE errand_id = ANY(%s)"
                " ORDER BY errand_id FOR SHARE",
                (self._batch_owned,),
            ).fetchall()
            self._batch_leases = {str(e): str(o) for e, o in rows}
        self._seen_no = int(first_value(conn, "SELECT last_value FROM errands_commits"))
        return self._seen_no != self._commit_no

    def _commit(self, conn: psycopg.Connection[Any]) -> None:
        self._committing = True
        number = int(first_value(conn, "SELECT nextval('errands_commits')"))
        # another process's number between the batch's start and now: it may have
        # committed meanwhile, so the next batch starts with empty caches
        self._commit_no = number if number == self._seen_no + 1 else -1
        # the workers that LISTEN look now (delivered at the commit, never before it)
        if self._batch_wakes:
            notify(conn, WAKE, "wake")
        if self._batch_timer is not None:
            notify(conn, WAKE, f"timer {self._batch_timer!r}")
        conn.commit()

    def _rollback(self, conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()

    def _unavailable(self, exc: BaseException) -> StoreUnavailable | None:
        return _unavailable(exc, self.url)

    def _probe_write(self, tx: Tx) -> None:
        tx.conn.execute("INSERT INTO meta(key, value) VALUES ('probe', '') ON CONFLICT DO NOTHING")
        tx.conn.execute("DELETE FROM meta WHERE key = 'probe'")

    # ---------------------------------------------------------------- writes

    def _load_view(self, tx: Tx, errand_id: str) -> ErrandView | None:
        row = tx.conn.execute(_SELECT_VIEW + " WHERE id = %s", (errand_id,)).fetchone()
        return None if row is None else view_from_row(row)

    def _exists(self, tx: Tx, errand_id: str) -> bool:
        found = tx.conn.execute("SELECT 1 FROM errands WHERE id = %s", (errand_id,)).fetchone()
        return found is not None

    def _write(self, tx: Tx, upserts: list[ProjectionRow], updates: list[ProjectionUpdate]) -> None:
        conn = tx.conn
        with conn.cursor() as cur:
            if tx.blobs:
                cur.executemany(
                    "INSERT INTO blobs(hash, data) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    sorted(tx.blobs.items()),
                )
            if tx.rows:
                cur.executemany(
                    "INSERT INTO events(errand_id, seq, type, at, body, blob)"
                    " VALUES (%s,%s,%s,%s,%s,%s)",
                    tx.rows,
                )
            if upserts:
                cur.executemany(_UPSERT_VIEW, sorted(upserts))
            if updates:
                cur.executemany(_UPDATE_VIEW, sorted(updates, key=lambda u: u[-1]))
            if tx.wakeups or any(row[1] == "queued" for row in upserts):
                self._batch_wakes = True  # (written to by a person, or a new errand)
            if tx.wakeups:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_WAKEUPS_LOCK,))
                cur.executemany(
                    "INSERT INTO wakeups(errand_id, at) VALUES (%s, %s)",
                    [(e, tx.now) for e in tx.wakeups],
                )

    def _lease_owner(self, tx: Tx, errand_id: str) -> str | None:
        if errand_id in self._batch_owned:
            return self._batch_leases.get(errand_id)
        row = tx.conn.execute(
            "SELECT owner FROM leases WHERE errand_id = %s FOR SHARE", (errand_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _check_lease(self, tx: Tx, errand_id: str, owner: str) -> None:
        # (never from the writer's cache: another host may have taken the lease)
        holder = self._lease_owner(tx, errand_id)
        if holder != owner:  # fencing: a process paused or cut off past its lease
            log.warning("errand %s: a write by %s refused: the lease is %s's now",
                        errand_id, owner, holder or "nobody")  # fmt: skip
            raise LeaseLost(f"errand {errand_id} is owned by another process now")

    def _take_lease(self, tx: Tx, errand_id: str, owner: str, until: float) -> bool:
        now = self._lease_now()
        cur = tx.conn.execute(
            "INSERT INTO leases(errand_id, owner, expires_at, taken_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (errand_id) DO UPDATE SET owner = EXCLUDED.owner,"
            " expires_at = EXCLUDED.expires_at, taken_at = CASE WHEN leases.owner ="
            " EXCLUDED.owner THEN leases.taken_at ELSE EXCLUDED.taken_at END"
            " WHERE leases.owner = EXCLUDED.owner OR leases.expires_at <= %s",
            (errand_id, owner, until, now, now),
        )
        taken = cur.rowcount == 1
        if taken and errand_id in self._batch_owned:
            self._batch_leases[errand_id] = owner
        return bool(taken)

    # claims: the rows of runnable errands nobody holds are locked to this claim's
    # commit, and those another process is claiming (or writing) skipped -- workers on
    # many hosts claiming at once take different errands, and none waits for another

    def _free_active(self, tx: Tx, lease_now: float, limit: int) -> list[str]:
        rows = tx.conn.execute(
            "SELECT e.id FROM errands e LEFT JOIN leases l ON l.errand_id = e.id"
            " WHERE e.state IN ('queued', 'running')"
            " AND (l.owner IS NULL OR l.expires_at <= %s) ORDER BY e.updated_at LIMIT %s"
            " FOR UPDATE OF e SKIP LOCKED",
            (lease_now, limit),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _free_due(self, tx: Tx, now: float, lease_now: float, limit: int) -> list[str]:
        rows = tx.conn.execute(
            "SELECT e.id FROM timers t JOIN errands e ON e.id = t.errand_id"
            " LEFT JOIN leases l ON l.errand_id = e.id"
            " WHERE t.wake_at <= %s AND e.state = 'sleeping'"
            " AND (l.owner IS NULL OR l.expires_at <= %s) ORDER BY t.wake_at LIMIT %s"
            " FOR UPDATE OF e SKIP LOCKED",
            (now, lease_now, limit),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _set_timer(self, tx: Tx, errand_id: str, wake_at: float) -> None:
        tx.conn.execute(
            "INSERT INTO timers(errand_id, wake_at) VALUES (%s, %s)"
            " ON CONFLICT (errand_id) DO UPDATE SET wake_at = EXCLUDED.wake_at",
            (errand_id, wake_at),
        )
        if self._batch_timer is None or wake_at < self._batch_timer:
            self._batch_timer = wake_at

    def _renew_leases(self, tx: Tx, owner: str, until: float) -> set[str]:
        rows = tx.conn.execute(
            "UPDATE leases SET expires_at = %s WHERE owner = %s RETURNING errand_id",
            (until, owner),
        ).fetchall()
        spend.extend(tx.conn, owner, until)
        now = self._lease_now()
        worker_rows.beat(tx.conn, owner, now, tx.now, until - now)  # (its heartbeat)
        return {str(r[0]) for r in rows}

    def _drop_lease(self, tx: Tx, errand_id: str, owner: str) -> None:
        freed = tx.conn.execute(
            "DELETE FROM leases WHERE errand_id = %s AND owner = %s"
            " RETURNING (SELECT state FROM errands WHERE id = leases.errand_id)",
            (errand_id, owner),
        ).fetchone()
        if freed is not None and freed[0] in ("queued", "running"):
            self._batch_wakes = True  # given back unfinished: another process may take it
        if self._batch_leases.get(errand_id) == owner:
            del self._batch_leases[errand_id]

    def _admit(
        self, tx: Tx, hold: str, caps: Sequence[money.Cap], amount: int, ttl: float
    ) -> money.CapReached | None:
        # two processes admitting against one cap at once: each scope's check and hold
        # are serialised (transaction-level advisory locks, in a fixed order), so their
        # sum can never pass it
        for scope in sorted({cap.scope for cap in caps}):
            tx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (scope,))
        return super()._admit(tx, hold, caps, amount, ttl)

    def _log_bodies(self, tx: Tx, errand_id: str) -> list[tuple[int, str, str | None]]:
        return log_bodies(tx.conn.execute(_SELECT_LOG + " ORDER BY e.seq", (errand_id,)))

    def _rewrite_body(self, tx: Tx, errand_id: str, seq: int, body: str) -> None:
        tx.conn.execute(
            "UPDATE events SET body = %s, blob = NULL WHERE errand_id = %s AND seq = %s",
            (body, errand_id, seq),
        )
        drop_snapshot(tx.conn, errand_id)  # (a purge: the snapshot holds what goes)

    def _drop_orphan_blobs(self, tx: Tx, hashes: Sequence[str]) -> None:
        for h in hashes:
            tx.conn.execute(
                "DELETE FROM blobs WHERE hash = %s"
                " AND NOT EXISTS (SELECT 1 FROM events WHERE blob = %s)",
                (h, h),
            )

    async def _after_purge(self) -> None:
        # the old row versions stay in the table's pages until a VACUUM marks them free
        await asyncio.to_thread(self._vacuum)

    def _vacuum(self, *tables: str) -> None:
        """VACUUM *tables* (default: the log's): old row versions become free space."""
        names = ", ".join(tables or ("events", "blobs", "errands", "snapshots", "snapshot_parts"))
        with self._reclaim_lock:
            try:
                with self._pool.connection() as conn:
                    conn.execute(f"VACUUM {names}")
            except psycopg.Error as exc:
                raise StoreError(f"could not VACUUM the store's tables: {exc}") from exc

    def _database_bytes(self) -> int:
        return int(self._rows("SELECT pg_database_size(current_database())")[0][0])

    def _errand_ids(self, tx: Tx) -> list[str]:
        rows = tx.conn.execute("SELECT DISTINCT errand_id FROM events ORDER BY errand_id")
        return [str(r[0]) for r in rows.fetchall()]

    # ---------------------------------------------------------------- reads

    def _read_log(self, errand_id: str, after: int) -> list[StoredEvent]:
        rows = self._rows(_SELECT_LOG + " AND e.seq > %s ORDER BY e.seq", (errand_id, after))
        return stored_events(errand_id, rows)

    def _read_latest(self, errand_id: str, limit: int, before: int | None) -> list[StoredEvent]:
        bound = MAX_SEQ if before is None else before
        rows = self._rows(
            _SELECT_LOG + " AND e.seq < %s ORDER BY e.seq DESC LIMIT %s", (errand_id, bound, limit)
        )
        return stored_events(errand_id, reversed(rows))

    def _read_view(self, errand_id: str) -> ErrandView:
        rows = self._rows(_SELECT_VIEW + " WHERE id = %s", (errand_id,))
        if not rows:
            raise NotFound(f"no errand {errand_id}")
        return view_from_row(rows[0])

    async def find(self, prefix: str) -> str:
        rows = self._rows(
            "SELECT id FROM errands WHERE id >= %s AND id < %s ORDER BY id LIMIT 2",
            (prefix, prefix + "\U0010ffff"),
        )
        return found_errand(prefix, rows)

    def _list(self, states: Sequence[ErrandState] | None, limit: int) -> list[ErrandView]:
        sql, params = _SELECT_VIEW, list[Any]()
        if states:
            sql += " WHERE state = ANY(%s)"
            params.append([s.value for s in states])
        sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
        params.append(limit)
        return [view_from_row(r) for r in self._rows(sql, params)]

    async def children(self, errand_id: str) -> list[ErrandView]:
        sql = _SELECT_VIEW + " WHERE parent = %s ORDER BY created_at, id"
        return [view_from_row(r) for r in self._rows(sql, (errand_id,))]

    def _pending(self) -> list[PendingApproval]:
        return pending_of(self._rows(_SELECT_VIEW + " WHERE pending_count > 0 ORDER BY updated_at"))

    async def lease_holder(self, errand_id: str) -> tuple[str, float] | None:
        # (until when on this host's steady clock, as the SQLite store says it)
        rows = self._rows("SELECT owner, expires_at FROM leases WHERE errand_id = %s", (errand_id,))
        return None if not rows else (str(rows[0][0]), float(rows[0][1]) - self._offset)

    async def changed_since(self, since: float) -> list[tuple[str, int, float]]:
        rows = self._rows(
            "SELECT id, last_seq, updated_at FROM errands WHERE updated_at > %s"
            " ORDER BY updated_at",
            (since,),
        )
        return changes(rows)

    async def wakeups(self, after: int) -> tuple[int, list[str]]:
        rows = self._rows("SELECT id, errand_id FROM wakeups WHERE id > %s ORDER BY id", (after,))
        return wakeups_after(after, rows, lambda: self._rows("SELECT max(id) FROM wakeups")[0][0])

    def _usage(self, since: float, errand_id: str | None) -> list[UsageRow]:
        sql = (
            "SELECT e.errand_id, e.at, COALESCE(b.data, e.body) FROM events e"
            " LEFT JOIN blobs b ON b.hash = e.blob"
            " WHERE e.type IN ('model_responded', 'model_used') AND e.at >= %s"
        )
        params: list[Any] = [since]
        if errand_id is not None:
            sql += " AND e.errand_id = %s"
            params.append(errand_id)
        return usage_rows(self._rows(sql + " ORDER BY e.at, e.errand_id, e.seq", params))

    def _budget_now(self, now: float, lease_now: float, daily: bool) -> tuple[int, int, int]:
        with self._pool.connection() as conn:
            spent = spend.spent(conn, money.DAY, now)
            if daily:
                held, calls = spend.held_total(conn, money.DAY, lease_now)
            else:
                held, calls = spend.held_all(conn, lease_now)
        return spent, held, calls

    def _all_ids(self) -> list[str]:
        return [str(r[0]) for r in self._rows("SELECT DISTINCT errand_id FROM events ORDER BY 1")]

    def _integrity_extra(self) -> list[str]:
        problems = pending_problems(self._rows("SELECT id, pending_count, view FROM errands"))
        orphans = self._rows(
            "SELECT id FROM errands e WHERE NOT EXISTS"
            " (SELECT 1 FROM events v WHERE v.errand_id = e.id)"
        )
        problems.extend(f"{errand_id}: a projection without a log" for (errand_id,) in orphans)
        with self._pool.connection() as conn:
            expected, actual = spend.expected(conn), spend.totals(conn)
        return problems + spend_problems(expected, actual)

    async def workers(self) -> list[worker_rows.WorkerRow]:
        """The processes that run errands from this store, live first (errands workers)."""

        def read() -> list[worker_rows.WorkerRow]:
            with self._pool.connection() as conn:
                return worker_rows.listing(conn, self._lease_now())

        return await asyncio.to_thread(read)

    async def worker_stopped(self, owner: str) -> None:
        """*owner* stopped cleanly: it is no longer listed."""

        def op(tx: Tx) -> None:
            worker_rows.gone(tx.conn, owner)

        await self._submit(op)

    @property
    def policies(self) -> PolicyVersions:
        """The policy's versions (every process decides by the newest)."""
        return PolicyVersions(self._pool)

    def listen(self, notified: Notified, channels: Sequence[str] = (WAKE,)) -> Listener:
        """Call *notified(channel, payload)* (on a thread of its own) when another
        process's commit gives this one something to do; started here."""
        return Listener(self.url, channels, notified, session_defaults(self.url)).start()

    # ---------------------------------------------------------------- closing

    def _close_backend(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._wconn.close()
        self._pool.close()


def first_value(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the one row *sql* returns."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]
