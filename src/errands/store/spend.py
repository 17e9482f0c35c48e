"""Budgets in the store: what was spent, and what calls in flight have reserved.

Two tables (schema migration 3), both written only inside the writer's transaction:

- ``spend(scope, nanos)`` is a projection of the log, like the ``errands`` table: every
  ``model_responded`` event adds its cost to ``day:YYYY-MM-DD`` (local date of the
  event) and to ``tree:ID`` for its errand and each of its ancestors -- in the same
  transaction that appends the event, so spend and log never disagree.
  :func:`rebuild` recomputes it from the log.
- ``budget_holds(hold, scope, nanos, expires_at)``: the worst case of each call in
  flight, one row per capped scope (``day`` or ``tree:ID``). A hold is named after the
  request it covers (``ERRAND#REQUEST_SEQ``): it is deleted by the transaction that
  logs that request's response (settled), replaced when a resumed run asks again for
  the same request, released when the errand changes state, kept alive while its
  process renews the errand's lease (:func:`extend`), and otherwise expires -- so a
  crash leaves a hold that blocks budget only until ``expires_at``. (The store
  settles and releases only the holds its own writer made, so an errand without a
  budget costs no budget-table write per step.)

Amounts are integers in nano-USD, so sums are exact and a rebuild from the log gives
the same numbers to the unit.

The admission rule (:func:`reserve`): a call may start only if, for every cap,
``spent + held + its worst case <= cap``. Since every call in flight holds its worst
case and settles at no more than that, spend never passes a cap -- as long as the
worst case really is one (an estimate of input tokens can be low; see
:mod:`errands.costs.budgets`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from errands.core.contracts import enabled, ensure, require
from errands.core.faults import switch

__all__ = [
    "DAY",
    "Cap",
    "Refusal",
    "add",
    "day_scope",
    "extend",
    "hold_id",
    "nanos",
    "rebuild",
    "release",
    "reserve",
    "scopes_of",
    "settle",
    "totals",
    "tree_scope",
    "usd",
]

NANOS_PER_USD = 1_000_000_000
DAY = "day"  # the hold scope of the daily cap (spend is kept per date: day_scope)
MAX_DEPTH = 64  # ancestors followed for tree budgets (a guard against a parent cycle)
_CHECK = enabled()


def nanos(amount_usd: float) -> int:
    return round(amount_usd * NANOS_PER_USD)


def usd(amount_nanos: int) -> float:
    return amount_nanos / NANOS_PER_USD


def day_scope(at: float) -> str:
    return "day:" + time.strftime("%Y-%m-%d", time.localtime(at))


def tree_scope(errand_id: str) -> str:
    return "tree:" + errand_id


def hold_id(errand_id: str, request_seq: int) -> str:
    return f"{errand_id}#{request_seq}"


def scopes_of(errand_id: str, at: float, parent_of: Callable[[str], str | None]) -> list[str]:
    """The spend scopes a call of *errand_id* at time *at* counts against."""
    scopes = [day_scope(at), tree_scope(errand_id)]
    seen = {errand_id}
    parent = parent_of(errand_id)
    while parent is not None and parent not in seen and len(seen) < MAX_DEPTH:
        seen.add(parent)
        scopes.append(tree_scope(parent))
        parent = parent_of(parent)
    return scopes


@dataclass(frozen=True, slots=True)
class Cap:
    scope: str  # DAY or tree_scope(id)
    nanos: int
    what: str  # for people: "the daily budget", "this errand's budget", ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call may not start: its cap, and the numbers at the moment it asked."""

    cap: Cap
    spent: int
    held: int
    amount: int

    @property
    def daily(self) -> bool:
        return self.cap.scope == DAY

    def message(self) -> str:
        left = max(0, self.cap.nanos - self.spent - self.held)
        return (
            f"{self.cap.what} of ${usd(self.cap.nanos):.4f} is reached: "
            f"${usd(self.spent):.4f} spent, ${usd(self.held):.4f} reserved by calls in "
            f"flight, ${usd(left):.4f} left; this call may cost up to ${usd(self.amount):.4f}"
        )


def _spent(conn: sqlite3.Connection, scope: str, now: float) -> int:
    key = day_scope(now) if scope == DAY else scope
    row = conn.execute("SELECT nanos FROM spend WHERE scope = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _held(conn: sqlite3.Connection, scope: str, now: float, hold: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(SUM(nanos), 0) FROM budget_holds"
        " WHERE scope = ? AND expires_at > ? AND hold != ?",
        (scope, now, hold),
    ).fetchone()
    return int(row[0])


def reserve(
    conn: sqlite3.Connection,
    hold: str,
    caps: Sequence[Cap],
    amount: int,
    now: float,
    expires_at: float,
) -> Refusal | None:
    """Hold *amount* against every cap, or refuse (writing nothing). In a transaction.

    A hold of the same name (the same request, asked again after a restart) is
    replaced, not added to.
    """
    require(amount >= 0 and expires_at > now, "a non-negative amount and a future expiry")
    count_holds = not switch("no_budget_holds")  # negative control: check spend only
    for cap in caps:
        spent = _spent(conn, cap.scope, now)
        held = _held(conn, cap.scope, now, hold) if count_holds else 0
        if spent >= cap.nanos or spent + held + amount > cap.nanos:
            return Refusal(cap, spent, held, amount)
    if count_holds and caps:
        conn.executemany(
            "INSERT OR REPLACE INTO budget_holds(hold, scope, nanos, expires_at)"
            " VALUES (?, ?, ?, ?)",
            [(hold, cap.scope, amount, expires_at) for cap in caps],
        )
        if _expired_rows(conn, now):
            conn.execute("DELETE FROM budget_holds WHERE expires_at <= ?", (now,))
    if _CHECK and count_holds:
        for cap in caps:
            ensure(
                _spent(conn, cap.scope, now) + _held(conn, cap.scope, now, "") <= cap.nanos,
                "spent + held stays within every cap",
            )
    return None


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
    parents = {
        str(i): (str(p) if p is not None else None)
        for i, p in conn.execute("SELECT id, parent FROM errands")
    }
    out: dict[str, int] = {}
    rows = conn.execute(
        "SELECT e.errand_id, e.at, COALESCE(b.data, e.body) FROM events e"
        " LEFT JOIN blobs b ON b.hash = e.blob WHERE e.type = 'model_responded'"
    )
    for errand_id, at, body in rows:
        cost = nanos(float((json.loads(body).get("usage") or {}).get("cost_usd", 0.0)))
        if cost:
            for scope in scopes_of(str(errand_id), float(at), parents.get):
                out[scope] = out.get(scope, 0) + cost
    return out


def rebuild(conn: sqlite3.Connection) -> None:
    """Recompute the spend projection from the log (in a transaction)."""
    conn.execute("DELETE FROM spend")
    conn.executemany("INSERT INTO spend(scope, nanos) VALUES (?, ?)", expected(conn).items())
