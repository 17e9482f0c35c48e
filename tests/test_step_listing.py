"""The step's tool listing (Dispatcher.tools): listed through the toolset stack once a
step, and never stale after a change that matters -- a tool run that changes a toolset,
a tool search that adds tools."""

from __future__ import annotations

from typing import Any

from helpers.kit import call, harness_for, script

from errands.config import Settings
from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.states import ErrandState, ErrandView
from errands.engine.dispatch import Dispatcher
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.tools.tool import Tool, ToolContext, ToolOutput, make_tool
from errands.tools.toolset import FunctionToolset, ToolList


class CountingToolset(FunctionToolset):
    """A function toolset that counts how often it is listed."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = 0

    def tools(self, errand: ErrandView) -> ToolList:
        self.listed += 1
        return super().tools(errand)

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        return await super().call(tool, args, ctx)


def _registry() -> CountingToolset:
    reg = CountingToolset()

    def note(text: str) -> str:
        """Note something.

        Args:
            text: what
        """
        return f"noted: {text}"

    def later(text: str) -> str:
        """A tool that joins once learn has run.

        Args:
            text: what
        """
        return f"later: {text}"

    def learn() -> str:
        """Add the tool 'later' to this toolset."""
        reg.add(make_tool(later, effect=ev.EffectClass.none))
        return "learned"

    reg.add(make_tool(note, effect=ev.EffectClass.none, idempotent=True))
    reg.add(make_tool(learn, effect=ev.EffectClass.none))
    return reg


class StaleDispatcher(Dispatcher):
    """Negative control: never lists an errand's tools afresh (no forget)."""

    def forget(self, errand_id: str) -> None:
        return None


class StaleLoop(Loop):
    dispatcher_class = StaleDispatcher


class UncachedDispatcher(Dispatcher):
    """Negative control: lists through the whole stack every time it is asked."""

    def tools(self, p: Progress) -> ToolList:
        return self.toolset.tools(p.view)


class UncachedLoop(Loop):
    dispatcher_class = UncachedDispatcher


async def _run(
    store: Store, settings: Settings, turns: list[dict[str, Any]], loop: type[Loop] = Loop
) -> tuple[CountingToolset, str]:
    reg = _registry()
    model = script(*turns)
    harness = harness_for(store, settings, tools=reg, model=model, policy=AllowAll())
    eid = await create_errand(store, settings, "note things", model="scripted:demo")
    await harness.runner(loop_class=loop).run_errand(eid)
    return reg, eid


async def _requests(store: Store, eid: str) -> list[ev.ModelRequested]:
    return [s.event for s in await store.read(eid) if isinstance(s.event, ev.ModelRequested)]


async def test_a_step_lists_its_tools_once(store: Store, settings: Settings) -> None:
    steps = 6
    turns = [{"text": "", "tool_calls": [call("note", text=f"n{i}")]} for i in range(steps)]
    reg, eid = await _run(store, settings, [*turns, {"text": "done"}])
    assert (await store.view(eid)).state is ErrandState.done
    # the request, the routing, the run and the next request of a step share one
    # listing (it was four); one more for the first request of the run
    assert reg.listed <= steps + 2, reg.listed
    # negative control: asked every time, the stack is listed four times a step
    control, _ = await _run(store, settings, [*turns, {"text": "done"}], loop=UncachedLoop)
    assert control.listed >= 4 * steps, control.listed


async def test_a_tool_that_changes_its_toolset_is_seen_by_the_next_request(
    store: Store, settings: Settings
) -> None:
    turns = [
        {"text": "", "tool_calls": [call("learn")]},
        {"text": "", "tool_calls": [call("later", text="x")]},
        {"text": "done"},
    ]
    _, eid = await _run(store, settings, turns)
    requests = await _requests(store, eid)
    assert requests[0].tools_hash != requests[1].tools_hash  # 'later' joined the list
    results = [s.event for s in await store.read(eid) if isinstance(s.event, ev.ToolResult)]
    assert [r.ok for r in results] == [True, True]
    assert results[1].content.text == "later: x"

    # negative control: a dispatcher that keeps its listing for the whole run logs the
    # old list for the second request, and the call of the new tool is refused
    _, eid2 = await _run(store, settings, turns, loop=StaleLoop)
    stale = await _requests(store, eid2)
    assert stale[0].tools_hash == stale[1].tools_hash
    refused = [s.event for s in await store.read(eid2) if isinstance(s.event, ev.ToolResult)]
    assert refused[1].ok is False and refused[1].error_kind == "unknown_tool"
