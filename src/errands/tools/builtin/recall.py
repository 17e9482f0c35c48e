"""``recall_output``: bring back a tool output that context compaction masked
(errands.engine.context; docs/context.md).

The stub the model reads in place of a masked output names a handle (``output-SEQ``: the
log position of the result). The tool reads that one event from the store and returns
its text with its own labels and source, so an untrusted page recalled is still
untrusted. It is offered to every errand whose model has a known context window (the
errands compaction may touch) -- from its first request, so that the tools stay a
cached prefix.
"""

from __future__ import annotations

from typing import Any

from errands.config import Settings
from errands.core import events as ev
from errands.core.states import ErrandView
from errands.engine.context import handle_of, seq_of
from errands.models.windows import context_window
from errands.store import Store
from errands.tools.tool import Tool, ToolContext, ToolError, ToolOutput, make_tool
from errands.tools.toolset import ToolList, Toolset, _Memo

__all__ = ["RECALL", "RecallToolset", "recall_tool"]

RECALL = "recall_output"


def recall_tool(store: Store) -> Tool:
    """The ``recall_output`` tool over *store*."""

    async def recall_output(handle: str, ctx: ToolContext) -> ToolOutput:
        """Bring back a tool output that was masked to save context: its stub names the
        handle. The output enters the conversation again (and may be masked again later).

        Args:
            handle: The handle the stub names, e.g. "output-42".
        """
        seq = seq_of(handle)
        found = [] if seq is None else await store.read_latest(ctx.errand_id, 1, before=seq + 1)
        event = found[0].event if found and found[0].seq == seq else None
        if seq is None or not isinstance(event, ev.ToolResult):
            example = handle_of(42)
            raise ToolError(
                f"recall_output: {handle!r} names no tool output of this errand "
                f"(a handle looks like {example!r}: copy it from the stub)"
            )
        content = event.content
        return ToolOutput(
            text=content.text,
            integrity=content.integrity,
            confidentiality=content.confidentiality,
            source=content.provenance.source,
        )

    return make_tool(recall_output, effect=ev.EffectClass.read, idempotent=True, name=RECALL)


class RecallToolset:
    """*inner*'s tools, and ``recall_output`` for an errand whose model has a known
    context window (in place of any tool of *inner* with that name)."""

    def __init__(self, inner: Toolset, settings: Settings, store: Store) -> None:
        self.inner = inner
        self.settings = settings
        self.recall = recall_tool(store)
        self._memo = _Memo()
        self._windows: dict[str, bool] = {}

    def _compacts(self, spec: str) -> bool:
        known = self._windows.get(spec)
        if known is None:
            known = self._windows[spec] = context_window(spec, self.settings) is not None
        return known

    def tools(self, errand: ErrandView) -> ToolList:
        listing = self.inner.tools(errand)
        if not self._compacts(errand.model):
            return listing
        return self._memo.get(
            (listing,),
            lambda: ToolList(
                [*(t for t in listing if t.name != RECALL), self.recall], listing.withheld
            ),
        )

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        if tool is self.recall:
            return await tool.invoke(args, ctx)
        return await self.inner.call(tool, args, ctx)
