"""The budget tables in PostgreSQL (``spend``, ``budget_holds``): the SQL of
:mod:`errands.store.sqlite.spend`, for a psycopg connection. The rules are in
:mod:`errands.costs.spend` and :mod:`errands.store.base`. Every function runs inside
the caller's transaction (or on an autocommit reader)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from errands.costs.spend import DAY, Cap, day_scope
from errands.store.integrity import expected_spend

__all__ = [
    "add",
    "expected",
    "extend",
    "held",
    "held_all",
    "held_total",
    "place",
    "rebuild",
    "release",
    "settle",
    "spent",
    "totals",
]


def spent(conn: Any, scope: str, now: float) -> int:
    key = day_scope(now) if scope == DAY else scope
    row = conn.execute("SELECT nanos FROM spend WHERE scope = %s", (key,)).fetchone()
    return int(row[0]) if row else 0


def held(conn: Any, scope: str, now: float, hold: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(SUM(nanos), 0) FROM budget_holds"
        " WHERE scope = %s AND expires_at > %s AND hold <> %s",
        (scope, now, hold),
    ).fetchone()
    return int(row[0])


def place(
    conn: Any, hold: str, caps: Sequence[Cap], amount: int, now: float, expires_at: float
) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO budget_holds(hold, scope, nanos, expires_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (hold, scope) DO UPDATE SET nanos = EXCLUDED.nanos,"
            " expires_at = EXCLUDED.expires_at",
            [(hold, cap.scope, amount, expires_at) for cap in caps],
        )
    conn.execute("DELETE FROM budget_holds WHERE expires_at <= %s", (now,))


def settle(conn: Any, hold: str) -> None:
    conn.execute("DELETE FROM budget_holds WHERE hold = %s", (hold,))


def release(conn: Any, errand_id: str) -> None:
    conn.execute(
        "DELETE FROM budget_holds WHERE hold >= %s AND hold < %s",
        (errand_id + "#", errand_id + "$"),  # every ERRAND#SEQ (byte order: '$' follows '#')
    )


def extend(conn: Any, owner: str, until: float) -> None:
    conn.execute(
        "UPDATE budget_holds SET expires_at = %s WHERE expires_at < %s AND"
        " split_part(hold, '#', 1) IN (SELECT errand_id FROM leases WHERE owner = %s)",
        (until, until, owner),
    )


def add(conn: Any, scopes: Iterable[str], amount: int) -> None:
    # (sorted: two writers booking the same scopes lock them in the same order)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO spend(scope, nanos) VALUES (%s, %s)"
            " ON CONFLICT (scope) DO UPDATE SET nanos = spend.nanos + EXCLUDED.nanos",
            [(scope, amount) for scope in sorted(scopes)],
        )


def totals(conn: Any) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute("SELECT scope, nanos FROM spend")}


def held_total(conn: Any, scope: str, now: float) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COALESCE(SUM(nanos), 0), COUNT(*) FROM budget_holds"
        " WHERE scope = %s AND expires_at > %s",
        (scope, now),
    ).fetchone()
    return int(row[0]), int(row[1])


def held_all(conn: Any, now: float) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COALESCE(SUM(nanos), 0), COUNT(*) FROM (SELECT hold, MAX(nanos) AS nanos"
        " FROM budget_holds WHERE expires_at > %s GROUP BY hold) h",
        (now,),
    ).fetchone()
    return int(row[0]), int(row[1])


def expected(conn: Any) -> dict[str, int]:
    """The spend table as the log says it should be."""
    errands = [
        (i, p, json.loads(view).get("schedule"))
        for i, p, view in conn.execute("SELECT id, parent, view FROM errands")
    ]
    usage = conn.execute(
        "SELECT e.errand_id, e.at, COALESCE(b.data, e.body) FROM events e"
        " LEFT JOIN blobs b ON b.hash = e.blob"
        " WHERE e.type IN ('model_responded', 'model_used')"
    ).fetchall()
    return expected_spend(errands, usage)


def rebuild(conn: Any) -> None:
    conn.execute("DELETE FROM spend")
    rows = list(expected(conn).items())
    if rows:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO spend(scope, nanos) VALUES (%s, %s)", rows)
