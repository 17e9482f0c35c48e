"""The one sync bridge: a store's calls, blocking, for code without an event loop.

errands is async throughout; a script, a REPL or a synchronous test that wants to look
at a store wraps it::

    with BlockingStore(open_store(settings)) as store:
        for view in store.list_errands(limit=10):
            print(view.id, view.state)

Each call runs on one event loop in a thread of its own (started on first use), so it
works from any thread, including one that runs an event loop of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.store.protocol import BudgetStatus, Store, StoredEvent, UsageRow

__all__ = ["BlockingStore"]

T = TypeVar("T")


class BlockingStore:
    def __init__(
        self, store: Store | None = None, *, make: Callable[[], Store] | None = None
    ) -> None:
        """Wrap *store*, or the store *make()* opens on the bridge's own loop (a store
        whose commit listeners must live on that loop)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="errands-blocking-store", daemon=True
        )
        self._thread.start()
        if store is None:
            if make is None:
                raise TypeError("BlockingStore needs a store, or make= to open one")
            store = self.run(_opened(make))
        self.store: Store = store

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on the bridge's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- the reader ----------------------------------------------------------------------

    def read(self, errand_id: str, after: int = 0) -> list[StoredEvent]:
        return self.run(self.store.read(errand_id, after))

    def read_latest(
        self, errand_id: str, limit: int, before: int | None = None
    ) -> list[StoredEvent]:
        return self.run(self.store.read_latest(errand_id, limit, before))

    def view(self, errand_id: str) -> ErrandView:
        return self.run(self.store.view(errand_id))

    def find(self, prefix: str) -> str:
        return self.run(self.store.find(prefix))

    def list_errands(
        self, *, states: Sequence[ErrandState] | None = None, limit: int = 100
    ) -> list[ErrandView]:
        return self.run(self.store.list_errands(states=states, limit=limit))

    def pending_approvals(self) -> list[PendingApproval]:
        return self.run(self.store.pending_approvals())

    def lease_holder(self, errand_id: str) -> tuple[str, float] | None:
        return self.run(self.store.lease_holder(errand_id))

    def usage(self, *, since: float = 0.0, errand_id: str | None = None) -> list[UsageRow]:
        return self.run(self.store.usage(since=since, errand_id=errand_id))

    def budget(self, daily_usd: float | None) -> BudgetStatus:
        return self.run(self.store.budget(daily_usd))

    def integrity_check(self) -> list[str]:
        return self.run(self.store.integrity_check())

    # -- writes a script may need --------------------------------------------------------

    def append(self, errand_id: str, events: Sequence[ev.Event]) -> list[int]:
        return self.run(self.store.append(errand_id, events))

    def rebuild_projections(self) -> int:
        return self.run(self.store.rebuild_projections())

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store and stop the bridge's loop."""
        try:
            self.run(self.store.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> BlockingStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _opened(make: Callable[[], Store]) -> Store:
    return make()  # (on the bridge's loop: a store subscribes its listeners to it)
