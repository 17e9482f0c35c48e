"""Where errands is in a mailbox it reads work from, whatever the backend: one row per
folder -- its UIDVALIDITY, the last UID errands has dealt with, and how many mails it
refused. The reader (:mod:`errands.channels.email`) moves it on after each mail, so
across restarts no mail is taken twice or skipped. A backend implements the hooks below
(:mod:`errands.store.sqlite.mail_cursor`; the PostgreSQL store's extras).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from errands.store.writer import Tx

__all__ = ["MailCursor", "MailCursorOps", "cursor_from_row"]


@dataclass(frozen=True)
class MailCursor:
    folder: str
    uidvalidity: int
    last_uid: int
    refused: int = 0


def cursor_from_row(folder: str, row: Sequence[Any]) -> MailCursor:
    """*folder*'s cursor from the columns ``uidvalidity, last_uid, refused``."""
    return MailCursor(folder, int(row[0]), int(row[1]), int(row[2]))


class MailCursorOps(abc.ABC):
    """Mixed into a backend's store."""

    if TYPE_CHECKING:  # what the base store provides

        async def _submit(self, fn: Callable[[Tx], Any]) -> Any: ...

    @abc.abstractmethod
    def _put_mail_cursor(self, tx: Tx, cursor: MailCursor) -> None:
        """Insert or replace the folder's row, updated now."""

    async def move_mail_cursor(self, cursor: MailCursor) -> None:
        """Record *cursor* (durably, before this returns)."""

        def op(tx: Tx) -> None:
            self._put_mail_cursor(tx, cursor)

        await self._submit(op)
