"""The runner: owns errands through leases and drives their loops.

``errands run`` / ``errands resume`` use :meth:`Runner.run_errand` (one errand in the
foreground); the server uses :meth:`Runner.serve`, which claims every runnable errand
whose lease is free or expired, renews its leases, and wakes errands that an outsider
(a person's message, a decision, a cancel) wrote to. A waiting errand has no task:
its loop returns, its lease is released, and a wake-up starts a new loop later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable

from errands.config import Settings
from errands.core.states import ErrandView
from errands.engine.loop import Loop, TextListener
from errands.errors import ErrandBusy, LeaseLost, StoreError
from errands.models.protocol import Model
from errands.models.spec import Models
from errands.policy.hook import PolicyHook
from errands.store import Store
from errands.tools.toolset import Toolset

__all__ = ["ErrandBusy", "Runner", "dead_local_owner", "new_owner"]

LEASE_TTL = 30.0


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Runner:
    loop_class: type[Loop] = Loop  # the loop it drives errands with (a variant: a subclass)

    def __init__(
        self,
        store: Store,
        settings: Settings,
        toolset: Toolset,
        policy: PolicyHook,
        *,
        models: Callable[[str], Model] | None = None,
        owner: str | None = None,
        lease_ttl: float = LEASE_TTL,
        on_text: TextListener | None = None,
        loop_class: type[Loop] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.owner = owner or new_owner()
        self.lease_ttl = lease_ttl
        self.model: Callable[[str], Model] = models or Models(settings)
        self.loop = (loop_class or self.loop_class)(
            store, self.model, toolset, policy, settings, self.owner, on_text=on_text
        )
        self.tasks: dict[str, asyncio.Task[ErrandView | None]] = {}
        store.subscribe(self._on_append)

    def _on_append(self, errand_id: str, seq: int) -> None:
        if errand_id in self.tasks:
            self.loop.noticed(errand_id, seq)  # perf: our own appends need no re-read

    async def run_errand(self, errand_id: str) -> ErrandView:
        """Run one errand in the foreground until it stops; refuse if someone else runs it."""
        if not await self._take(errand_id):
            holder = await self.store.lease_holder(errand_id)
            who = f" ({holder[0]})" if holder else ""
            raise ErrandBusy(f"errand {errand_id} is being run by another errands process{who}")
        renew = asyncio.create_task(self._renew_forever())
        try:
            return await self.loop.run(errand_id)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            with contextlib.suppress(StoreError):
                await self.store.release(errand_id, self.owner)

    async def _take(self, errand_id: str) -> bool:
        """Acquire the lease; a holder that is a dead process on this host loses it at once."""
        if await self.store.acquire(errand_id, self.owner, self.lease_ttl):
            return True
        holder = await self.store.lease_holder(errand_id)
        if holder is None or not dead_local_owner(holder[0]):
            return False
        await self.store.release(errand_id, holder[0])
        return await self.store.acquire(errand_id, self.owner, self.lease_ttl)

    async def _drive(self, errand_id: str) -> ErrandView | None:
        try:
            return await self.loop.run(errand_id)
        except LeaseLost:
            return None  # another process owns it now; it carries on there
        finally:
            self.tasks.pop(errand_id, None)
            with contextlib.suppress(StoreError):
                await self.store.release(errand_id, self.owner)

    def start(self, errand_id: str) -> None:
        if errand_id not in self.tasks:
            self.tasks[errand_id] = asyncio.create_task(self._drive(errand_id))

    async def claim(self, limit: int = 10_000) -> list[str]:
        """Take over every runnable errand with a free or expired lease, and start it."""
        claimed = await self.store.claim_runnable(self.owner, self.lease_ttl, limit)
        for errand_id in claimed:
            self.start(errand_id)
        return claimed

    async def serve(self, stop: asyncio.Event, poll: float = 0.5) -> None:
        """Run errands until *stop* is set: claim, renew, wake. Waiting costs no task."""
        renew = asyncio.create_task(self._renew_forever())
        wake_mark, _ = await self.store.wakeups(0)
        # leases an earlier run of this node (the same owner name) left on errands it is
        # not running now: give them up, so that claiming (free or expired leases only)
        # takes each one as soon as it is runnable -- a wake-up before the mark above
        # would otherwise be lost on an errand nobody may claim
        for errand_id in await self.store.renew(self.owner, self.lease_ttl):
            if errand_id not in self.tasks:
                await self.store.release(errand_id, self.owner)
        try:
            while not stop.is_set():
                await self.claim()
                wake_mark, woken = await self.store.wakeups(wake_mark)
                for errand_id in woken:
                    if errand_id in self.tasks:
                        self.loop.dirty.add(errand_id)
                    elif await self.store.acquire(errand_id, self.owner, self.lease_ttl):
                        # a free lease, or ours but not running here: a previous run of
                        # this node (same owner name) left it, and claiming (which takes
                        # only free or expired leases) would never take it back
                        self.start(errand_id)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            await self.drain()

    async def drain(self) -> None:
        """Stop every running loop (their leases lapse or are released) and wait."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def wait_idle(self) -> None:
        """Wait until no errand loop is running in this process."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks.values()), return_exceptions=True)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            held = await self.store.renew(self.owner, self.lease_ttl)
            for errand_id, task in list(self.tasks.items()):
                if errand_id not in held:
                    task.cancel()  # lost the lease: another process has taken over


def dead_local_owner(owner: str) -> bool:
    """True if *owner* (host:pid:nonce) names a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
