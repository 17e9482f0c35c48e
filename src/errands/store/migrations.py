"""Named, append-only schema migrations (the way Simon Willison's ``llm`` keeps them).

A backend lists its migrations in order, each with a name that never changes
(``0003_budgets``); the store records the name of every migration it has applied.
Opening a store applies, in order, each listed migration not yet recorded, one
transaction each. Several pieces of work can add tables side by side: each appends
its own named step to the list and never edits an earlier one.

A store that has recorded a migration this errands does not know was written by a
newer errands: it is refused (:class:`~errands.errors.SchemaTooNew`), not guessed at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from errands.errors import SchemaTooNew

__all__ = ["Migration", "SchemaTooNew", "to_apply"]


@dataclass(frozen=True)
class Migration:
    name: str
    # SQL statements (separated by ";"), or a function of the backend's connection,
    # run inside the step's transaction
    step: str | Callable[[Any], None]


def to_apply(
    known: Sequence[Migration], applied: Sequence[str], version: int = 0
) -> list[Migration]:
    """The migrations of *known* still to apply, in order, given the names *applied*
    (and a store's schema *version* count); refuse a store from a newer errands."""
    names = [m.name for m in known]
    if len(set(names)) != len(names):
        raise ValueError("two migrations share a name")
    unknown = [name for name in applied if name not in names]
    if unknown or version > len(known):
        raise SchemaTooNew(
            f"this store was written by a newer errands (schema version "
            f"{max(version, len(applied))}, with migrations this errands does not know: "
            f"{', '.join(unknown) or 'unnamed'}); upgrade errands to open it"
        )
    done = set(applied)
    return [m for m in known if m.name not in done]
