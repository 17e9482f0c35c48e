"""Retention in SQLite: the hooks of :class:`errands.store.compaction.RetentionOps`, the
plan (what would go, read without writing), and giving freed pages back to the file
system.

A store file made by this errands uses ``auto_vacuum = INCREMENTAL`` (set while it is
still empty, :func:`incremental_if_new`): the pages retention frees are given back with
``PRAGMA incremental_vacuum`` from a connection of its own, while the server goes on
(its writer waits a moment for the lock, as for any other writer). A file made before
has ``auto_vacuum = NONE``: its freed pages are reused by new rows, but the file does
not shrink until it is switched once with a full ``VACUUM`` (:func:`switch_to_incremental`,
``errands gc --vacuum``) -- not done by a migration, because a VACUUM rewrites the
whole file (it needs its size again in free space and holds the write lock throughout),
which no command that merely opens the store should do unasked.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from errands.errors import StoreError
from errands.store.sqlite import snapshots
from errands.store.sqlite.connection import connect
from errands.store.writer import Tx

__all__ = ["SQLiteRetention", "file_bytes", "incremental_if_new", "switch_to_incremental"]

_MODES = {0: "none", 1: "full", 2: "incremental"}
_CHUNK = 500
_FINISHED = "('done', 'failed', 'cancelled')"
# each schedule's run rows, newest first, numbered
_RANKED_RUNS = (
    "SELECT schedule, slot, outcome, errand_id,"
    " row_number() OVER (PARTITION BY schedule ORDER BY slot DESC) AS n FROM schedule_runs"
)


def incremental_if_new(conn: sqlite3.Connection) -> None:
    """A new, empty store file: make it ``auto_vacuum = INCREMENTAL`` (only possible
    before its first table, or by rewriting it)."""
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        return
    with contextlib.suppress(sqlite3.OperationalError):  # (another process got there first)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")


def switch_to_incremental(path: str) -> None:
    """Switch an existing store to ``auto_vacuum = INCREMENTAL``: a full VACUUM, which
    rewrites the file (it needs as much free disk space as the file takes; writers wait
    for it)."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
        _truncate_wal(conn)
    finally:
        conn.close()


def file_bytes(path: str) -> int:
    """The store's bytes on disk: the file and its WAL."""
    total = 0
    for name in (path, f"{path}-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(name)
    return total


def _truncate_wal(conn: sqlite3.Connection) -> None:
    for _ in range(100):
        if not conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
            return
        time.sleep(0.05)  # (a reader is in the way)


class SQLiteRetention:
    """Mixed into :class:`~errands.store.sqlite.SQLiteStore`."""

    if TYPE_CHECKING:
        path: str

        def _reader(self) -> sqlite3.Connection: ...

    # ---------------------------------------------------------- hooks (writer thread)

    def _delete_log(self, tx: Tx, errand_id: str) -> None:
        tx.conn.execute("DELETE FROM events WHERE errand_id = ?", (errand_id,))
        tx.conn.execute("DELETE FROM timers WHERE errand_id = ?", (errand_id,))
        snapshots.drop(tx.conn, errand_id)

    def _trim(
        self, tx: Tx, keep_runs: int, items_before: float, wakeups_before: float
    ) -> tuple[int, int, int]:
        conn = tx.conn
        runs = conn.execute(
            "DELETE FROM schedule_runs WHERE (schedule, slot) IN"
            f" (SELECT schedule, slot FROM ({_RANKED_RUNS}) WHERE n > ?)",
            (keep_runs,),
        ).rowcount
        items = conn.execute("DELETE FROM watch_items WHERE seen_at < ?", (items_before,)).rowcount
        # (readers track the newest id they saw: the newest row always stays)
        wakeups = conn.execute(
            "DELETE FROM wakeups WHERE at < ? AND id < (SELECT max(id) FROM wakeups)",
            (wakeups_before,),
        ).rowcount
        return int(runs), int(items), int(wakeups)

    # ---------------------------------------------------------- any thread

    def _reclaim(self) -> int:
        conn = connect(self.path)
        try:
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                return 0
            conn.execute("PRAGMA secure_delete = ON")
            free = _free_bytes(conn)
            # (executescript steps the pragma to the end: one page per step)
            conn.executescript("PRAGMA incremental_vacuum;")
            freed = free - _free_bytes(conn)
            _truncate_wal(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"could not give the freed pages back: {exc}") from exc
        finally:
            conn.close()
        return freed

    def _compaction_candidates(self, cutoff: float, keep_runs: int) -> tuple[list[str], list[str]]:
        reader = self._reader()
        old = [
            str(r[0])
            for r in reader.execute(
                f"SELECT id FROM errands WHERE state IN {_FINISHED} AND updated_at < ?"
                " AND json_extract(view, '$.compacted') IS NULL ORDER BY updated_at",
                (cutoff,),
            )
        ]
        past_runs = [
            str(r[0])
            for r in reader.execute(
                f"SELECT r.errand_id FROM ({_RANKED_RUNS}) r JOIN errands e ON e.id = r.errand_id"
                f" WHERE r.n > ? AND e.state IN {_FINISHED}"
                " AND json_extract(e.view, '$.compacted') IS NULL ORDER BY r.slot",
                (keep_runs,),
            )
        ]
        return old, past_runs

    def _log_sizes(self, errands: Sequence[str]) -> tuple[int, int]:
        return _log_sizes(self._reader(), errands)

    def _trim_counts(
        self, keep_runs: int, items_before: float, wakeups_before: float
    ) -> tuple[int, int, int]:
        reader = self._reader()
        runs = reader.execute(
            f"SELECT count(*) FROM ({_RANKED_RUNS}) WHERE n > ?", (keep_runs,)
        ).fetchone()[0]
        items = reader.execute(
            "SELECT count(*) FROM watch_items WHERE seen_at < ?", (items_before,)
        ).fetchone()[0]
        wakeups = reader.execute(
            "SELECT count(*) FROM wakeups WHERE at < ? AND id < (SELECT max(id) FROM wakeups)",
            (wakeups_before,),
        ).fetchone()[0]
        return int(runs), int(items), int(wakeups)

    def _space(self) -> tuple[int, int, str]:
        reader = self._reader()
        page = reader.execute("PRAGMA page_size").fetchone()[0]
        free = reader.execute("PRAGMA freelist_count").fetchone()[0]
        mode = reader.execute("PRAGMA auto_vacuum").fetchone()[0]
        return file_bytes(self.path), int(page) * int(free), _MODES.get(int(mode), str(mode))


def _free_bytes(conn: sqlite3.Connection) -> int:
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(page) * int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _log_sizes(conn: sqlite3.Connection, errands: Sequence[str]) -> tuple[int, int]:
    events = size = 0
    for i in range(0, len(errands), _CHUNK):
        chunk = list(errands[i : i + _CHUNK])
        count, total = conn.execute(
            "SELECT count(*), coalesce(sum(length(CAST(e.body AS BLOB))"
            " + coalesce(length(CAST(b.data AS BLOB)), 0)), 0)"
            " FROM events e LEFT JOIN blobs b ON b.hash = e.blob"
            f" WHERE e.errand_id IN ({','.join('?' * len(chunk))})",
            chunk,
        ).fetchone()
        events += int(count)
        size += int(total)
    return events, size
