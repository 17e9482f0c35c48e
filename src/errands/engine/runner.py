"""The runner: owns errands through leases and drives their loops.

``errands run`` / ``errands resume`` use :meth:`Runner.run_errand` (one errand in the
foreground); the server uses :meth:`Runner.serve`, which claims every runnable errand
whose lease is free or expired, renews its leases, and wakes errands that an outsider
(a person's message, a decision, a cancel) wrote to. A waiting errand has no task:
its loop returns, its lease is released, and a wake-up starts a new loop later.

Nothing that goes wrong in a step stops the process or loops unbilled
(:meth:`Runner._guarded`): a store that cannot write right now (a full disk, a held
lock) is waited out with backoff; any other exception is logged in the errand as an
error and tried again after a pause, and the third identical failure in a row puts the
errand in ``needs_attention`` with the reason. A cancel written while a model or tool
call is in flight interrupts that call (:meth:`Runner._woken`), in ``errands run`` as
in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

from errands.clock import SYSTEM, Clock
from errands.config import Settings
from errands.core import events as ev
from errands.core.states import RUNNABLE, TERMINAL, ErrandState, ErrandView
from errands.engine.delegate import WAITING, settle_worktrees, sweep_worktrees
from errands.engine.loop import Loop, TextListener
from errands.engine.scheduler import Scheduler
from errands.errors import ErrandBusy, LeaseLost, StoreError, StoreUnavailable
from errands.models.protocol import Model
from errands.models.spec import Models
from errands.policy.hook import PolicyHook
from errands.registry import pid_alive
from errands.store import Store
from errands.tools.toolset import Toolset

__all__ = ["ErrandBusy", "Runner", "dead_local_owner", "new_owner"]

LEASE_TTL = 30.0
MAX_FAILURES = 3  # the same unexpected failure this many times in a row: needs attention
FAILURE_PAUSES = (1.0, 5.0)  # seconds before trying again after the 1st, 2nd failure
STORE_PAUSE_MAX = 30.0  # the longest wait between tries while the store cannot write
WATCH_SECONDS = 0.25  # how often ``errands run`` looks for a cancel from outside

log = logging.getLogger("errands.runner")


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Runner:
    loop_class: type[Loop] = Loop  # the loop it drives errands with (a variant: a subclass)
    failure_pauses: tuple[float, ...] = FAILURE_PAUSES

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
        # False: this runner fires schedules but runs no errand (``errands up --workers``:
        # worker processes claim them)
        self.claiming = True
        # runnable errands taken per look (a worker takes a few, so that the others
        # share the work; a lone server takes them all)
        self.claim_batch = 10_000
        # at most this many errands claimed and running at once (errands worker
        # --concurrency); None: no limit. (A woken errand it holds starts anyway.)
        self.max_running: int | None = None
        # schedules and watches, fired while this runner serves (``errands up``)
        self.scheduler: Scheduler | None = None
        self._claims: set[asyncio.Future[list[str]]] = set()
        store.subscribe(self._on_append)

    def with_schedules(self, clock: Clock = SYSTEM) -> Runner:
        """Also fire schedules and check watches while serving; a run that starts is
        claimed at once."""
        self.scheduler = Scheduler(
            self.store, self.settings, clock=clock, started=lambda _: self._claim_soon()
        )
        return self

    def _claim_soon(self) -> None:
        task = asyncio.ensure_future(self.claim())
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)

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
        watch = asyncio.create_task(self._watch(errand_id))
        try:
            view = await self._guarded(errand_id)
            return view if view is not None else await self.store.view(errand_id)
        finally:
            for task in (renew, watch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreError):
                    await task
            with contextlib.suppress(StoreError):
                await self.store.release(errand_id, self.owner)

    async def run_tree(self, errand_id: str) -> ErrandView:
        """Run one errand in the foreground, and the sub-errands it sleeps for
        (docs/subagents.md), here and at the same time, until it stops: ``errands run``
        without ``errands up``. A child another process runs, or one that waits for a
        person, is left as it is: the errand then stops sleeping on them."""
        view = await self.run_errand(errand_id)
        while view.state is ErrandState.sleeping and view.reason == WAITING:
            ready = [
                c.id
                for c in await self.store.children(errand_id)
                if c.state in RUNNABLE or (c.state is ErrandState.sleeping and c.reason == WAITING)
            ]
            ran = await asyncio.gather(*(self._child_tree(c) for c in ready))
            if not any(ran):
                return view
            view = await self.run_errand(errand_id)
        return view

    async def _child_tree(self, errand_id: str) -> bool:
        try:
            await self.run_tree(errand_id)
        except ErrandBusy:
            return False  # another process runs it
        return True

    async def _watch(self, errand_id: str) -> None:
        """Notice what other processes write to the errand (a cancel above all)."""
        mark, _ = await self.store.wakeups(0)
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            with contextlib.suppress(StoreUnavailable):
                mark, woken = await self.store.wakeups(mark)
                if errand_id in woken:
                    await self._woken(errand_id)

    async def _woken(self, errand_id: str) -> None:
        """Someone wrote to an errand this process runs: its loop reads it at its next
        step; a cancel also interrupts the model or tool call in flight."""
        self.loop.dirty.add(errand_id)
        view = await self.store.view(errand_id)
        if view.cancel_requested:
            self.loop.interrupt(errand_id)

    async def _guarded(self, errand_id: str) -> ErrandView | None:
        """Drive the errand; what goes wrong in a step is waited out, or logged in the
        errand and tried again, never raised to the process (but losing the lease)."""
        pause = 0.0
        while True:
            try:
                view = await self.loop.run(errand_id)
                if view.state in TERMINAL:  # its sub-errands' worktrees (docs/subagents.md)
                    await settle_worktrees(self.store, view)
                return view
            except (LeaseLost, asyncio.CancelledError):
                raise
            except StoreUnavailable as exc:  # a condition of the world: wait it out
                pause = min(max(2 * pause, 1.0), STORE_PAUSE_MAX)
                log.warning(
                    "errand %s waits for the store (%s); next try in %.0f s", errand_id, exc, pause
                )
            except StoreError:
                return None  # the errand cannot go on here (gone, taken): nothing to do
            except Exception as exc:  # a bug, or a condition nothing foresaw
                try:
                    failures = await self._failed(errand_id, exc)
                except StoreUnavailable:  # not even the error could be logged: wait
                    failures = 1
                if failures >= MAX_FAILURES:
                    return await self.store.view(errand_id)
                pause = self.failure_pauses[min(failures, len(self.failure_pauses)) - 1]
            await asyncio.sleep(pause)

    async def _failed(self, errand_id: str, exc: Exception) -> int:
        """Log an unexpected failure in the errand; return how many identical ones came
        in a row, and at :data:`MAX_FAILURES` put the errand in ``needs_attention``."""
        what = f"{type(exc).__name__}: {exc}"[:500]
        log.error("errand %s: a step failed: %s", errand_id, what, exc_info=exc)
        error = ev.ErrorRaised(kind="internal", message=what)
        await self.store.append(errand_id, [error], owner=self.owner)
        failures = (await self.loop.load(errand_id)).failures
        if failures < MAX_FAILURES:
            return failures
        reason = (
            f"errands failed {MAX_FAILURES} times in a row at the same point ({what}); "
            "tell the errand how to go on, or cancel it"
        )
        change = ev.StateChanged(state="needs_attention", reason=reason)
        await self.store.append(errand_id, [change], owner=self.owner)
        return failures

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
            view = await self._guarded(errand_id)
            # woken while it was going to sleep (a sub-errand ended): look again
            while view is not None and view.state is ErrandState.sleeping:
                if errand_id not in self.loop.dirty:
                    break
                view = await self._guarded(errand_id)
            return view
        except LeaseLost as exc:  # fencing refused this process's write: it was too late
            log.warning("errand %s: a write was refused (%s); it carries on there", errand_id, exc)
            return None
        finally:
            self.tasks.pop(errand_id, None)
            with contextlib.suppress(StoreError):
                await self.store.release(errand_id, self.owner)

    def start(self, errand_id: str) -> None:
        if errand_id not in self.tasks:
            self.tasks[errand_id] = asyncio.create_task(self._drive(errand_id))

    async def claim(self, limit: int | None = None) -> list[str]:
        """Take over runnable errands with a free or expired lease (at most *limit*, or
        :attr:`claim_batch`), and start them."""
        if not self.claiming:
            return []
        batch = self.claim_batch if limit is None else limit
        if self.max_running is not None:
            batch = min(batch, self.max_running - len(self.tasks))
            if batch <= 0:
                return []
        claimed = await self.store.claim_runnable(self.owner, self.lease_ttl, batch)
        for errand_id in claimed:
            self.start(errand_id)
        return claimed

    async def serve(
        self,
        stop: asyncio.Event,
        poll: float = 0.5,
        pause: Callable[[asyncio.Event, float], Awaitable[None]] | None = None,
    ) -> None:
        """Run errands until *stop* is set: claim, renew, wake. Waiting costs no task.
        Between two looks it waits *poll* seconds for *stop*, or *pause(stop, poll)*:
        one that returns as soon as the store says there is something to do
        (:class:`errands.server.worker.Wake`)."""
        renew = asyncio.create_task(self._renew_forever())
        schedules = (
            asyncio.create_task(self.scheduler.serve(stop)) if self.scheduler is not None else None
        )
        wake_mark, _ = await self.store.wakeups(0)
        # leases an earlier run of this node (the same owner name) left on errands it is
        # not running now: give them up, so that claiming (free or expired leases only)
        # takes each one as soon as it is runnable -- a wake-up before the mark above
        # would otherwise be lost on an errand nobody may claim
        for errand_id in await self.store.renew(self.owner, self.lease_ttl):
            if errand_id not in self.tasks:
                await self.store.release(errand_id, self.owner)
        # worktrees of ended sub-errands a crash left (docs/subagents.md)
        sweep = asyncio.create_task(sweep_worktrees(self.store))
        try:
            while not stop.is_set():
                await self.claim()
                wake_mark, woken = await self.store.wakeups(wake_mark)
                for errand_id in woken if self.claiming else ():
                    if errand_id in self.tasks:
                        await self._woken(errand_id)
                    elif await self.store.acquire(errand_id, self.owner, self.lease_ttl):
                        # a free lease, or ours but not running here: a previous run of
                        # this node (same owner name) left it, and claiming (which takes
                        # only free or expired leases) would never take it back
                        self.start(errand_id)
                if pause is not None:
                    await pause(stop, poll)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
        finally:
            for task in (renew, schedules, sweep):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
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
            try:
                held = await self.store.renew(self.owner, self.lease_ttl)
            except StoreUnavailable as exc:  # (a restart, a failover): at the next tick
                log.warning("the leases could not be renewed (%s); trying again", exc)
                continue
            for errand_id, task in list(self.tasks.items()):
                if errand_id not in held:
                    log.warning(
                        "errand %s: its lease was taken over by another process; its loop"
                        " stops here", errand_id,
                    )  # fmt: skip
                    task.cancel()  # lost the lease: another process has taken over


def dead_local_owner(owner: str) -> bool:
    """True if *owner* (host:pid:nonce) names a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return not pid_alive(int(pid_text))
