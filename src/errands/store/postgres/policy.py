"""The policy kept in a PostgreSQL store: every version of ``policy.toml``'s text, the
newest in force in every process and on every host (:mod:`errands.policy.stored`).

A change is one transaction: under an advisory lock (changes one at a time, each from
the version before it), the new text -- made from the newest one, and checked as a whole
policy by the caller's *validate* first -- is inserted as the next version, and
``NOTIFY errands_policy`` tells every listening process at the commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool

from errands.errors import StoreError
from errands.store.postgres.listen import POLICY, notify

__all__ = ["PolicyVersions"]

_LOCK = 0x6572_7261_6E70  # pg_advisory_xact_lock key: policy changes, one at a time


class PolicyVersions:
    """The ``policies`` table of the store at *pool*'s database."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        self._pool = pool

    def newest(self) -> tuple[int, str] | None:
        """(version, text) of the policy in force; None: none stored yet."""
        row = self._one("SELECT version, text FROM policies ORDER BY version DESC LIMIT 1")
        return None if row is None else (int(row[0]), str(row[1]))

    def version(self) -> int:
        """The newest version's number (0: none stored yet)."""
        row = self._one("SELECT coalesce(max(version), 0) FROM policies")
        return 0 if row is None else int(row[0])

    def change(
        self, edit: Callable[[str | None], str | None], *, by: str
    ) -> tuple[int, str] | None:
        """Store *edit(newest text or None)* as the next version, unless it returns None
        (nothing to change); return (version, text) stored, or None. *edit* raises to
        refuse: nothing is written."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                row = conn.execute(
                    "SELECT version, text FROM policies ORDER BY version DESC LIMIT 1"
                ).fetchone()
                text = edit(None if row is None else str(row[1]))
                if text is None:
                    return None
                version = 1 if row is None else int(row[0]) + 1
                conn.execute(
                    "INSERT INTO policies(version, text, at, by) VALUES (%s, %s, %s, %s)",
                    (version, text, time.time(), by),
                )
                notify(conn, POLICY, str(version))
                return version, text
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"could not store the policy: {exc}") from exc

    def _one(self, sql: str) -> tuple[Any, ...] | None:
        try:
            with self._pool.connection() as conn:
                row: tuple[Any, ...] | None = conn.execute(sql).fetchone()
                return row
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"could not read the policy: {exc}") from exc
