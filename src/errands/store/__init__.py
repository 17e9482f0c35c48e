"""The durable store of errand logs: the interface every caller uses, and its backends.

Callers type against :class:`Store` / :class:`StoreReader` (:mod:`.protocol`) and get a
store from :func:`open_store`, the one place a backend is chosen and the secret
redactor attached. :mod:`.base` holds what every backend shares; :mod:`.sqlite` is the
default backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from errands.errors import ErrandExists, LeaseLost, NotFound, StoreError
from errands.store.protocol import (
    AppendCheck,
    BudgetStatus,
    Store,
    StoredEvent,
    StoreReader,
    UsageRow,
)
from errands.store.redact import Redactor, secret_env_values

if TYPE_CHECKING:
    from errands.config import Settings

__all__ = [
    "AppendCheck",
    "BudgetStatus",
    "ErrandExists",
    "LeaseLost",
    "NotFound",
    "Store",
    "StoreError",
    "StoreReader",
    "StoredEvent",
    "UsageRow",
    "open_store",
]


def open_store(settings: Settings, *, redactor: Redactor | None = None) -> Store:
    """The store of *settings*' home, opened (and migrated), with every secret the
    environment holds redacted before it reaches the log (or *redactor*'s)."""
    from errands.store.sqlite import SQLiteStore

    return SQLiteStore(settings.db_path, redactor=redactor or Redactor(secret_env_values()))
