"""The runner's own thread: errands run on an event loop of their own.

The HTTP side and the errands share one process and one store (one writer thread,
group commit), but not one event loop: with hundreds of errands running, a request
queued behind every ready errand callback on a shared loop would wait for all of
them. On its own loop, a request waits only for the interpreter's thread switch.

Cross-thread calls are explicit: :meth:`RunnerThread.nudge` (from the API loop: claim
now), the text listener (from the runner loop: handed to the API loop by the
caller), and :meth:`RunnerThread.stop`.

A store that cannot write right now (:class:`~errands.errors.StoreUnavailable`: a full
disk, another process holding the write lock, an I/O error) never stops the thread:
if it escapes the runner's serve loop, the loop is started again after a pause that
doubles up to ``RESTART_MAX`` (the errands resume from the store). Anything else is
a bug, reported to the server (:attr:`RunnerThread.error`), which shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from errands.errors import StoreError, StoreUnavailable
from errands.store.protocol import Listening, Store

if TYPE_CHECKING:  # (the engine: imported by what builds the runner)
    from errands.engine.runner import Runner

__all__ = ["RunnerThread", "Wake", "serve_through"]

RESTART_FIRST, RESTART_MAX = 1.0, 30.0  # seconds before serving again after the store failed
STEADY = 60.0  # serving this long without the store failing: the next pause starts short
# while the store's notifications arrive, a runner still looks for work this often: what
# a lost notification would have woken waits at most this long
SAFETY_POLL = 1.5

log = logging.getLogger("errands.server")


class RunnerThread:
    def __init__(
        self,
        make: Callable[[], Runner],
        *,
        poll: float = 0.25,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """*make* builds the runner, on the thread's own loop (it subscribes to the
        store there); *on_stop* runs on that loop when it stops (closing the models'
        connections, which belong to it)."""
        self._make = make
        self._on_stop = on_stop
        self.poll = poll
        self.runner: Runner | None = None
        self.error: BaseException | None = None
        self.restarts = 0  # times the serve loop was started again after the store failed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._claiming: asyncio.Task[None] | None = None
        self._again = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="errands-runner", daemon=True)
        self.finished: asyncio.Future[None] | None = None  # resolved on the caller's loop

    def start(self) -> None:
        """Start the thread; returns once the runner is serving."""
        self._launch()
        self._ready.wait()

    async def started(self) -> None:
        """Start the thread and wait until the runner is serving, without holding the
        caller's loop up meanwhile: the requests that come while the runner is built
        are answered (``errands up``: the first ones wait for the runner's start)."""
        self._launch()
        await asyncio.to_thread(self._ready.wait)

    def _launch(self) -> None:
        caller = asyncio.get_running_loop()
        self.finished = caller.create_future()
        self._caller = caller
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the server, which shuts down
            self.error = exc
            log.exception("the runner stopped with an error")
        finally:
            self._ready.set()
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                self._caller.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.runner = self._make()  # subscribes to the store on this loop
        self._ready.set()
        try:
            await self._serve_through(self.runner, self._stop)
        finally:
            if self._claiming is not None:
                self._claiming.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._claiming
            if self._on_stop is not None:
                await self._on_stop()

    async def _serve_through(self, runner: Runner, stop: asyncio.Event) -> None:
        await serve_through(runner, stop, self.poll, self._restarted)

    def _restarted(self) -> None:
        self.restarts += 1

    def why_down(self) -> str | None:
        """Why the runner is not serving (not started, stopped, failed); None while it is."""
        if self.error is not None:
            return f"the runner stopped with an error: {type(self.error).__name__}"
        if not self._thread.is_alive():
            return (
                "the runner has stopped" if self._ready.is_set() else "the runner has not started"
            )
        return None

    # -- called from other threads ---------------------------------------------------------

    def nudge(self) -> None:
        """Something became runnable: claim it now, not at the next poll. Coalesced."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._nudge)

    def _nudge(self) -> None:
        if self._claiming is not None and not self._claiming.done():
            self._again = True
            return
        self._claiming = asyncio.ensure_future(self._claim())

    async def _claim(self) -> None:
        assert self.runner is not None
        while True:
            self._again = False
            try:
                await self.runner.claim()
            except StoreUnavailable as exc:  # the runner's own poll claims it later
                log.info("claiming runnable errands waits for the store: %s", exc)
            except Exception:  # the runner's own poll claims it a moment later
                log.exception("claiming runnable errands failed")
            if not self._again:
                return

    async def stop(self) -> None:
        """Stop serving (the loops stop, leases are released) and wait for the thread."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join)


class Wake:
    """When a runner looks for work again: at once when the store notifies it (another
    process committed an errand to claim, a decision, a cancel, a sub-errand's end, a
    lease given back), at a timer another process set as it comes due, and otherwise
    every :attr:`safety_poll` seconds -- the net under a notification lost. While the
    store's notifications are down (the listening connection lost, or a store without
    them: SQLite), it polls every *poll* seconds, as before.

    Made and closed on the runner's loop; the listener calls back on its own thread."""

    safety_poll = SAFETY_POLL
    max_timers = 10_000  # timers remembered (the soonest); the rest wait for a poll

    def __init__(self, store: Store) -> None:
        self._loop = asyncio.get_running_loop()
        self._now = asyncio.Event()
        self._rearm = asyncio.Event()  # a timer was noted: the pause looks at it
        self._timers: list[float] = []  # a heap of wall times
        self.woken = 0  # looks a notification started (tests, figures)
        self.listening = self.listen(store)

    def listen(self, store: Store) -> Listening | None:
        return store.listen(self.notified)

    def notified(self, channel: str, payload: str) -> None:
        """(The listener's thread.) Look now, or when the timer *payload* names is due."""
        with contextlib.suppress(RuntimeError):  # the loop is gone
            self._loop.call_soon_threadsafe(self._note, payload)

    def _note(self, payload: str) -> None:
        kind, _, value = payload.partition(" ")
        if kind == "timer":
            with contextlib.suppress(ValueError):
                if len(self._timers) < self.max_timers:
                    heapq.heappush(self._timers, float(value))
                self._rearm.set()  # (a pause under way waits for it if it is sooner)
                return
        self._now.set()

    @property
    def connected(self) -> bool:
        return self.listening is not None and self.listening.connected

    async def pause(self, stop: asyncio.Event, poll: float) -> None:
        """Wait for *stop*, a notification, the soonest timer known, or the poll."""
        deadline = time.time() + (self.safety_poll if self.connected else poll)
        while not self._now.is_set() and not stop.is_set():
            self._rearm.clear()
            now = time.time()
            while self._timers and self._timers[0] <= now:
                heapq.heappop(self._timers)  # (due: this look claims it)
            until = min(deadline, self._timers[0]) if self._timers else deadline
            if until <= now:
                break
            waits = {
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._now.wait()),
                asyncio.ensure_future(self._rearm.wait()),
            }
            try:
                await asyncio.wait(waits, timeout=until - now, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
            if not self._rearm.is_set():
                break  # (the poll, the timer, a notification, or stop)
        if self._now.is_set():
            self.woken += 1
        self._now.clear()

    def close(self) -> None:
        if self.listening is not None:
            self.listening.close()


async def serve_through(
    runner: Runner,
    stop: asyncio.Event,
    poll: float,
    restarted: Callable[[], None] | None = None,
    wake: Callable[[Store], Wake] = Wake,
) -> None:
    """Serve until *stop*; the store failing for a while is waited out, not fatal
    (*restarted* is called each time serving starts again after it failed). Between
    two looks for work it waits as *wake* (:class:`Wake`) says: at once on a
    notification, and every *poll* seconds while there are none."""
    waker = wake(runner.store)
    try:
        await _serve_through(runner, stop, poll, restarted, waker)
    finally:
        await asyncio.to_thread(waker.close)
        stopped = getattr(runner.store, "worker_stopped", None)  # (errands workers)
        if stopped is not None:
            with contextlib.suppress(StoreError):
                await stopped(runner.owner)


async def _serve_through(
    runner: Runner,
    stop: asyncio.Event,
    poll: float,
    restarted: Callable[[], None] | None,
    waker: Wake,
) -> None:
    pause = 0.0
    while not stop.is_set():
        started = time.monotonic()
        try:
            await runner.serve(stop, poll=poll, pause=waker.pause)
            return
        except StoreUnavailable as exc:
            if time.monotonic() - started >= STEADY:
                pause = 0.0
            pause = min(max(2 * pause, RESTART_FIRST), RESTART_MAX)
            if restarted is not None:
                restarted()
            log.warning("the runner waits for the store (%s); it goes on in %.0f s", exc, pause)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
