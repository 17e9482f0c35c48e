"""Fold snapshots in SQLite (migration ``0013_snapshots``; errands.core.snapshot).

- ``snapshots``: one row per errand -- the sequence number it folds through, its format,
  its state and the names of its parts, in order;
- ``snapshot_parts``: the parts, by errand and name. A new snapshot writes only the
  parts the kept one lacks and deletes those it no longer names, in one transaction.

An errand's rows go in the transaction that rewrites its log (purge, compaction).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from errands.store.protocol import Snapshot
from errands.store.snapshots import SnapshotOps, snapshot_from_rows
from errands.store.writer import Tx

__all__ = ["MIGRATION", "SQLiteSnapshots", "drop"]

MIGRATION = """
CREATE TABLE snapshots (
    errand_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    format TEXT NOT NULL,
    state BLOB NOT NULL,
    parts TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE snapshot_parts (
    errand_id TEXT NOT NULL,
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (errand_id, name)
)
"""


def drop(conn: sqlite3.Connection, errand_id: str) -> None:
    """Forget the errand's snapshot (its log is being rewritten); in the caller's tx."""
    conn.execute("DELETE FROM snapshots WHERE errand_id = ?", (errand_id,))
    conn.execute("DELETE FROM snapshot_parts WHERE errand_id = ?", (errand_id,))


class SQLiteSnapshots(SnapshotOps):
    """Mixed into :class:`~errands.store.sqlite.SQLiteStore`: the hooks of
    :class:`~errands.store.snapshots.SnapshotOps`."""

    if TYPE_CHECKING:

        def _reader(self) -> sqlite3.Connection: ...

    def _read_snapshot(self, errand_id: str) -> Snapshot | None:
        conn = self._reader()
        try:
            row = conn.execute(
                "SELECT seq, format, state, parts FROM snapshots WHERE errand_id = ?",
                (errand_id,),
            ).fetchone()
            if row is None:
                return None
            parts = conn.execute(
                "SELECT name, body FROM snapshot_parts WHERE errand_id = ?", (errand_id,)
            ).fetchall()
        except sqlite3.OperationalError as exc:  # a read-only store from before 0013
            if "no such table" in str(exc):
                return None
            raise
        return snapshot_from_rows(row, parts)

    def _kept_snapshot_seq(self, tx: Tx, errand_id: str) -> int | None:
        kept = tx.conn.execute(
            "SELECT seq FROM snapshots WHERE errand_id = ?", (errand_id,)
        ).fetchone()
        return None if kept is None else int(kept[0])

    def _write_snapshot(self, tx: Tx, errand_id: str, snapshot: Snapshot) -> None:
        names = snapshot.parts
        tx.conn.executemany(
            "INSERT OR REPLACE INTO snapshot_parts(errand_id, name, body) VALUES (?, ?, ?)",
            [(errand_id, name, body) for name, body in snapshot.data.items()],
        )
        have = tx.conn.execute(
            "SELECT name FROM snapshot_parts WHERE errand_id = ?", (errand_id,)
        ).fetchall()
        wanted = set(names)
        tx.conn.executemany(
            "DELETE FROM snapshot_parts WHERE errand_id = ? AND name = ?",
            [(errand_id, n) for (n,) in have if n not in wanted],
        )
        tx.conn.execute(
            "INSERT OR REPLACE INTO snapshots(errand_id, seq, format, state, parts)"
            " VALUES (?, ?, ?, ?, ?)",
            (errand_id, snapshot.seq, snapshot.format, snapshot.state, " ".join(names)),
        )
