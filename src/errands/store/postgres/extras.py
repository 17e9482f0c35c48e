"""The PostgreSQL store's smaller tables: schedules (the hooks of
:class:`errands.store.schedules.ScheduleOps`), MCP pins, the mail cursor, and retention
(the hooks of :class:`errands.store.compaction.RetentionOps` and the plan). The same
rows and keys as the SQLite store's (:mod:`errands.store.sqlite.schedules` and its
neighbours); the exactly-once guarantee of a schedule's slot is the primary key
``(schedule, slot)`` here too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from errands.costs.spend import schedule_scope, usd
from errands.errors import NotFound
from errands.store.mail_cursor import MailCursor, MailCursorOps, cursor_from_row
from errands.store.mcp_pins import McpPinOps, log_entries, pin_from_row
from errands.store.protocol import McpPin, RunRow, ScheduleRow
from errands.store.schedules import run_from_row, run_values, schedule_from_row, schedule_values
from errands.store.writer import Tx

__all__ = ["PostgresExtras", "drop_snapshot"]

_SCHEDULE = "spec, paused, next_at, due_at, status, updated_at, version"
_PIN = "server, tool, digest, definition, pinned_by, pinned_at"
_FINISHED = "('done', 'failed', 'cancelled')"
_RANKED_RUNS = (
    "SELECT schedule, slot, outcome, errand_id,"
    " row_number() OVER (PARTITION BY schedule ORDER BY slot DESC) AS n FROM schedule_runs"
)
_OLD_WAKEUPS = "FROM wakeups WHERE at < %s AND id < (SELECT max(id) FROM wakeups)"


def drop_snapshot(conn: Any, errand_id: str) -> None:
    """Forget the errand's fold snapshot (its log is being rewritten); in the caller's tx."""
    conn.execute("DELETE FROM snapshots WHERE errand_id = %s", (errand_id,))
    conn.execute("DELETE FROM snapshot_parts WHERE errand_id = %s", (errand_id,))


class PostgresExtras(McpPinOps, MailCursorOps):
    """Mixed into :class:`~errands.store.postgres.PostgresStore`."""

    if TYPE_CHECKING:

        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
        async def _submit(self, fn: Any) -> Any: ...
        def _vacuum(self, *tables: str) -> None: ...
        def _database_bytes(self) -> int: ...

    # ---------------------------------------------------------- schedules (writer thread)

    def _get_schedule(self, tx: Tx, name: str) -> ScheduleRow | None:
        found = tx.conn.execute(
            f"SELECT {_SCHEDULE} FROM schedules WHERE name = %s FOR UPDATE", (name,)
        ).fetchone()
        return None if found is None else schedule_from_row(found)

    def _set_schedule(self, tx: Tx, row: ScheduleRow, *, new: bool) -> None:
        values = schedule_values(row)
        if new:
            tx.conn.execute(
                f"INSERT INTO schedules({_SCHEDULE}, name) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                values,
            )
        else:
            tx.conn.execute(
                "UPDATE schedules SET spec = %s, paused = %s, next_at = %s, due_at = %s,"
                " status = %s, updated_at = %s, version = %s WHERE name = %s",
                values,
            )

    def _delete_schedule(self, tx: Tx, name: str) -> bool:
        gone = tx.conn.execute("DELETE FROM schedules WHERE name = %s", (name,)).rowcount
        tx.conn.execute("DELETE FROM schedule_runs WHERE schedule = %s", (name,))
        tx.conn.execute("DELETE FROM watch_items WHERE schedule = %s", (name,))
        return bool(gone)

    def _add_run(self, tx: Tx, run: RunRow) -> bool:
        added = tx.conn.execute(
            "INSERT INTO schedule_runs(schedule, slot, outcome, errand_id, count, reason, at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            run_values(run),
        ).rowcount
        return bool(added == 1)

    def _seen(self, tx: Tx, name: str, keys: Sequence[str], since: float) -> dict[str, float]:
        rows = tx.conn.execute(_SEEN, (name, since, list(keys))).fetchall()
        return {str(k): float(s) for k, s in rows}

    def _mark_seen(self, tx: Tx, name: str, keys: Sequence[str], now: float) -> None:
        with tx.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO watch_items(schedule, key, seen_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (schedule, key) DO UPDATE SET seen_at = EXCLUDED.seen_at",
                [(name, key, now) for key in sorted(set(keys))],
            )

    def _forget_seen(self, tx: Tx, name: str, before: float) -> None:
        tx.conn.execute(
            "DELETE FROM watch_items WHERE schedule = %s AND seen_at < %s", (name, before)
        )

    # ---------------------------------------------------------- schedules (reads)

    async def schedules(self) -> list[ScheduleRow]:
        return [
            schedule_from_row(r)
            for r in self._rows(f"SELECT {_SCHEDULE} FROM schedules ORDER BY name")
        ]

    async def schedule(self, name: str) -> ScheduleRow:
        rows = self._rows(f"SELECT {_SCHEDULE} FROM schedules WHERE name = %s", (name,))
        if not rows:
            raise NotFound(f"no schedule named {name!r}")
        return schedule_from_row(rows[0])

    async def schedule_runs(self, name: str, limit: int = 20) -> list[RunRow]:
        rows = self._rows(
            "SELECT schedule, slot, outcome, errand_id, count, reason, at FROM schedule_runs"
            " WHERE schedule = %s ORDER BY slot DESC LIMIT %s",
            (name, limit),
        )
        return [run_from_row(r) for r in rows]

    async def due_schedules(self, now: float, limit: int) -> list[ScheduleRow]:
        rows = self._rows(
            f"SELECT {_SCHEDULE} FROM schedules WHERE NOT paused AND due_at IS NOT NULL"
            " AND due_at <= %s ORDER BY due_at LIMIT %s",
            (now, limit),
        )
        return [schedule_from_row(r) for r in rows]

    async def next_due(self) -> float | None:
        rows = self._rows(
            "SELECT min(due_at) FROM schedules WHERE NOT paused AND due_at IS NOT NULL"
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def schedule_spent(self, name: str, at: float) -> float:
        rows = self._rows("SELECT nanos FROM spend WHERE scope = %s", (schedule_scope(name, at),))
        return 0.0 if not rows else usd(int(rows[0][0]))

    async def seen_items(self, name: str, keys: Sequence[str], since: float) -> set[str]:
        return {str(r[0]) for r in self._rows(_SEEN, (name, since, list(keys)))}

    # ---------------------------------------------------------- MCP pins

    async def mcp_pins(self, server: str | None = None) -> list[McpPin]:
        sql, params = f"SELECT {_PIN} FROM mcp_pins", tuple[str, ...]()
        if server is not None:
            sql, params = sql + " WHERE server = %s", (server,)
        return [pin_from_row(r) for r in self._rows(sql + " ORDER BY server, tool", params)]

    def _put_pin(
        self, tx: Tx, server: str, tool: str, digest: str, definition: str, by: str
    ) -> None:
        tx.conn.execute(
            f"INSERT INTO mcp_pins({_PIN}) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (server, tool) DO UPDATE SET digest = EXCLUDED.digest,"
            " definition = EXCLUDED.definition, pinned_by = EXCLUDED.pinned_by,"
            " pinned_at = EXCLUDED.pinned_at",
            (server, tool, digest, definition, by, tx.now),
        )

    def _drop_pin(self, tx: Tx, server: str, tool: str) -> bool:
        return bool(
            tx.conn.execute(
                "DELETE FROM mcp_pins WHERE server = %s AND tool = %s", (server, tool)
            ).rowcount
        )

    def _log_pin(
        self, tx: Tx, server: str, tool: str, action: str, digest: str | None, by: str
    ) -> None:
        tx.conn.execute(
            "INSERT INTO mcp_pin_log(server, tool, action, digest, by, at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (server, tool, action, digest, by, tx.now),
        )

    async def mcp_pin_log(
        self, server: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest approvals and drops (of one server, if given), newest first."""
        sql, params = (
            "SELECT server, tool, action, digest, by, at FROM mcp_pin_log",
            tuple[str, ...](),
        )
        if server is not None:
            sql, params = sql + " WHERE server = %s", (server,)
        rows = self._rows(sql + " ORDER BY id DESC LIMIT %s", (*params, limit))
        return log_entries(rows)

    # ---------------------------------------------------------- the mail cursor

    async def mail_cursor(self, folder: str) -> MailCursor | None:
        """Where the reader is in *folder* (None: it has not read it yet)."""
        rows = self._rows(
            "SELECT uidvalidity, last_uid, refused FROM mail_cursor WHERE folder = %s", (folder,)
        )
        if not rows:
            return None
        return cursor_from_row(folder, rows[0])

    def _put_mail_cursor(self, tx: Tx, cursor: MailCursor) -> None:
        tx.conn.execute(
            "INSERT INTO mail_cursor(folder, uidvalidity, last_uid, refused, updated_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (folder) DO UPDATE SET"
            " uidvalidity = EXCLUDED.uidvalidity, last_uid = EXCLUDED.last_uid,"
            " refused = EXCLUDED.refused, updated_at = EXCLUDED.updated_at",
            (cursor.folder, cursor.uidvalidity, cursor.last_uid, cursor.refused, tx.now),
        )

    # ---------------------------------------------------------- retention

    def _delete_log(self, tx: Tx, errand_id: str) -> None:
        tx.conn.execute("DELETE FROM events WHERE errand_id = %s", (errand_id,))
        tx.conn.execute("DELETE FROM timers WHERE errand_id = %s", (errand_id,))
        drop_snapshot(tx.conn, errand_id)

    def _trim(
        self, tx: Tx, keep_runs: int, items_before: float, wakeups_before: float
    ) -> tuple[int, int, int]:
        conn = tx.conn
        runs = conn.execute(
            "DELETE FROM schedule_runs WHERE (schedule, slot) IN"
            f" (SELECT schedule, slot FROM ({_RANKED_RUNS}) r WHERE n > %s)",
            (keep_runs,),
        ).rowcount
        items = conn.execute("DELETE FROM watch_items WHERE seen_at < %s", (items_before,)).rowcount
        # (readers track the newest id they saw: the newest row always stays)
        wakeups = conn.execute("DELETE " + _OLD_WAKEUPS, (wakeups_before,)).rowcount
        return int(runs), int(items), int(wakeups)

    def _reclaim(self) -> int:
        """PostgreSQL reuses the space of deleted rows after a VACUUM (autovacuum runs
        it too); the bytes given back to the file system are what the database shrank."""
        before = self._database_bytes()
        self._vacuum()
        return max(0, before - self._database_bytes())

    def _compaction_candidates(self, cutoff: float, keep_runs: int) -> tuple[list[str], list[str]]:
        old = self._rows(
            f"SELECT id FROM errands WHERE state IN {_FINISHED} AND updated_at < %s"
            " AND (view::jsonb -> 'compacted') IS NULL ORDER BY updated_at",
            (cutoff,),
        )
        past_runs = self._rows(
            f"SELECT r.errand_id FROM ({_RANKED_RUNS}) r JOIN errands e ON e.id = r.errand_id"
            f" WHERE r.n > %s AND e.state IN {_FINISHED}"
            " AND (e.view::jsonb -> 'compacted') IS NULL ORDER BY r.slot",
            (keep_runs,),
        )
        return [str(r[0]) for r in old], [str(r[0]) for r in past_runs]

    def _log_sizes(self, errands: Sequence[str]) -> tuple[int, int]:
        events, size = self._rows(
            "SELECT count(*), coalesce(sum(octet_length(e.body)"
            " + coalesce(octet_length(b.data), 0)), 0)"
            " FROM events e LEFT JOIN blobs b ON b.hash = e.blob WHERE e.errand_id = ANY(%s)",
            (list(errands),),
        )[0]
        return int(events), int(size)

    def _trim_counts(
        self, keep_runs: int, items_before: float, wakeups_before: float
    ) -> tuple[int, int, int]:
        runs = self._rows(f"SELECT count(*) FROM ({_RANKED_RUNS}) r WHERE n > %s", (keep_runs,))
        items = self._rows("SELECT count(*) FROM watch_items WHERE seen_at < %s", (items_before,))
        wakeups = self._rows("SELECT count(*) " + _OLD_WAKEUPS, (wakeups_before,))
        return int(runs[0][0]), int(items[0][0]), int(wakeups[0][0])

    def _space(self) -> tuple[int, int, str]:
        # (reclaim: a VACUUM, as the SQLite store's incremental one)
        return self._database_bytes(), 0, "incremental"


_SEEN = (
    "SELECT key, seen_at FROM watch_items WHERE schedule = %s AND seen_at >= %s AND key = ANY(%s)"
)
