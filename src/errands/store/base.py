"""The store interface. SQLite implements it (:mod:`errands.store.sqlite`); a Postgres
implementation fills the same interface without changing its callers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.store.spend import Refusal

__all__ = ["ErrandExists", "LeaseLost", "NotFound", "Store", "StoreError", "StoredEvent"]


class StoreError(Exception):
    """A store operation was refused; the message says why. Nothing was written."""


class NotFound(StoreError):
    pass


class ErrandExists(StoreError):
    pass


class LeaseLost(StoreError):
    """The caller no longer owns the errand: another process took it over."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    errand_id: str
    seq: int
    event: ev.Event


# An extra check run inside the append's transaction, on the errand's current view,
# before anything is written: raise StoreError to refuse the append. This is how
# approvals (no double decision, no decision after cancel) stay atomic.
Guard = Callable[[ErrandView], None]


class Store(Protocol):
    """Append-only errand logs with derived views, leases and wake-ups.

    Every mutating call returns only after its effect is durable on disk.
    """

    async def create(self, errand_id: str, created: ev.ErrandCreated) -> None: ...

    async def append(
        self,
        errand_id: str,
        events: Sequence[ev.Event],
        *,
        owner: str | None = None,
        guard: Guard | None = None,
    ) -> list[int]:
        """Append *events* atomically; return their sequence numbers.

        With *owner*, refuse (:class:`LeaseLost`) unless *owner* holds the lease.
        Without, the append is an outside input (a person's message, a decision) and
        wakes whoever owns the errand.
        """
        ...

    async def read(self, errand_id: str, after: int = 0) -> list[StoredEvent]: ...

    async def view(self, errand_id: str) -> ErrandView: ...

    async def list_errands(
        self, *, states: Sequence[ErrandState] | None = None, limit: int = 100
    ) -> list[ErrandView]: ...

    async def pending_approvals(self) -> list[PendingApproval]: ...

    async def acquire(self, errand_id: str, owner: str, ttl: float) -> bool: ...

    async def claim_runnable(self, owner: str, ttl: float, limit: int) -> list[str]: ...

    async def renew(self, owner: str, ttl: float) -> set[str]:
        """Extend every lease *owner* holds; return the errand ids it still holds."""
        ...

    async def release(self, errand_id: str, owner: str) -> None: ...

    def lease_holder(self, errand_id: str) -> tuple[str, float] | None:
        """Who holds the errand's lease, and until when (None if nobody)."""
        ...

    async def wakeups(self, after: int) -> tuple[int, list[str]]:
        """Errands written to by outsiders since wake-up id *after*; and the newest id."""
        ...

    async def reserve(
        self,
        errand_id: str,
        request_seq: int,
        amount_usd: float,
        *,
        daily_usd: float | None,
        ttl: float,
    ) -> Refusal | None:
        """Hold *amount_usd* for the model call of request *request_seq* against every
        cap that applies (the daily one, the errand's and its ancestors' budgets), or
        return why not, writing nothing. The transaction that logs the response
        settles the hold; otherwise it expires after *ttl* seconds."""
        ...

    async def purge(self, errand_id: str) -> None: ...

    def subscribe(self, listener: Callable[[str, int], None]) -> None:
        """Call *listener(errand_id, last_seq)* in the event loop after each durable append."""
        ...

    async def close(self) -> None: ...
