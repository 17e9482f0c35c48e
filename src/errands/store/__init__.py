"""The durable store of errand logs: the interface and its implementations."""

from errands.store.base import (
    ErrandExists,
    LeaseLost,
    NotFound,
    Store,
    StoredEvent,
    StoreError,
)

__all__ = ["ErrandExists", "LeaseLost", "NotFound", "Store", "StoreError", "StoredEvent"]
