"""What a person did with errands in the inbox: which they archived, and how far they read.

Both are the person's view of their errands, not something an errand did, so they are
kept out of the errands' logs: one small table in the server's own SQLite file,
``ERRANDS_HOME/server.sqlite`` (beside the idempotency keys), durable across restarts
and the same in every browser.

- **archived**: an archived errand leaves the inbox's lists (it is shown under
  *Archived*, and ``GET /api/errands?archived=true``); archiving changes nothing about
  the errand itself -- it runs, waits and can be told things as before.
- **seen**: the errand's last event seq when the person last had its page open in the
  inbox; an errand with events after that (or never opened) is *unread*.

Reads come from memory (this process is the only writer while it serves); writes go to
a thread. A write that cannot be made (a full disk, another process holding the lock)
is a :class:`StoreUnavailable` for an archive (a 503, as for every write); a read mark
that cannot be written is dropped (it is written again the next time the page is
open). Pages never fail for want of the marks: until the file can be opened they read
as none.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from errands.clock import SYSTEM, Clock
from errands.errors import StoreUnavailable
from errands.store.sqlite.connection import unavailable

__all__ = ["Marks", "marks_at"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS errand_marks (
    errand_id TEXT PRIMARY KEY,
    archived_at REAL,                 -- when the person archived it; NULL: not archived
    seen_seq INTEGER NOT NULL DEFAULT 0
)
"""


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)


class Marks:
    def __init__(self, path: Path, *, clock: Clock = SYSTEM) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._seen: dict[str, int] = {}  # errand -> seen seq, as written
        self._archived: set[str] = set()
        self._try_open()

    def _open(self) -> sqlite3.Connection:
        """The connection (made, with the table, at the first call that can); a full disk
        or a held lock is :class:`StoreUnavailable`."""
        with self._lock:
            if self._conn is not None:
                return self._conn
            conn: sqlite3.Connection | None = None
            try:
                conn = _connect(self.path)
                conn.execute("PRAGMA journal_mode=WAL")
                # (a mark lost to a power cut is a person's click to repeat, not an errand's step)
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
                rows = conn.execute(
                    "SELECT errand_id, archived_at, seen_seq FROM errand_marks"
                ).fetchall()
            except (sqlite3.Error, OSError) as exc:
                if conn is not None:
                    conn.close()
                condition = unavailable(exc, str(self.path))
                if condition is None:
                    raise
                raise condition from exc
            self._seen = {str(r[0]): int(r[2]) for r in rows}
            self._archived = {str(r[0]) for r in rows if r[1] is not None}
            self._conn = conn
            return conn

    def _try_open(self) -> None:
        """Open if it can; meanwhile (a full disk before the table was ever made) the
        marks read as none: nothing archived, nothing seen."""
        if self._conn is None:
            with contextlib.suppress(StoreUnavailable):
                self._open()

    # -- reads (from memory: this process is the only writer while it serves) ------------

    def archived(self) -> frozenset[str]:
        self._try_open()
        return frozenset(self._archived)

    def is_archived(self, errand_id: str) -> bool:
        self._try_open()
        return errand_id in self._archived

    def seen(self, errand_id: str) -> int:
        """The seq the person has seen up to (0: never opened)."""
        self._try_open()
        return self._seen.get(errand_id, 0)

    def unread(self, errand_id: str, last_seq: int) -> bool:
        return last_seq > self.seen(errand_id)

    def unread_of(self, pairs: Iterable[tuple[str, int]]) -> set[str]:
        return {eid for eid, last in pairs if self.unread(eid, last)}

    # -- writes ---------------------------------------------------------------------------

    async def _run(self, sql: str, params: tuple[object, ...]) -> None:
        def go() -> None:
            conn = self._open()
            with self._lock:
                conn.execute(sql, params)

        try:
            await asyncio.to_thread(go)
        except (sqlite3.Error, OSError) as exc:
            condition = unavailable(exc, str(self.path))
            if condition is None:
                raise
            raise condition from exc

    async def set_archived(self, errand_id: str, archived: bool) -> None:
        stamp = self.clock.wall() if archived else None
        await self._run(
            "INSERT INTO errand_marks(errand_id, archived_at) VALUES (?, ?)"
            " ON CONFLICT(errand_id) DO UPDATE SET archived_at = excluded.archived_at",
            (errand_id, stamp),
        )
        if archived:
            self._archived.add(errand_id)
        else:
            self._archived.discard(errand_id)

    async def see(self, errand_id: str, seq: int) -> None:
        """The person has seen *errand_id* up to *seq* (never moves back)."""
        if seq <= self.seen(errand_id):
            return
        try:
            await self._run(
                "INSERT INTO errand_marks(errand_id, seen_seq) VALUES (?, ?)"
                " ON CONFLICT(errand_id) DO UPDATE SET"
                " seen_seq = MAX(errand_marks.seen_seq, excluded.seen_seq)",
                (errand_id, seq),
            )
        except StoreUnavailable:
            return  # a read mark waits for the next visit
        self._seen[errand_id] = max(seq, self._seen.get(errand_id, 0))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_OPEN: dict[Path, Marks] = {}
_OPEN_LOCK = threading.Lock()


def marks_at(path: Path) -> Marks:
    """The marks kept in *path* (``server.sqlite``), opened once per process."""
    with _OPEN_LOCK:
        marks = _OPEN.get(path)
        if marks is None:
            marks = _OPEN[path] = Marks(path)
        return marks
