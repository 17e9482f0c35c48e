"""The SQLite store's schema: its named migrations, and how they are applied.

Applied names are kept in the ``migrations`` table; ``PRAGMA user_version`` holds how
many there are (so an errands from before named migrations, which reads only the
version, still refuses a store that a newer one extended). A store made before the
table existed has its first ``user_version`` migrations recorded as applied.
"""

from __future__ import annotations

import sqlite3
import time

from errands.store.migrations import Migration, to_apply
from errands.store.sqlite import (
    leaseclock,
    mail_cursor,
    mcp_pins,
    memory,
    schedules,
    snapshots,
    spend,
)

__all__ = ["MIGRATIONS", "migrate"]


def _budgets(conn: sqlite3.Connection) -> None:
    _run_sql(
        conn,
        """
        CREATE TABLE spend (scope TEXT PRIMARY KEY, nanos INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE budget_holds (
            hold TEXT NOT NULL,
            scope TEXT NOT NULL,
            nanos INTEGER NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (hold, scope)
        ) WITHOUT ROWID;
        CREATE INDEX budget_holds_scope ON budget_holds(scope, expires_at);
        """,
    )
    spend.rebuild(conn)  # backfilled from the log


MIGRATIONS: list[Migration] = [
    # the log, its projections (a cache of the fold), blobs, leases, wake-ups
    Migration(
        "0001_log",
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
    ),
    # errands.view holds only the view's fields that are not columns, defaults left out
    # (readers accept the 0001 layout too: the columns overlay it); purge finds a blob's
    # other references by index instead of scanning the log
    Migration("0002_blob_index", "CREATE INDEX events_blob ON events(blob) WHERE blob IS NOT NULL"),
    # budgets (errands.costs.spend): what was spent, kept per day and per errand tree and
    # backfilled from the log; and the reservations of calls in flight
    Migration("0003_budgets", _budgets),
    # leases and budget holds expire on the host's steady clock, not the wall clock
    # (errands.store.sqlite.leaseclock): a clock step can no longer expire them all
    Migration("0004_lease_clock", leaseclock.to_lease_clock),
    # the timers of sleeping errands (the built-in wait): wall times, claimed when due
    Migration(
        "0005_timers",
        """
        CREATE TABLE timers (errand_id TEXT PRIMARY KEY, wake_at REAL NOT NULL) WITHOUT ROWID;
        CREATE INDEX timers_due ON timers(wake_at);
        """,
    ),
    # schedules and watches: their rows, the (schedule, slot) keys, a watch's items
    Migration("0006_schedules", schedules.MIGRATION),
    # what changed lately, for a server whose errands other processes (workers) run
    Migration(
        "0007_errands_updated", "CREATE INDEX IF NOT EXISTS errands_updated ON errands(updated_at)"
    ),
    # MCP tools a person approved, over their whole definitions (errands.tools.mcp.pins)
    Migration("0008_mcp_pins", mcp_pins.MIGRATION),
    # where errands is in the mailbox it reads work from (errands.channels.email)
    Migration("0010_email", mail_cursor.MIGRATION),
    # an errand's sub-errands (docs/subagents.md): only rows with a parent are indexed
    Migration(
        "0011_subagents",
        "CREATE INDEX IF NOT EXISTS errands_parent ON errands(parent) WHERE parent IS NOT NULL",
    ),
    # memory across errands, with an FTS5 index (errands.store.sqlite.memory)
    Migration("0012_memory", memory.MIGRATION),
    # fold snapshots: a long errand resumes from one (errands.core.snapshot)
    Migration("0013_snapshots", snapshots.MIGRATION),
]

_TABLE = "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"


def _run_sql(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _state(conn: sqlite3.Connection) -> tuple[int, list[str]]:
    """(user_version, the applied names), recording the names a store from before the
    table implies. In the caller's transaction."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    conn.execute(_TABLE)
    applied = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
    if not applied and 0 < version <= len(MIGRATIONS):
        applied = [m.name for m in MIGRATIONS[:version]]
        conn.executemany(
            "INSERT INTO migrations(name, applied_at) VALUES (?, ?)",
            [(name, time.time()) for name in applied],
        )
    return version, applied


def _applied_already(conn: sqlite3.Connection) -> int | None:
    """The count applied, if nothing is left to apply -- read without the write lock, so
    that opening a store while another process writes (or holds the lock) just reads;
    None if there is something to do (or to record)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    try:
        applied = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
    except sqlite3.OperationalError:  # no such table (yet): the slow path records it
        return None
    if to_apply(MIGRATIONS, applied, version) or version != len(applied):
        return None
    return len(applied)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration not yet applied, one transaction each; return the count
    applied in all. Safe against another process migrating at the same time."""
    done = _applied_already(conn)
    if done is not None:
        return done
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version, applied = _state(conn)
            todo = to_apply(MIGRATIONS, applied, version)
            if todo:
                step = todo[0]
                if isinstance(step.step, str):
                    _run_sql(conn, step.step)
                else:
                    step.step(conn)
                conn.execute(
                    "INSERT INTO migrations(name, applied_at) VALUES (?, ?)",
                    (step.name, time.time()),
                )
                applied.append(step.name)
            if version != len(applied):
                conn.execute(f"PRAGMA user_version = {len(applied)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if len(todo) <= 1:
            return len(applied)
