"""What the store's derived tables should hold, whatever the backend: the spend table
as the log says it should be, and the integrity check's findings about the derived
tables (pending counts, spend). A backend reads the rows (its SQL); the rules are here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from errands.costs.spend import nanos, scopes_of

__all__ = ["expected_spend", "pending_problems", "spend_problems"]


def expected_spend(
    errands: Iterable[tuple[Any, Any, Any]], usage: Iterable[tuple[Any, Any, Any]]
) -> dict[str, int]:
    """The spend table as the log says it should be, from every errand's
    ``(id, parent, schedule)`` and every cost event's ``(errand_id, at, stored body)``."""
    parents: dict[str, str | None] = {}
    schedule: dict[str, str | None] = {}
    for i, p, s in errands:
        parents[str(i)] = str(p) if p is not None else None
        schedule[str(i)] = str(s) if s is not None else None
    out: dict[str, int] = {}
    for errand_id, at, body in usage:
        cost = nanos(float((json.loads(body).get("usage") or {}).get("cost_usd", 0.0)))
        if cost:
            for scope in scopes_of(
                str(errand_id), float(at), parents.get, schedule.get(str(errand_id))
            ):
                out[scope] = out.get(scope, 0) + cost
    return out


def pending_problems(rows: Iterable[tuple[Any, Any, Any]]) -> list[str]:
    """Projection rows ``(id, pending_count, view JSON)`` whose count is not the
    number of approvals the view holds."""
    return [
        f"{errand_id}: pending_count differs from the fold"
        for errand_id, pending, data in rows
        if pending != len(json.loads(data).get("pending", {}))
    ]


def spend_problems(expected: Mapping[str, int], actual: Mapping[str, int]) -> list[str]:
    """Every scope whose spend row is not what the log says."""
    return [
        f"spend {scope}: {actual.get(scope, 0)} nano-USD, the log says {expected.get(scope, 0)}"
        for scope in sorted(expected.keys() | actual.keys())
        if expected.get(scope, 0) != actual.get(scope, 0)
    ]
