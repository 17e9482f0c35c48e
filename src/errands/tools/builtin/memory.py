"""``remember`` and ``search_memory``: memory across errands (docs/memory.md).

A memory is kept in the store under the errand's scope -- ``schedule:NAME`` for a run
of a schedule (or of a recipe, which is a schedule; a sub-errand takes its parent's),
``person`` for any other errand -- with the label of what the ``remember`` call was
derived from (:attr:`ToolContext.label`: the errand's context when it was made). A
search's result carries the join of the labels of the memories it returns, so a memory
that came from a web page is untrusted when recalled, in any later errand, and flow
control judges what follows as it would after reading the page.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity, Label, join
from errands.errors import NotFound, UserError
from errands.store.memory import PERSON, check_memory, check_query, scope_of_schedule
from errands.tools.tool import (
    Tool,
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolOutput,
    make_tool,
)
from errands.tools.toolset import FunctionToolset

if TYPE_CHECKING:
    from errands.store.protocol import Memory, Store

__all__ = ["FOUND_AT_MOST", "MEMORY_TOOLS", "memory_toolset", "scope_of"]

MEMORY_TOOLS = ("remember", "search_memory")
FOUND_AT_MOST = 10  # memories one search returns
_PRIVATE = Label.of(Integrity.trusted, Confidentiality.private)
_MAX_DEPTH = 32  # sub-errands of sub-errands: how far up a scope is looked for


async def scope_of(store: Store, errand_id: str) -> str:
    """The memory scope of *errand_id*: its schedule's (or its nearest ancestor's), else
    ``person``."""
    current: str | None = errand_id
    for _ in range(_MAX_DEPTH):
        if current is None:
            break
        try:
            view = await store.view(current)
        except NotFound:
            break
        if view.schedule:
            return scope_of_schedule(view.schedule)
        current = view.parent
    return PERSON


def _line(m: Memory) -> str:
    day = time.strftime("%Y-%m-%d", time.localtime(m.at))
    tags = f", tags: {' '.join(m.tags)}" if m.tags else ""
    trust = ", untrusted: derived from outside content" if m.label.integrity == "untrusted" else ""
    return f"[memory {m.id}, kept {day}{tags}{trust}] {m.text}"


def memory_toolset(store: Store | None) -> FunctionToolset:
    """The two memory tools over *store* (added by :func:`errands.harness.build`); with
    None, for listing only (``errands tools``): a call says there is no store."""

    def the_store() -> Store:
        if store is None:
            raise ToolError("memory is not available here: errands has no store")
        return store

    async def remember(text: str, ctx: ToolContext, tags: list[str] | None = None) -> str:
        """Keep a fact for later errands (a preference, a detail the person told you, a
        result worth keeping); search_memory finds it again. Keep it short and
        self-contained.

        Args:
            text: The fact, in one or a few sentences (at most 8,000 characters).
            tags: A few words to file it under, e.g. ["family", "birthdays"].
        """
        scope = await scope_of(the_store(), ctx.errand_id)
        try:
            check_memory(scope, text, tags or [])
        except UserError as exc:
            raise ToolArgumentError(f"remember: {exc}") from None
        kept = await the_store().remember(
            scope,
            text,
            tags or [],
            ctx.label.joined(_PRIVATE),  # (a memory is the person's: private at least)
            errand_id=ctx.errand_id,
            seq=ctx.seq,
        )
        note = (
            "; it is marked untrusted (derived from outside content)"
            if kept.label.integrity is Integrity.untrusted
            else ""
        )
        return f"remembered as memory {kept.id} (scope {kept.scope}){note}"

    async def search_memory(query: str, ctx: ToolContext) -> ToolOutput:
        """Search what earlier errands remembered (with remember): the memories that
        match any of the words, best match first.

        Args:
            query: Words to look for, e.g. "Ana birthday".
        """
        scope = await scope_of(the_store(), ctx.errand_id)
        try:
            check_query(query)
        except UserError as exc:
            raise ToolArgumentError(f"search_memory: {exc}") from None
        found = await the_store().memories(scope, query, FOUND_AT_MOST)
        if not found:
            return ToolOutput(text=f"no memory (scope {scope}) matches {query!r}")
        label = join([_PRIVATE, *(m.label for m in found)])
        lines = [f"{len(found)} memories (scope {scope}), best match first:"]
        lines += [_line(m) for m in found]
        return ToolOutput(
            text="\n".join(lines),
            integrity=label.integrity,
            confidentiality=label.confidentiality,
            source="memory " + ", ".join(str(m.id) for m in found),
        )

    tools: list[Tool] = [
        make_tool(remember, effect=EffectClass.write_local, idempotent=True),
        make_tool(search_memory, effect=EffectClass.read, idempotent=True),
    ]
    return FunctionToolset(tools)
