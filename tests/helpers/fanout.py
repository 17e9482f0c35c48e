"""Sub-errand tests' parts: a model that plays a parent fanning out and its children,
and a server-like runner (claiming, wake-ups) to run them in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from errands.config import Settings
from errands.core.events import ToolCall, Usage
from errands.core.states import TERMINAL, ErrandView
from errands.engine.runner import Runner
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.store import Store

CHILD = "CHILD"  # a child's task starts with this


class FanModel:
    """A parent's first turn calls ``delegate`` with *n* tasks (``CHILD k``); its next
    turn answers with the result it read. A child (its task starts with ``CHILD``) calls
    ``list_files`` ``child_calls - 1`` times, then answers ``answer of CHILD k``. Each
    call takes *latency* seconds. *child_tool* replaces ``list_files`` (a child that
    asks for approval, say); *delegate_args* are added to the call."""

    name = "scripted:demo"

    def __init__(
        self,
        n: int,
        *,
        child_calls: int = 1,
        latency: float = 0.0,
        child_tool: tuple[str, dict[str, Any]] = ("list_files", {}),
        task: Callable[[int], dict[str, Any]] | None = None,
        **delegate_args: Any,
    ) -> None:
        self.n, self.child_calls, self.latency = n, child_calls, latency
        self.child_tool = child_tool
        self.task = task or (lambda k: {"task": f"{CHILD} {k}"})
        self.delegate_args = delegate_args
        self.asked: dict[str, int] = {}  # model calls per errand
        self.calling = 0  # model calls in progress now
        self.peak = 0  # the most that were ever in progress at once

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self.asked[request.errand_id] = self.asked.get(request.errand_id, 0) + 1
        if self.latency:
            self.calling += 1
            self.peak = max(self.peak, self.calling)
            try:
                await asyncio.sleep(self.latency)
            finally:
                self.calling -= 1
        k = sum(1 for m in request.messages if m.role == "assistant")
        first = next(m.text for m in request.messages if m.role == "user")
        usage = Usage(input_tokens=10, output_tokens=5)
        if CHILD in first:
            if k < self.child_calls - 1:
                name, args = self.child_tool
                call = ToolCall(call_id=f"c{k}", name=name, arguments=args)
                return ModelReply(tool_calls=[call], usage=usage, model=self.name)
            task = first[first.index(CHILD) :].split("\n")[0]
            return ModelReply(text=f"answer of {task}", usage=usage, model=self.name)
        if k == 0:
            args = {"tasks": [self.task(i) for i in range(self.n)], **self.delegate_args}
            call = ToolCall(call_id="d0", name="delegate", arguments=args)
            return ModelReply(tool_calls=[call], usage=usage, model=self.name)
        return ModelReply(text="parent read: " + request.messages[-1].text, usage=usage)


@contextlib.asynccontextmanager
async def serving(runner: Runner, poll: float = 0.05) -> AsyncIterator[Runner]:
    """The runner serving (claiming, wake-ups) as ``errands up`` does, stopped after."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.serve(stop, poll=poll))
    try:
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(
    store: Store, errand_id: str, check: Callable[[ErrandView], bool], timeout: float = 20
) -> ErrandView:
    """The errand's view once *check* holds (looked at every 20 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        view = await store.view(errand_id)
        if check(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{errand_id} is {view.state.value} ({view.reason}) after {timeout} s"
            )
        await asyncio.sleep(0.02)


def ended(view: ErrandView) -> bool:
    return view.state in TERMINAL


def with_subagents(settings: Settings, **limits: Any) -> Settings:
    """*settings* with ``[subagents]`` changed as *limits* say."""
    return settings.model_copy(update={"subagents": settings.subagents.model_copy(update=limits)})
