"""MCP pins in SQLite (migration ``0008_mcp_pins``).

- ``mcp_pins``: one row per approved tool -- ``(server, tool)``, the digest, the
  definition it was taken over (canonical JSON, for diffs), who approved it and when;
- ``mcp_pin_log``: every approval and every pin dropped, in order (who pinned what, when).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from errands.core.canonical import canonical_json
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


def _pin(row: Sequence[Any]) -> McpPin:
    server, tool, digest, definition, by, at = row
    return McpPin(str(server), str(tool), str(digest), json.loads(definition), str(by), float(at))


class SQLiteMcpPins:
    """Mixed into :class:`~errands.store.sqlite.SQLiteStore`."""

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
        return [_pin(r) for r in rows]

    async def pin_mcp(
        self, server: str, pins: Sequence[McpPin], *, drop: Sequence[str] = (), by: str = ""
    ) -> None:
        rows = [
            (server, p.tool, p.digest, canonical_json(p.definition), by or p.pinned_by)
            for p in pins
        ]

        def op(tx: Tx) -> None:
            for srv, tool, digest, definition, who in rows:
                tx.conn.execute(
                    f"INSERT INTO mcp_pins({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(server, tool) DO UPDATE SET digest = excluded.digest,"
                    " definition = excluded.definition, pinned_by = excluded.pinned_by,"
                    " pinned_at = excluded.pinned_at",
                    (srv, tool, digest, definition, who, tx.now),
                )
                tx.conn.execute(
                    "INSERT INTO mcp_pin_log(server, tool, action, digest, by, at)"
                    " VALUES (?, ?, 'pinned', ?, ?, ?)",
                    (srv, tool, digest, who, tx.now),
                )
            for tool in drop:
                gone = tx.conn.execute(
                    "DELETE FROM mcp_pins WHERE server = ? AND tool = ?", (server, tool)
                ).rowcount
                if gone:
                    tx.conn.execute(
                        "INSERT INTO mcp_pin_log(server, tool, action, digest, by, at)"
                        " VALUES (?, ?, 'dropped', NULL, ?, ?)",
                        (server, tool, by, tx.now),
                    )

        await self._submit(op)

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
        keys = ("server", "tool", "action", "digest", "by", "at")
        return [dict(zip(keys, r, strict=True)) for r in rows]
