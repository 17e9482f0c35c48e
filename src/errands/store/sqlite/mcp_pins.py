"""MCP pins in SQLite (migration ``0008_mcp_pins``).

- ``mcp_pins``: one row per approved tool -- ``(server, tool)``, the digest, the
  definition it was taken over (canonical JSON, for diffs), who approved it and when;
- ``mcp_pin_log``: every approval and every pin dropped, in order (who pinned what, when).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from errands.store.mcp_pins import McpPinOps, log_entries, pin_from_row
from errands.store.protocol import McpPin
from errands.store.writer import Tx

__all__ = ["MIGRATION", "SQLiteMcpPins"]

MIGRATION = """
CREATE TABLE mcp_pins (
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    digest TEXT NOT NULL,
    definition TEXT NOT NULL,
    pinned_by TEXT NOT NULL,
    pinned_at REAL NOT NULL,
    PRIMARY KEY (server, tool)
) WITHOUT ROWID;
CREATE TABLE mcp_pin_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    action TEXT NOT NULL,
    digest TEXT,
    by TEXT NOT NULL,
    at REAL NOT NULL
);
"""

_COLUMNS = "server, tool, digest, definition, pinned_by, pinned_at"


class SQLiteMcpPins(McpPinOps):
    """Mixed into :class:`~errands.store.sqlite.SQLiteStore`: the reads and the hooks of
    :class:`~errands.store.mcp_pins.McpPinOps`."""

    if TYPE_CHECKING:

        def _reader(self) -> sqlite3.Connection: ...
        async def _submit(self, fn: Any) -> Any: ...

    async def mcp_pins(self, server: str | None = None) -> list[McpPin]:
        sql = f"SELECT {_COLUMNS} FROM mcp_pins"
        params: tuple[str, ...] = ()
        if server is not None:
            sql, params = sql + " WHERE server = ?", (server,)
        try:
            rows = self._reader().execute(sql + " ORDER BY server, tool", params).fetchall()
        except sqlite3.OperationalError as exc:  # a read-only store from before 0008
            if "no such table" in str(exc):
                return []
            raise
        return [pin_from_row(r) for r in rows]

    def _put_pin(
        self, tx: Tx, server: str, tool: str, digest: str, definition: str, by: str
    ) -> None:
        tx.conn.execute(
            f"INSERT INTO mcp_pins({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(server, tool) DO UPDATE SET digest = excluded.digest,"
            " definition = excluded.definition, pinned_by = excluded.pinned_by,"
            " pinned_at = excluded.pinned_at",
            (server, tool, digest, definition, by, tx.now),
        )

    def _drop_pin(self, tx: Tx, server: str, tool: str) -> bool:
        return bool(
            tx.conn.execute(
                "DELETE FROM mcp_pins WHERE server = ? AND tool = ?", (server, tool)
            ).rowcount
        )

    def _log_pin(
        self, tx: Tx, server: str, tool: str, action: str, digest: str | None, by: str
    ) -> None:
        tx.conn.execute(
            "INSERT INTO mcp_pin_log(server, tool, action, digest, by, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (server, tool, action, digest, by, tx.now),
        )

    async def mcp_pin_log(
        self, server: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest approvals and drops (of one server, if given), newest first."""
        sql = "SELECT server, tool, action, digest, by, at FROM mcp_pin_log"
        params: tuple[Any, ...] = ()
        if server is not None:
            sql, params = sql + " WHERE server = ?", (server,)
        try:
            rows = self._reader().execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        return log_entries(rows)
