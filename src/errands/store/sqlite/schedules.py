"""Schedules in SQLite (migration ``0006_schedules``): the hooks of
:class:`errands.store.schedules.ScheduleOps` and the reads.

- ``schedules``: one row per schedule -- its definition and status as JSON, its next
  slot, and ``due_at`` (indexed) for the scheduler's one query of what is due;
- ``schedule_runs``: the slot keys, ``PRIMARY KEY (schedule, slot)`` -- the exactly-once
  guarantee is this key;
- ``watch_items``: the item keys a watch saw, with when it last saw each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from errands.costs.spend import schedule_scope, usd
from errands.errors import NotFound
from errands.store.protocol import RunRow, ScheduleRow
from errands.store.schedules import run_from_row, run_values, schedule_from_row, schedule_values
from errands.store.writer import Tx

__all__ = ["MIGRATION", "SQLiteSchedules"]

MIGRATION = """
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    next_at REAL,
    due_at REAL,
    status TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX schedules_due ON schedules(due_at) WHERE paused = 0 AND due_at IS NOT NULL;
CREATE TABLE schedule_runs (
    schedule TEXT NOT NULL,
    slot INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    errand_id TEXT,
    count INTEGER NOT NULL DEFAULT 1,
    reason TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL,
    PRIMARY KEY (schedule, slot)
) WITHOUT ROWID;
CREATE TABLE watch_items (
    schedule TEXT NOT NULL,
    key TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (schedule, key)
) WITHOUT ROWID;
"""

_COLUMNS = "spec, paused, next_at, due_at, status, updated_at, version"
_CHUNK = 500  # keys per IN (...) query


class SQLiteSchedules:
    """Mixed into :class:`~errands.store.sqlite.SQLiteStore`."""

    if TYPE_CHECKING:

        def _reader(self) -> sqlite3.Connection: ...

    # ---------------------------------------------------------- hooks (writer thread)

    def _get_schedule(self, tx: Tx, name: str) -> ScheduleRow | None:
        found = tx.conn.execute(
            f"SELECT {_COLUMNS} FROM schedules WHERE name = ?", (name,)
        ).fetchone()
        return None if found is None else schedule_from_row(found)

    def _set_schedule(self, tx: Tx, row: ScheduleRow, *, new: bool) -> None:
        values = schedule_values(row)
        if new:
            tx.conn.execute(
                f"INSERT INTO schedules({_COLUMNS}, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values
            )
        else:
            tx.conn.execute(
                "UPDATE schedules SET spec = ?, paused = ?, next_at = ?, due_at = ?, status = ?,"
                " updated_at = ?, version = ? WHERE name = ?",
                values,
            )

    def _delete_schedule(self, tx: Tx, name: str) -> bool:
        gone = tx.conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount
        tx.conn.execute("DELETE FROM schedule_runs WHERE schedule = ?", (name,))
        tx.conn.execute("DELETE FROM watch_items WHERE schedule = ?", (name,))
        return bool(gone)

    def _add_run(self, tx: Tx, run: RunRow) -> bool:
        added = tx.conn.execute(
            "INSERT INTO schedule_runs(schedule, slot, outcome, errand_id, count, reason, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            run_values(run),
        ).rowcount
        return bool(added)

    def _seen(self, tx: Tx, name: str, keys: Sequence[str], since: float) -> dict[str, float]:
        return _seen(tx.conn, name, keys, since)

    def _mark_seen(self, tx: Tx, name: str, keys: Sequence[str], now: float) -> None:
        tx.conn.executemany(
            "INSERT INTO watch_items(schedule, key, seen_at) VALUES (?, ?, ?)"
            " ON CONFLICT(schedule, key) DO UPDATE SET seen_at = excluded.seen_at",
            [(name, key, now) for key in keys],
        )

    def _forget_seen(self, tx: Tx, name: str, before: float) -> None:
        tx.conn.execute(
            "DELETE FROM watch_items WHERE schedule = ? AND seen_at < ?", (name, before)
        )

    # ---------------------------------------------------------- reads

    async def schedules(self) -> list[ScheduleRow]:
        rows = self._reader().execute(f"SELECT {_COLUMNS} FROM schedules ORDER BY name")
        return [schedule_from_row(r) for r in rows]

    async def schedule(self, name: str) -> ScheduleRow:
        found = (
            self._reader()
            .execute(f"SELECT {_COLUMNS} FROM schedules WHERE name = ?", (name,))
            .fetchone()
        )
        if found is None:
            raise NotFound(f"no schedule named {name!r}")
        return schedule_from_row(found)

    async def schedule_runs(self, name: str, limit: int = 20) -> list[RunRow]:
        rows = self._reader().execute(
            "SELECT schedule, slot, outcome, errand_id, count, reason, at FROM schedule_runs"
            " WHERE schedule = ? ORDER BY slot DESC LIMIT ?",
            (name, limit),
        )
        return [run_from_row(r) for r in rows]

    async def due_schedules(self, now: float, limit: int) -> list[ScheduleRow]:
        rows = self._reader().execute(
            f"SELECT {_COLUMNS} FROM schedules WHERE paused = 0 AND due_at IS NOT NULL"
            " AND due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit),
        )
        return [schedule_from_row(r) for r in rows]

    async def next_due(self) -> float | None:
        found = (
            self._reader()
            .execute("SELECT min(due_at) FROM schedules WHERE paused = 0 AND due_at IS NOT NULL")
            .fetchone()
        )
        return None if found is None or found[0] is None else float(found[0])

    async def schedule_spent(self, name: str, at: float) -> float:
        found = (
            self._reader()
            .execute("SELECT nanos FROM spend WHERE scope = ?", (schedule_scope(name, at),))
            .fetchone()
        )
        return 0.0 if found is None else usd(int(found[0]))

    async def seen_items(self, name: str, keys: Sequence[str], since: float) -> set[str]:
        return set(_seen(self._reader(), name, keys, since))


def _seen(
    conn: sqlite3.Connection, name: str, keys: Sequence[str], since: float
) -> dict[str, float]:
    out: dict[str, float] = {}
    for i in range(0, len(keys), _CHUNK):
        chunk = list(keys[i : i + _CHUNK])
        marks = ",".join("?" * len(chunk))
        for key, seen_at in conn.execute(
            f"SELECT key, seen_at FROM watch_items WHERE schedule = ? AND seen_at >= ?"
            f" AND key IN ({marks})",
            (name, since, *chunk),
        ):
            out[str(key)] = float(seen_at)
    return out
