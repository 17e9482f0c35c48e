"""Where errands is in a mailbox it reads work from, in SQLite (migration ``0010_email``).

``mail_cursor``: one row per folder -- its UIDVALIDITY, the last UID errands has dealt
with, and how many mails it refused (a sender not allowed, or not authenticated). The
reader (:mod:`errands.channels.email`) moves it on after each mail, so across restarts
no mail is taken twice or skipped.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from errands.store.writer import Tx

__all__ = ["MIGRATION", "MailCursor", "SQLiteMailCursor"]

MIGRATION = """
CREATE TABLE mail_cursor (
    folder TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL,
    refused INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class MailCursor:
    folder: str
    uidvalidity: int
    last_uid: int
    refused: int = 0


class SQLiteMailCursor:
    """Mixed into :class:`~errands.store.sqlite.SQLiteStore`."""

    if TYPE_CHECKING:

        def _reader(self) -> sqlite3.Connection: ...
        async def _submit(self, fn: Any) -> Any: ...

    async def mail_cursor(self, folder: str) -> MailCursor | None:
        """Where the reader is in *folder* (None: it has not read it yet)."""
        try:
            row = (
                self._reader()
                .execute(
                    "SELECT uidvalidity, last_uid, refused FROM mail_cursor WHERE folder = ?",
                    (folder,),
                )
                .fetchone()
            )
        except sqlite3.OperationalError as exc:  # a read-only store from before 0010
            if "no such table" in str(exc):
                return None
            raise
        return None if row is None else MailCursor(folder, int(row[0]), int(row[1]), int(row[2]))

    async def move_mail_cursor(self, cursor: MailCursor) -> None:
        """Record *cursor* (durably, before this returns)."""

        def op(tx: Tx) -> None:
            tx.conn.execute(
                "INSERT INTO mail_cursor(folder, uidvalidity, last_uid, refused, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(folder) DO UPDATE SET"
                " uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid,"
                " refused = excluded.refused, updated_at = excluded.updated_at",
                (cursor.folder, cursor.uidvalidity, cursor.last_uid, cursor.refused, tx.now),
            )

        await self._submit(op)
