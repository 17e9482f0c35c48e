"""Budget arithmetic: what was spent and what calls in flight hold, against caps.

The store keeps two derived tables (see :mod:`errands.store.base` for how they are
booked, and the backend for the SQL):

- **spend**, a projection of the log like the errands table: every ``model_responded``
  event adds its cost to ``day:YYYY-MM-DD`` (the local date of the event) and to
  ``tree:ID`` for its errand and each of its ancestors -- in the same transaction that
  appends the event, so spend and log never disagree, and a rebuild from the log gives
  the same numbers to the unit;
- **budget holds**: the worst case of each call in flight, one row per capped scope
  (``day`` or ``tree:ID``). A hold is named after the request it covers
  (``ERRAND#REQUEST_SEQ``, :func:`hold_id`): it is deleted by the transaction that logs
  that request's response (settled), replaced when a resumed run asks again for the
  same request, released when the errand changes state, kept alive while its process
  renews the errand's lease, and otherwise expires -- so a crash leaves a hold that
  blocks budget only until it expires.

Amounts are integers in nano-USD, so sums are exact.

The admission rule: a call may start only if, for every cap,
``spent + held + its worst case <= cap``. Since every call in flight holds its worst
case and settles at no more than that, spend never passes a cap -- as long as the
worst case really is one (an estimate of input tokens can be low; see
:mod:`errands.engine.budgets`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DAY",
    "MAX_DEPTH",
    "NANOS_PER_USD",
    "Cap",
    "CapReached",
    "day_scope",
    "hold_id",
    "nanos",
    "schedule_scope",
    "scopes_of",
    "tree_scope",
    "usd",
]

NANOS_PER_USD = 1_000_000_000
DAY = "day"  # the hold scope of the daily cap (spend is kept per date: day_scope)
MAX_DEPTH = 64  # ancestors followed for tree budgets (a guard against a parent cycle)


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


def schedule_scope(name: str, at: float) -> str:
    """Every run of schedule *name* on the (local) date of *at*: its daily cap's scope."""
    return f"schedule:{name}:" + day_scope(at)[4:]


def scopes_of(
    errand_id: str,
    at: float,
    parent_of: Callable[[str], str | None],
    schedule: str | None = None,
) -> list[str]:
    """The spend scopes a call of *errand_id* (a run of *schedule*, if given) at time
    *at* counts against."""
    scopes = [day_scope(at), tree_scope(errand_id)]
    if schedule is not None:
        scopes.append(schedule_scope(schedule, at))
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
class CapReached:
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
