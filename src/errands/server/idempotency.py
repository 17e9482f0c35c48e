"""Idempotency keys for the API's creating requests, kept durably.

``POST /api/errands`` and ``POST /api/errands/{id}/messages`` accept an
``Idempotency-Key`` header: the same key (for the same request) gets the same
response, and nothing is created twice -- across retries, concurrent duplicates and
server restarts.

The keys live in their own small SQLite file, ``ERRANDS_HOME/server.sqlite`` (not in
the errand store: they are the server's bookkeeping, not part of any errand's log).
A creation is made crash-safe by *reserving* before acting: the row holding the key
is committed first, with the errand id the creation will use; the errand is created
under that id; then the response is recorded. A retry that finds a reservation
without a response looks in the store -- if the reserved errand exists, it was
created, and its response is recorded now; if not, it is created now. For a message
the row records how long the errand's log was; a retry looks for the message (same
text, from the API) after that point before sending it again.

Keys are kept for 24 hours -- measured so that a clock step cannot cut it short: a key
is dropped only once it is 24 hours older than *now* and than the newest key (which was
stamped by the same clock as it). A wall clock stepped forward by days at a restart
therefore drops nothing until a day of new keys has been stamped by the new clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from errands.clock import SYSTEM, Clock
from errands.errors import StoreError
from errands.private import private_file
from errands.store.sqlite.connection import unavailable

__all__ = ["IdempotencyStore", "KeyReused", "Reservation", "fingerprint"]

KEEP_SECONDS = 24 * 3600
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    reserved TEXT,            -- what the creation will use: an errand id, or a log length
    status INTEGER,           -- the response, once there is one
    response TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
)
"""


class KeyReused(StoreError):
    """The key was used before for a different request."""


def fingerprint(body: Any) -> str:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class _Held:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class Reservation:
    scope: str
    key: str
    reserved: str | None  # set when the row already existed without a response
    status: int | None = None
    response: Any = None

    @property
    def done(self) -> bool:
        return self.status is not None


class IdempotencyStore:
    def __init__(self, path: Path, *, clock: Clock = SYSTEM) -> None:
        self.path = path
        self.clock = clock
        private_file(path)  # 0600, as its -wal and -shm then are
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)
        self._purge()
        self._db_lock = threading.Lock()
        self._locks: dict[tuple[str, str], _Held] = {}

    def _purge(self) -> None:
        """Drop the keys older than :data:`KEEP_SECONDS`, by the wall clock *and* by the
        newest key's stamp (a clock stepped forward makes only the first say so)."""
        self._conn.execute(
            "DELETE FROM idempotency WHERE created_at < ?"
            " AND created_at < (SELECT MAX(created_at) FROM idempotency) - ?",
            (self.clock.wall() - KEEP_SECONDS, KEEP_SECONDS),
        )

    @contextlib.asynccontextmanager
    async def held(self, scope: str, key: str) -> AsyncIterator[None]:
        """Serialise requests with the same key (a duplicate waits for the first)."""
        entry = self._locks.setdefault((scope, key), _Held())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[(scope, key)]

    def _begin(self, scope: str, key: str, fp: str, reserve: str) -> Reservation:
        with self._db_lock:
            row = self._conn.execute(
                "SELECT fingerprint, reserved, status, response FROM idempotency"
                " WHERE scope = ? AND key = ?",
                (scope, key),
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO idempotency(scope, key, fingerprint, reserved, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (scope, key, fp, reserve, self.clock.wall()),
                )
                return Reservation(scope, key, reserved=None)
        if row[0] != fp:
            raise KeyReused(
                "this Idempotency-Key was used before for a different request; "
                "use a new key for a new request"
            )
        if row[2] is not None:
            return Reservation(scope, key, row[1], int(row[2]), json.loads(row[3]))
        return Reservation(scope, key, reserved=row[1])

    async def begin(self, scope: str, key: str, body: Any, reserve: str) -> Reservation:
        """Find the key, or reserve it (durably) with *reserve*; hold :meth:`held` first."""
        return await self._run(self._begin, scope, key, fingerprint(body), reserve)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """*fn* in a thread; a full disk, a held lock or an I/O error is StoreUnavailable."""
        try:
            return await asyncio.to_thread(fn, *args)
        except (sqlite3.Error, OSError) as exc:
            condition = unavailable(exc, str(self.path))
            if condition is None:
                raise
            raise condition from exc

    def _finish(self, scope: str, key: str, status: int, response: Any) -> None:
        with self._db_lock:
            self._conn.execute(
                "UPDATE idempotency SET status = ?, response = ? WHERE scope = ? AND key = ?",
                (status, json.dumps(response), scope, key),
            )

    async def finish(self, scope: str, key: str, status: int, response: Any) -> None:
        await self._run(self._finish, scope, key, status, response)

    def _forget(self, scope: str, key: str) -> None:
        with self._db_lock:
            self._conn.execute(
                "DELETE FROM idempotency WHERE scope = ? AND key = ? AND status IS NULL",
                (scope, key),
            )

    async def forget(self, scope: str, key: str) -> None:
        """Drop a reservation whose request failed before creating anything."""
        await self._run(self._forget, scope, key)

    def close(self) -> None:
        with self._db_lock:
            self._conn.close()
