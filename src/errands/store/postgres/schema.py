"""The PostgreSQL store's schema: its own named migrations, and how they are applied.

Applied names are kept in ``errands_migrations``. Opening a store applies each listed
migration not yet recorded, one transaction each, under a transaction-level advisory
lock -- two processes opening a new database at once apply each step once. A database
that recorded a step this errands does not know is refused
(:class:`~errands.errors.SchemaTooNew`), as on SQLite.

Text keys are ``COLLATE "C"`` (byte order, as SQLite compares): prefix searches on
errand ids and the ranges on budget hold names depend on it, whatever the database's
locale.
"""

from __future__ import annotations

import time
from typing import Any

from errands.store.migrations import Migration, to_apply

__all__ = ["MIGRATIONS", "migrate"]

_LOCK = 0x6572_7261_6E64  # pg_advisory_xact_lock key: "errand"

MIGRATIONS: list[Migration] = [
    # the log, its projection (a cache of the fold), blobs, leases, timers, wake-ups,
    # budgets, and the counter a writer reads to know another process committed
    Migration(
        "0001_log",
        """
        CREATE TABLE events (
            errand_id TEXT COLLATE "C" NOT NULL,
            seq BIGINT NOT NULL,
            type TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            body TEXT NOT NULL,
            blob TEXT COLLATE "C",
            PRIMARY KEY (errand_id, seq)
        );
        CREATE INDEX events_blob ON events(blob) WHERE blob IS NOT NULL;
        CREATE INDEX events_cost ON events(type, at) WHERE type IN ('model_responded', 'model_used');
        CREATE TABLE errands (
            id TEXT COLLATE "C" PRIMARY KEY,
            state TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            last_seq BIGINT NOT NULL,
            parent TEXT COLLATE "C",
            pending_count INTEGER NOT NULL DEFAULT 0,
            view TEXT NOT NULL
        );
        CREATE INDEX errands_state ON errands(state);
        CREATE INDEX errands_created ON errands(created_at);
        CREATE INDEX errands_updated ON errands(updated_at);
        CREATE INDEX errands_pending ON errands(pending_count) WHERE pending_count > 0;
        CREATE INDEX errands_parent ON errands(parent) WHERE parent IS NOT NULL;
        CREATE TABLE blobs (hash TEXT COLLATE "C" PRIMARY KEY, data TEXT NOT NULL);
        CREATE TABLE leases (
            errand_id TEXT COLLATE "C" PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX leases_owner ON leases(owner);
        CREATE TABLE timers (
            errand_id TEXT COLLATE "C" PRIMARY KEY,
            wake_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX timers_due ON timers(wake_at);
        CREATE TABLE wakeups (
            id BIGSERIAL PRIMARY KEY,
            errand_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE spend (scope TEXT COLLATE "C" PRIMARY KEY, nanos BIGINT NOT NULL);
        CREATE TABLE budget_holds (
            hold TEXT COLLATE "C" NOT NULL,
            scope TEXT COLLATE "C" NOT NULL,
            nanos BIGINT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (hold, scope)
        );
        CREATE INDEX budget_holds_scope ON budget_holds(scope, expires_at);
        CREATE SEQUENCE errands_commits
        """,
    ),
    # schedules and watches: their rows, the (schedule, slot) keys, a watch's items
    Migration(
        "0002_schedules",
        """
        CREATE TABLE schedules (
            name TEXT COLLATE "C" PRIMARY KEY,
            spec TEXT NOT NULL,
            paused BOOLEAN NOT NULL DEFAULT FALSE,
            next_at DOUBLE PRECISION,
            due_at DOUBLE PRECISION,
            status TEXT NOT NULL DEFAULT '{}',
            updated_at DOUBLE PRECISION NOT NULL,
            version BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX schedules_due ON schedules(due_at) WHERE NOT paused AND due_at IS NOT NULL;
        CREATE TABLE schedule_runs (
            schedule TEXT COLLATE "C" NOT NULL,
            slot BIGINT NOT NULL,
            outcome TEXT NOT NULL,
            errand_id TEXT,
            count INTEGER NOT NULL DEFAULT 1,
            reason TEXT NOT NULL DEFAULT '',
            at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (schedule, slot)
        );
        CREATE TABLE watch_items (
            schedule TEXT COLLATE "C" NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (schedule, key)
        )
        """,
    ),
    # MCP tools a person approved (errands.tools.mcp.pins), and where the mail reader is
    Migration(
        "0003_mcp_pins_mail",
        """
        CREATE TABLE mcp_pins (
            server TEXT COLLATE "C" NOT NULL,
            tool TEXT COLLATE "C" NOT NULL,
            digest TEXT NOT NULL,
            definition TEXT NOT NULL,
            pinned_by TEXT NOT NULL,
            pinned_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (server, tool)
        );
        CREATE TABLE mcp_pin_log (
            id BIGSERIAL PRIMARY KEY,
            server TEXT NOT NULL,
            tool TEXT NOT NULL,
            action TEXT NOT NULL,
            digest TEXT,
            by TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE mail_cursor (
            folder TEXT COLLATE "C" PRIMARY KEY,
            uidvalidity BIGINT NOT NULL,
            last_uid BIGINT NOT NULL,
            refused INTEGER NOT NULL DEFAULT 0,
            updated_at DOUBLE PRECISION NOT NULL
        )
        """,
    ),
    # memory across errands (errands.store.postgres.memory): ``words`` is the text and
    # tags lower case and without accents, indexed as a tsvector
    Migration(
        "0004_memory",
        """
        CREATE TABLE memories (
            id BIGSERIAL PRIMARY KEY,
            scope TEXT COLLATE "C" NOT NULL,
            text TEXT NOT NULL,
            tags TEXT NOT NULL,
            words TEXT NOT NULL,
            integrity TEXT NOT NULL,
            confidentiality TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            errand_id TEXT COLLATE "C",
            seq BIGINT
        );
        CREATE INDEX memories_scope ON memories(scope, id);
        CREATE UNIQUE INDEX memories_call ON memories(errand_id, seq) WHERE errand_id IS NOT NULL;
        CREATE INDEX memories_words ON memories USING gin (to_tsvector('simple', words))
        """,
    ),
    # fold snapshots: a long errand resumes from one (errands.store.postgres.snapshots)
    Migration(
        "0005_snapshots",
        """
        CREATE TABLE snapshots (
            errand_id TEXT COLLATE "C" PRIMARY KEY,
            seq BIGINT NOT NULL,
            format TEXT NOT NULL,
            state BYTEA NOT NULL,
            parts TEXT NOT NULL
        );
        CREATE TABLE snapshot_parts (
            errand_id TEXT COLLATE "C" NOT NULL,
            name TEXT COLLATE "C" NOT NULL,
            body BYTEA NOT NULL,
            PRIMARY KEY (errand_id, name)
        )
        """,
    ),
    # the policy in force, every version of it (errands.store.postgres.policy): every
    # process and host decides by the newest one
    Migration(
        "0006_policy",
        """
        CREATE TABLE policies (
            version BIGINT PRIMARY KEY,
            text TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            by TEXT NOT NULL
        )
        """,
    ),
    # the processes that run errands (errands workers): each one's lease renewal is its
    # heartbeat; and since when each lease has been held by its owner
    Migration(
        "0007_workers",
        """
        CREATE TABLE workers (
            owner TEXT COLLATE "C" PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL,
            lease_seconds DOUBLE PRECISION NOT NULL
        );
        ALTER TABLE leases ADD COLUMN taken_at DOUBLE PRECISION
        """,
    ),
]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS errands_migrations"
    " (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)


def _applied(conn: Any) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute("SELECT name FROM errands_migrations ORDER BY applied_at, name")
    ]


def migrate(conn: Any) -> int:
    """Apply every migration not yet applied, one transaction each (*conn* is a psycopg
    connection not in autocommit); return the count applied in all."""
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass('errands_migrations')").fetchone()[0]
        if exists is not None and not to_apply(MIGRATIONS, _applied(conn)):
            return len(MIGRATIONS)
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            conn.execute(_TABLE)
            applied = _applied(conn)
            todo = to_apply(MIGRATIONS, applied)
            if not todo:
                return len(applied)
            step = todo[0]
            if isinstance(step.step, str):
                for statement in step.step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                step.step(conn)
            conn.execute(
                "INSERT INTO errands_migrations(name, applied_at) VALUES (%s, %s)",
                (step.name, time.time()),
            )
