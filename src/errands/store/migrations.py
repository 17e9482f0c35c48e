"""Versioned schema migrations for the SQLite store (``PRAGMA user_version``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from errands.store import spend
from errands.store.base import StoreError

__all__ = ["LATEST", "MIGRATIONS", "SchemaTooNew", "migrate"]


class SchemaTooNew(StoreError):
    """The database was written by a newer errands than this one."""


_BUDGETS = """
    CREATE TABLE spend (scope TEXT PRIMARY KEY, nanos INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE budget_holds (
        hold TEXT NOT NULL,
        scope TEXT NOT NULL,
        nanos INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (hold, scope)
    ) WITHOUT ROWID;
    CREATE INDEX budget_holds_scope ON budget_holds(scope, expires_at);
    """


def _budgets(conn: sqlite3.Connection) -> None:
    _run_sql(conn, _BUDGETS)
    spend.rebuild(conn)


def _run_sql(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


# each step is SQL, or a function of the connection (run inside the step's transaction)
MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 1: the log, its projections (a cache of the fold), blobs, leases, wake-ups
    """
    CREATE TABLE events (
        errand_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        at REAL NOT NULL,
        body TEXT NOT NULL,
        blob TEXT,
        PRIMARY KEY (errand_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE errands (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        title TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_seq INTEGER NOT NULL,
        parent TEXT,
        pending_count INTEGER NOT NULL DEFAULT 0,
        view TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX errands_state ON errands(state);
    CREATE INDEX errands_created ON errands(created_at);
    CREATE INDEX errands_pending ON errands(pending_count) WHERE pending_count > 0;
    CREATE TABLE blobs (hash TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE leases (
        errand_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX leases_owner ON leases(owner);
    CREATE TABLE wakeups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        errand_id TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
    # 2: errands.view holds only the view's fields that are not columns, defaults left
    # out (readers accept the schema-1 layout too: the columns overlay it); purge finds
    # a blob's other references by index instead of scanning the log.
    """
    CREATE INDEX events_blob ON events(blob) WHERE blob IS NOT NULL;
    """,
    # 3: budgets (errands.store.spend): what was spent, a projection of the log kept per
    # day and per errand tree, backfilled from the log here; and the reservations of
    # calls in flight
    _budgets,
]

LATEST = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date in one transaction per step; return the version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > LATEST:
        raise SchemaTooNew(
            f"this store was written by a newer errands (schema version {version}; this"
            f" errands knows up to {LATEST}); upgrade errands to open it"
        )
    while version < LATEST:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current == version:  # another process may have migrated meanwhile
                step = MIGRATIONS[version]
                if isinstance(step, str):
                    _run_sql(conn, step)
                else:
                    step(conn)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    return version
