"""Where errands is in a mailbox it reads work from, in SQLite (migration ``0010_email``).

``mail_cursor``: one row per folder -- its UIDVALIDITY, the last UID errands has dealt
with, and how many mails it refused (a sender not allowed, or not authenticated). The
reader (:mod:`errands.channels.email`) moves it on after each mail, so across restarts
no mail is taken twice or skipped.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from errands.store.mail_cursor import MailCursor, MailCursorOps, cursor_from_row
from errands.store.writer import Tx

__all__ = ["MIGRATION", "MailCursor", "SQLiteMailCursor"]  # (MailCursor: errands.store.mail_cursor)

MIGRATION = """
CREATE TABLE mail_cursor (
    folder TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL,
    refused INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
) WITHOUT ROWID
"""


class SQLiteMailCursor(MailCursorOps):
    """Mixed into :class:`~errands.store.sqlite.SQLiteStore`: the read and the hook of
    :class:`~errands.store.mail_cursor.MailCursorOps`."""

    if TYPE_CHECKING:

        def _reader(self) -> sqlite3.Connection: ...

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
        return None if row is None else cursor_from_row(folder, row)

    def _put_mail_cursor(self, tx: Tx, cursor: MailCursor) -> None:
        tx.conn.execute(
            "INSERT INTO mail_cursor(folder, uidvalidity, last_uid, refused, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(folder) DO UPDATE SET"
            " uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid,"
            " refused = excluded.refused, updated_at = excluded.updated_at",
            (cursor.folder, cursor.uidvalidity, cursor.last_uid, cursor.refused, tx.now),
        )
