"""The store backends the tests run on, and what a test needs of each beyond the protocol.

``ERRANDS_TEST_BACKENDS=sqlite,postgres`` chooses which run (default: every backend
errands has). A backend here knows how to open a fresh store in a directory (with a
test's clock), how to hold every commit back for a moment (so that appends pile up and
share one batch), and how to leave its files as a SIGKILL would.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errands.clock import Clock
from errands.store import Store
from errands.store.sqlite import SQLiteStore

__all__ = [
    "BACKENDS",
    "Backend",
    "backend",
    "dumped",
    "raw_connection",
    "store_env",
    "store_in",
]


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path, Clock | None], Store]  # a store kept in this directory
    hold_commits: Callable[[Path], AbstractContextManager[None]]  # commits wait meanwhile
    crash_copy: Callable[[Path, Path], None]  # the directory's store, as SIGKILL leaves it


def _sqlite_open(directory: Path, clock: Clock | None) -> Store:
    path = directory / "errands.sqlite"
    return SQLiteStore(path) if clock is None else SQLiteStore(path, clock=clock)


@contextmanager
def _sqlite_hold(directory: Path) -> Iterator[None]:
    blocker = sqlite3.connect(directory / "errands.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer waits for the lock: operations pile up
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def _sqlite_crash_copy(source: Path, target: Path) -> None:
    """The file and its WAL as they are: no checkpoint, no clean close."""
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        src = source / f"errands.sqlite{suffix}"
        if src.exists():
            shutil.copyfile(src, target / f"errands.sqlite{suffix}")


# PostgreSQL (tests/helpers/postgres.py): a directory names its database (its URL, in
# the file ``postgres-url``); the server is the session's, started on first use.
_PG_URL = "postgres-url"


def _pg_url(directory: Path) -> str:
    from helpers.postgres import server

    marker = directory / _PG_URL
    if marker.exists():
        return marker.read_text()
    directory.mkdir(parents=True, exist_ok=True)
    url = server().url(server().new_database())
    marker.write_text(url)
    return url


def _pg_open(directory: Path, clock: Clock | None) -> Store:
    from errands.store.postgres import PostgresStore

    url = _pg_url(directory)
    return PostgresStore(url) if clock is None else PostgresStore(url, clock=clock)


def store_in(directory: Path) -> tuple[type[Any], str | Path]:
    """The store class of the backend a directory was opened with, and what it opens
    (for a process the tests start on it -- it has no server of its own to ask)."""
    marker = directory / _PG_URL
    if marker.exists():
        from errands.store.postgres import PostgresStore

        return PostgresStore, marker.read_text()
    return SQLiteStore, directory / "errands.sqlite"


@contextmanager
def _pg_hold(directory: Path) -> Iterator[None]:
    import psycopg

    blocker = psycopg.connect(_pg_url(directory))
    # every write of a batch waits for these locks: operations pile up behind it
    blocker.execute("LOCK TABLE events, errands, leases IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def _pg_crash_copy(source: Path, target: Path) -> None:
    """The database as a SIGKILL of its client leaves it: the server ends the dead
    client's sessions (rolling back what they had not committed); the committed rest
    is what the next process opens."""
    from helpers.postgres import server

    url = _pg_url(source)
    server().disconnect(url)
    target.mkdir(parents=True, exist_ok=True)
    (target / _PG_URL).write_text(url)


_ALL = {
    "sqlite": Backend("sqlite", _sqlite_open, _sqlite_hold, _sqlite_crash_copy),
    "postgres": Backend("postgres", _pg_open, _pg_hold, _pg_crash_copy),
}

BACKENDS = [
    name.strip()
    for name in os.environ.get("ERRANDS_TEST_BACKENDS", ",".join(_ALL)).split(",")
    if name.strip()
]
for _name in BACKENDS:
    if _name not in _ALL:
        raise ValueError(
            f"ERRANDS_TEST_BACKENDS: unknown backend {_name!r} (known: {sorted(_ALL)})"
        )


def raw_connection(store: Store) -> Any:
    """A connection to *store*'s database beside it (autocommit), for a test that looks
    at or tampers with its tables: ``conn.execute(sql)``, iterating the result, ``close``."""
    from errands.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        import psycopg

        return psycopg.connect(store.url, autocommit=True)
    assert isinstance(store, SQLiteStore)
    return sqlite3.connect(store.path)


def store_env(store: Store) -> dict[str, str]:
    """The environment that points an ``errands`` command at *store* (a PostgreSQL
    store's URL; nothing for SQLite, whose file is the home's)."""
    from errands.store.postgres import PostgresStore

    return {"ERRANDS_STORE_URL": store.url} if isinstance(store, PostgresStore) else {}


def dumped(store: Store) -> str:
    """What *store* keeps outside the home, as text: a PostgreSQL store's database, as
    ``pg_dump`` writes it (a SQLite store keeps nothing outside: "")."""
    from errands.store.postgres import PostgresStore

    if not isinstance(store, PostgresStore):
        return ""
    import subprocess

    from helpers.postgres import server

    done = subprocess.run(
        [str(server().bin / "pg_dump"), "--data-only", store.url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def backend(name: str) -> Backend:
    return _ALL[name]
