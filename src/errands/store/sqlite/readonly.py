"""The SQLite store opened for reading only: ``errands ls``, ``show`` and ``cost`` on a
home this user cannot write (another user's, a read-only mount, a backup).

SQLite in WAL mode keeps a shared-memory index beside the database (``-shm``) that
every reader maps. A read-only connection (``mode=ro``) can use an existing ``-shm``
even without write access to it, but cannot create one in a directory it may not
write. So:

- ``-shm`` exists (a server runs, or one crashed): ``mode=ro`` reads everything
  committed, WAL included;
- there is no ``-shm`` and no WAL (the last writer closed cleanly, which folds the WAL
  into the file and deletes both): the file alone is the store, and it is opened
  ``immutable=1`` -- provided no server holds the home's lock, since an immutable
  reader would not notice a writer;
- a WAL without its ``-shm``: the WAL's commits cannot be read without writing the
  ``-shm``; refused, saying what to do.

Nothing is migrated (a store that needs a migration is refused the same way: it must
be opened once by its owner) and every write is refused with one clear line.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from errands.clock import SYSTEM, Clock
from errands.core import events as ev
from errands.errors import StoreError
from errands.store import health
from errands.store.base import BaseStore
from errands.store.lock import is_held
from errands.store.protocol import AppendCheck
from errands.store.sqlite.migrations import MIGRATIONS
from errands.store.sqlite.store import SQLiteStore

__all__ = ["ReadOnlySQLiteStore"]


class ReadOnlySQLiteStore(SQLiteStore):
    """``ReadOnlySQLiteStore(path)``: the store's reads, no writer; every write refused."""

    def __init__(self, path: str | Path, *, clock: Clock = SYSTEM) -> None:
        # (not SQLiteStore.__init__: no writer connection, no migration, no checkpointer)
        BaseStore.__init__(self, clock=clock)
        self.path = str(path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._data_version = -1
        self._immutable = False
        p = Path(self.path)
        if not p.exists():
            raise StoreError(
                f"there is no store at {p} yet, and this user cannot create one there; "
                "run errands as the user who owns the home, or choose another with --home"
            )
        problem = health.header_problem(p)
        if problem is not None:
            raise health.damaged(p, problem)
        try:
            conn = self._first_reader(p)
        except sqlite3.Error as exc:
            raise health.explain(p, exc, writing=False) or StoreError(
                f"cannot read the store {p}: {exc}"
            ) from None
        self._local.conn = conn
        self._readers.append(conn)

    def _first_reader(self, p: Path) -> sqlite3.Connection:
        conn = health.open_readonly(p)
        try:
            version = self._schema_of(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            if health.explain(p, exc, writing=False) is not None:
                raise
            if Path(f"{p}-wal").exists() and Path(f"{p}-wal").stat().st_size > 0:
                raise StoreError(
                    f"the store {p} has recent commits in {p}-wal that this user cannot read "
                    f"without write access to {p.parent}; run any errands command once as "
                    "the user who owns it (closing folds them into the file), or give this "
                    "user write access"
                ) from None
            if is_held(p.parent) is not False:
                raise StoreError(
                    f"errands up runs for {p.parent}, and this user cannot read its store "
                    f"while it writes (no access to {p.name}-shm); use the server's inbox, "
                    "or run errands as the user who owns the home"
                ) from None
            self._immutable = True
            conn = health.open_readonly(p, immutable=True)
            version = self._schema_of(conn)
        if version != len(MIGRATIONS):
            conn.close()
            raise StoreError(
                f"the store {p} has schema {version} where this errands has "
                f"{len(MIGRATIONS)}, and this user cannot migrate it; run errands once as "
                "the user who owns it"
                + (" (or upgrade errands)" if version > len(MIGRATIONS) else "")
            )
        return conn

    @staticmethod
    def _schema_of(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = health.open_readonly(self.path, immutable=self._immutable)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # ---------------------------------------------------------------- no writes

    def _refuse(self) -> StoreError:
        return StoreError(
            f"the store {self.path} is open read-only: this user cannot write "
            f"{Path(self.path).parent}; run errands as the user who owns it to change anything"
        )

    async def _submit(self, fn: Callable[[Any], Any]) -> Any:
        raise self._refuse()

    async def append(
        self,
        errand_id: str,
        events: Sequence[ev.Event],
        *,
        owner: str | None = None,
        guard: AppendCheck | None = None,
        stored: list[ev.Event] | None = None,
    ) -> list[int]:
        raise self._refuse()

    def _close_backend(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
