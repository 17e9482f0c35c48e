"""``errands doctor`` on a PostgreSQL store: the connection, the server's version, the
migrations, and replication -- what this server's commits are durable on.

One call, read-only: it connects, reads, and closes; it never migrates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from errands.store.migrations import to_apply
from errands.store.postgres.schema import MIGRATIONS
from errands.store.postgres.store import CONNECT_TIMEOUT, first_value, redacted_url

__all__ = ["PostgresHealth", "check"]

MIN_VERSION = 130000  # PostgreSQL 13 (server_version_num)


@dataclass
class PostgresHealth:
    ok: bool = True
    problems: list[str] = field(default_factory=list)  # one line each: what to fix
    notes: list[str] = field(default_factory=list)


def check(url: str) -> PostgresHealth:
    """What ``errands doctor`` says about the PostgreSQL store at *url*."""
    where = redacted_url(url)
    out = PostgresHealth()
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        out.ok = False
        out.problems.append(
            f"cannot reach the PostgreSQL server at {where}: {first} -- check [store] url"
            " (or ERRANDS_STORE_URL), the server and its pg_hba.conf"
        )
        return out
    with conn:
        version = int(first_value(conn, "SHOW server_version_num"))
        shown = first_value(conn, "SHOW server_version")
        out.notes.append(f"PostgreSQL {shown} at {where}")
        if version < MIN_VERSION:
            out.problems.append(f"PostgreSQL {shown} is too old: errands needs 13 or newer")
        if first_value(conn, "SELECT to_regclass('errands_migrations')") is None:
            out.notes.append("no errands tables yet (the first errand makes them)")
        else:
            applied = [str(r[0]) for r in conn.execute("SELECT name FROM errands_migrations")]
            try:
                todo = to_apply(MIGRATIONS, applied)
            except Exception as exc:  # SchemaTooNew: written by a newer errands
                out.problems.append(str(exc))
            else:
                out.notes.append(
                    f"{len(applied)} migrations applied"
                    + (f", {len(todo)} to apply at the next start" if todo else "")
                )
        _policy_and_workers(conn, out)
        if first_value(conn, "SELECT pg_is_in_recovery()"):
            out.problems.append(
                f"{where} is a standby (read-only): point [store] url at the primary, or list"
                " every host with target_session_attrs=read-write"
            )
        sync_names = first_value(conn, "SHOW synchronous_standby_names")
        sync_commit = first_value(conn, "SHOW synchronous_commit")
        standbys = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE sync_state IN ('sync', 'quorum'))"
            " FROM pg_stat_replication"
        ).fetchone()
        assert standbys is not None
        if sync_names and sync_commit in ("on", "remote_write", "remote_apply"):
            out.notes.append(
                f"commits wait for a synchronous standby ({standbys[1]} of {standbys[0]}"
                f" streaming standbys synchronous; synchronous_commit = {sync_commit})"
            )
            if not standbys[1]:
                out.problems.append(
                    "synchronous_standby_names is set but no synchronous standby is connected:"
                    " every commit waits for one (errands cannot write)"
                )
        else:
            out.notes.append(
                f"commits are durable on this server only ({standbys[0]} streaming standbys,"
                f" none synchronous): a failover may lose the last acknowledged steps"
                " (docs/scale-out.md, High availability)"
            )
    out.ok = not out.problems
    return out


def _policy_and_workers(conn: psycopg.Connection[Any], out: PostgresHealth) -> None:
    """The policy version in force, and how many workers beat (docs/scale-out.md)."""
    if first_value(conn, "SELECT to_regclass('policies')") is not None:
        row = conn.execute(
            "SELECT version, by FROM policies ORDER BY version DESC LIMIT 1"
        ).fetchone()
        out.notes.append(
            "no policy stored yet (the first process stores policy.toml)"
            if row is None
            else f"policy version {row[0]} in force (by {row[1]}; errands policy show)"
        )
    if first_value(conn, "SELECT to_regclass('workers')") is not None:
        # (heartbeats are on the lease clock: the database's epoch time)
        live, dead = conn.execute(
            "SELECT count(*) FILTER (WHERE seen_at >= extract(epoch FROM clock_timestamp())"
            " - lease_seconds), count(*) FILTER (WHERE seen_at < extract(epoch FROM"
            " clock_timestamp()) - lease_seconds) FROM workers"
        ).fetchone() or (0, 0)
        out.notes.append(f"{live} live workers, {dead} dead lately (errands workers)")
