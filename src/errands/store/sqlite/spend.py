"""The budget tables in SQLite: ``spend`` and ``budget_holds`` (migration
``0003_budgets``). The rules -- what is booked when, and the admission rule -- are in
:mod:`errands.costs.spend` and :mod:`errands.store.base`; this is their SQL. Every
function runs inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

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


def spent(conn: sqlite3.Connection, scope: str, now: float) -> int:
    """What the log says was spent against *scope* (today's, for the daily scope)."""
    key = day_scope(now) if scope == DAY else scope
    row = conn.execute("SELECT nanos FROM spend WHERE scope = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def held(conn: sqlite3.Connection, scope: str, now: float, hold: str) -> int:
    """What calls in flight hold against *scope*, leaving out the hold named *hold*."""
    row = conn.execute(
        "SELECT COALESCE(SUM(nanos), 0) FROM budget_holds"
        " WHERE scope = ? AND expires_at > ? AND hold != ?",
        (scope, now, hold),
    ).fetchone()
    return int(row[0])


def place(
    conn: sqlite3.Connection,
    hold: str,
    caps: Sequence[Cap],
    amount: int,
    now: float,
    expires_at: float,
) -> None:
    """Write the hold *hold* of *amount* against every cap (replacing one of that name:
    the same request, asked again after a restart), and drop expired holds."""
    conn.executemany(
        "INSERT OR REPLACE INTO budget_holds(hold, scope, nanos, expires_at) VALUES (?, ?, ?, ?)",
        [(hold, cap.scope, amount, expires_at) for cap in caps],
    )
    if _expired_rows(conn, now):
        conn.execute("DELETE FROM budget_holds WHERE expires_at <= ?", (now,))


def _expired_rows(conn: sqlite3.Connection, now: float) -> bool:
    row = conn.execute("SELECT 1 FROM budget_holds WHERE expires_at <= ? LIMIT 1", (now,))
    return row.fetchone() is not None


def settle(conn: sqlite3.Connection, hold: str) -> None:
    """The call's response is being logged: its reservation ends."""
    conn.execute("DELETE FROM budget_holds WHERE hold = ?", (hold,))


def release(conn: sqlite3.Connection, errand_id: str) -> None:
    """Every reservation of *errand_id* ends (it stopped: failed, finished, cancelled)."""
    conn.execute(
        "DELETE FROM budget_holds WHERE hold >= ? AND hold < ?",
        (errand_id + "#", errand_id + "$"),  # every ERRAND#SEQ; '$' follows '#'
    )


def extend(conn: sqlite3.Connection, owner: str, until: float) -> None:
    """Holds of errands whose lease *owner* holds last at least *until*: a call that
    waits long (a rate-limit queue, retries) keeps its reservation while its process
    lives; a dead process's holds run out with its leases."""
    conn.execute(
        "UPDATE budget_holds SET expires_at = ? WHERE expires_at < ? AND"
        " substr(hold, 1, instr(hold, '#') - 1) IN"
        " (SELECT errand_id FROM leases WHERE owner = ?)",
        (until, until, owner),
    )


def add(conn: sqlite3.Connection, scopes: Iterable[str], amount: int) -> None:
    conn.executemany(
        "INSERT INTO spend(scope, nanos) VALUES (?, ?)"
        " ON CONFLICT(scope) DO UPDATE SET nanos = nanos + excluded.nanos",
        [(scope, amount) for scope in scopes],
    )


def totals(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute("SELECT scope, nanos FROM spend")}


def held_total(conn: sqlite3.Connection, scope: str, now: float) -> tuple[int, int]:
    """(nano-USD, number of calls) reserved against *scope* now."""
    row = conn.execute(
        "SELECT COALESCE(SUM(nanos), 0), COUNT(*) FROM budget_holds"
        " WHERE scope = ? AND expires_at > ?",
        (scope, now),
    ).fetchone()
    return int(row[0]), int(row[1])


def held_all(conn: sqlite3.Connection, now: float) -> tuple[int, int]:
    """(nano-USD, number of calls) reserved by every call in flight, whatever its caps."""
    row = conn.execute(
        "SELECT COALESCE(SUM(nanos), 0), COUNT(*) FROM"
        " (SELECT hold, MAX(nanos) AS nanos FROM budget_holds WHERE expires_at > ? GROUP BY hold)",
        (now,),
    ).fetchone()
    return int(row[0]), int(row[1])


def expected(conn: sqlite3.Connection) -> dict[str, int]:
    """The spend table as the log says it should be."""
    errands = conn.execute(
        "SELECT id, parent, json_extract(view, '$.schedule') FROM errands"
    ).fetchall()
    usage = conn.execute(
        "SELECT e.errand_id, e.at, COALESCE(b.data, e.body) FROM events e"
        " LEFT JOIN blobs b ON b.hash = e.blob"
        " WHERE e.type IN ('model_responded', 'model_used')"
    )
    return expected_spend(errands, usage)


def rebuild(conn: sqlite3.Connection) -> None:
    """Recompute the spend projection from the log (in a transaction)."""
    conn.execute("DELETE FROM spend")
    conn.executemany("INSERT INTO spend(scope, nanos) VALUES (?, ?)", expected(conn).items())
