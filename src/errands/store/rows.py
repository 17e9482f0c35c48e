"""The rows of the log and the projection as objects, whatever the backend: both SQL
stores select the same columns (their SQL differs only in dialect), and these read
them -- a projection row as a view, log rows as stored events, cost events as usage
rows -- and shape what the protocol's reads return.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from errands.core import events as ev
from errands.core.states import ErrandView, PendingApproval
from errands.errors import NotFound, SchemaTooNew
from errands.store.base import COLUMNS
from errands.store.protocol import StoredEvent, UsageRow

__all__ = [
    "MAX_SEQ",
    "changes",
    "found_errand",
    "load_stored",
    "log_bodies",
    "pending_of",
    "stored_events",
    "usage_rows",
    "view_from_row",
    "wakeups_after",
]

MAX_SEQ = 2**62  # (no log is longer)


def view_from_row(row: Sequence[Any]) -> ErrandView:
    """An ErrandView from the columns ``id, state, title, created_at, updated_at,
    last_seq, parent, view``.

    The ``view`` column of a database from migration 0001 holds the whole view; the
    columns say the same, so overlaying them reads both layouts.
    """
    data: dict[str, Any] = json.loads(row[7])
    data.update(zip(COLUMNS, row[:7], strict=True))
    return ErrandView.model_validate(data)


def pending_of(rows: Iterable[Sequence[Any]]) -> list[PendingApproval]:
    """The approvals the projection rows' views wait for, row by row."""
    out: list[PendingApproval] = []
    for row in rows:
        out.extend(view_from_row(row).pending.values())
    return out


def load_stored(body: str) -> ev.Event:
    """An event from its stored body; a body a newer errands wrote is refused, not misread."""
    try:
        return ev.load_event(body)
    except ev.EventTooNew as exc:
        raise SchemaTooNew(f"this store was written by a newer errands: {exc}") from None


def stored_events(errand_id: str, rows: Iterable[Sequence[Any]]) -> list[StoredEvent]:
    """Log rows ``(seq, body, blob hash, blob data)`` as stored events, in row order."""
    return [
        StoredEvent(errand_id, int(seq), load_stored(data if blob else body))
        for seq, body, blob, data in rows
    ]


def log_bodies(rows: Iterable[Sequence[Any]]) -> list[tuple[int, str, str | None]]:
    """Log rows ``(seq, body, blob hash, blob data)`` as (seq, stored body, blob hash)."""
    return [(int(seq), data if blob else body, blob) for seq, body, blob, data in rows]


def usage_rows(rows: Iterable[Sequence[Any]]) -> list[UsageRow]:
    """Cost events' rows ``(errand_id, at, stored body)`` as usage rows."""
    out = []
    for eid, at, body in rows:
        event = load_stored(body)
        assert isinstance(event, ev.ModelResponded | ev.ModelUsed)
        out.append(UsageRow(str(eid), float(at), event.model, event.usage))
    return out


def changes(rows: Iterable[Sequence[Any]]) -> list[tuple[str, int, float]]:
    """Rows ``(id, last_seq, updated_at)`` as :meth:`Store.changed_since` returns them."""
    return [(str(i), int(s), float(u)) for i, s, u in rows]


def found_errand(prefix: str, ids: Sequence[Sequence[Any]]) -> str:
    """The errand *prefix* names, from the (at most two) ids that start with it, in
    order: an id that is whole wins (its sub-errands' ids start with it; it sorts
    first); several otherwise is a NotFound asking for more of the id."""
    if not ids:
        raise NotFound(f"no errand {prefix}")
    if len(ids) > 1 and ids[0][0] != prefix:
        raise NotFound(f"{prefix} matches several errands; give more of the id")
    return str(ids[0][0])


def wakeups_after(
    after: int, rows: Sequence[Sequence[Any]], top: Callable[[], Any]
) -> tuple[int, list[str]]:
    """What :meth:`Store.wakeups` returns from the rows ``(id, errand_id)`` after
    *after*: the newest id and the errands, each once. With no rows, *after* again --
    or, for a first look (*after* 0), the newest id there is (``top()``), so that a new
    reader starts from now."""
    if not rows:
        if after == 0:
            return int(top() or 0), []
        return after, []
    return int(rows[-1][0]), list(dict.fromkeys(str(r[1]) for r in rows))
