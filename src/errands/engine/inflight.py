"""Model and tool calls in flight: a cancel interrupts them, a deadline ends them.

:meth:`InFlight.run` awaits a call *in its caller's task* -- no task, timer or callback
per call, which a durable step cannot afford (they cost more CPU than the rest of the
call's bookkeeping) -- and registers it: :meth:`InFlight.interrupt` cancels the task
awaiting it (:class:`Interrupted` is raised in place of the cancellation), and one
sweeper task, alive only while some call has a deadline, cancels the calls whose
deadline has passed (``TimeoutError``), to within :data:`SWEEP_SECONDS`.

The cancellation can only land inside the call: a call is registered only while its
task is suspended in it, and ``Task.cancel`` from another task is delivered at the
point where the task is suspended. A cancellation that is not ours (the runner
stopping the loop) is left as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["SWEEP_SECONDS", "InFlight", "Interrupted"]

T = TypeVar("T")
SWEEP_SECONDS = 0.25


class Interrupted(Exception):
    """A cancel interrupted the call in flight."""


class _Call:
    __slots__ = ("deadline", "errand_id", "stopped", "task")

    def __init__(self, task: asyncio.Task[object], errand_id: str, deadline: float | None) -> None:
        self.task = task
        self.errand_id = errand_id
        self.deadline = deadline
        self.stopped: str | None = None  # "interrupt" | "deadline": why it was cancelled


class InFlight:
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now  # the steady clock deadlines are on
        self._calls: dict[str, set[_Call]] = {}
        self._timed = 0  # calls with a deadline
        self._sweeper: asyncio.Task[None] | None = None

    def interrupt(self, errand_id: str) -> bool:
        """Interrupt every call in flight for the errand; True if there was one."""
        calls = self._calls.get(errand_id, ())
        for call in calls:
            self._stop(call, "interrupt")
        return bool(calls)

    async def run(self, errand_id: str, call: Awaitable[T], seconds: float | None) -> T:
        """Await *call*; :class:`Interrupted` if :meth:`interrupt` stopped it,
        ``TimeoutError`` once *seconds* have passed (None: no deadline)."""
        entry = self.enter(errand_id, seconds)
        try:
            return await call
        except asyncio.CancelledError:
            why = self.why(entry)
            if why is None:
                raise
            raise why from None
        finally:
            self.leave(entry)

    # (perf: the loop inlines these three around its own awaits -- a coroutine layer
    # per call costs more than the bookkeeping)

    def enter(self, errand_id: str, seconds: float | None) -> _Call:
        """Register the current task's call; pair with :meth:`leave`."""
        task = asyncio.current_task()
        assert task is not None, "a call runs in a task"
        entry = _Call(task, errand_id, None if seconds is None else self._now() + seconds)
        calls = self._calls.get(errand_id)
        if calls is None:
            calls = self._calls[errand_id] = set()
        calls.add(entry)
        if entry.deadline is not None:
            self._timed += 1
            sweeper = self._sweeper
            if (
                sweeper is None
                or sweeper.done()
                or sweeper.get_loop() is not asyncio.get_running_loop()
            ):
                self._ensure_sweeper()
        return entry

    def why(self, entry: _Call) -> Exception | None:
        """After a ``CancelledError`` in the call: what to raise in its place
        (:class:`Interrupted`, ``TimeoutError``), or None if the cancellation is not
        (only) ours -- then it must propagate."""
        if entry.stopped is None or entry.task.uncancel() > 0:
            return None
        if entry.stopped == "deadline":
            return TimeoutError("the call ran past its deadline")
        return Interrupted()

    def leave(self, entry: _Call) -> None:
        calls = self._calls.get(entry.errand_id)
        if calls is not None:
            calls.discard(entry)
            if not calls:
                del self._calls[entry.errand_id]
        if entry.deadline is not None:
            self._timed -= 1

    def _stop(self, call: _Call, why: str) -> None:
        if call.stopped is None:
            call.stopped = why
            call.task.cancel()

    def _ensure_sweeper(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while self._timed > 0:
            await asyncio.sleep(SWEEP_SECONDS)
            now = self._now()
            for calls in list(self._calls.values()):
                for call in list(calls):
                    if call.deadline is not None and call.deadline <= now:
                        self._stop(call, "deadline")

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
