"""Tool search: an errand with more tools than fit sees a few, and finds the rest.

When the schemas of the tools an errand may use would take more than a budget of
tokens (``[tools] search_budget_tokens``, 5,000 by default; tokens = characters / 4 of
their ``json.dumps``), :class:`SearchingToolset` offers the model only the pinned tools
(``[tools] search_pinned``) and ``search_tools(query)``. Each search adds the tools it
finds (:class:`~errands.tools.search.index.ToolIndex`, BM25) to the errand's tool list:

- **append-only**: a found tool goes after the ones found before it and is never moved
  or dropped, so the tools the model sees only ever grow at their end and the
  provider's prompt cache keeps everything before them;
- **from the log**: the tools an errand has found are a pure function of the queries of
  its ``search_tools`` calls (``ErrandView.tool_searches``, folded from the log) and
  of the tools errands has, so a resumed or replayed errand sends the same requests;
- **within the budget**: a found tool joins only while the list stays within the
  budget; past it the search says so (the tools it found are named, not added).

An errand whose tools fit within the budget sees them all, as before (no search tool).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from errands.core.events import EffectClass
from errands.core.messages import ToolSchema
from errands.core.states import SEARCH_TOOLS, ErrandView
from errands.tools.search.index import IndexedTool, ToolIndex
from errands.tools.tool import Tool, ToolContext, ToolOutput, make_tool
from errands.tools.toolset import ToolList, Toolset, _Memo

__all__ = ["FoundToolList", "SearchingToolset", "schema_tokens"]


def schema_tokens(schemas: Iterable[ToolSchema]) -> int:
    """Tokens of *schemas* as the budget counts them: characters / 4 of the
    ``json.dumps`` of their list of ``{name, description, parameters}``."""
    listed = [
        {"name": s.name, "description": s.description, "parameters": s.parameters} for s in schemas
    ]
    return len(json.dumps(listed)) // 4 if listed else 0


class FoundToolList(ToolList):
    """A tool list in the order given (pinned tools, the search, then what was found in
    the order it was found): unlike :class:`ToolList`, not sorted by name, so a tool
    found later is appended after the others and never moves them.

    Every tool of *every* (the inner toolset's list) can still be called by name, and is
    among :attr:`names`: the search decides what the model is shown (:attr:`schemas`), not
    what it may use (that is the allow-list's and the policy's), so a task that names a
    tool it was told of works as before.
    """

    __slots__ = ("every",)

    def __init__(self, tools: Sequence[Tool], every: ToolList) -> None:
        super().__init__(tools, every.withheld)
        self._by_name = {t.name: t for t in tools}
        self.every = every

    def get(self, name: str) -> Tool:
        if name in self._by_name or name not in self.every:
            return super().get(name)
        return self.every.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Every tool the errand may call (what a schedule's or a sub-errand's ``tools``
        may name); the tools shown are :attr:`schemas`."""
        return self.every.names


def search_tools(query: str) -> str:  # (run by SearchingToolset.call)
    """Find tools for a task among the many errands has: the ones found are added to
    your tools and can be called from your next step on.

    Args:
        query: what the tool should do, in a few words (e.g. "convert currency",
            "weather forecast for a city").
    """
    raise NotImplementedError("search_tools is run by its toolset")


class _Pool:
    """What one listing of the inner toolset gives: the pinned tools and the search
    index over the others (built once per listing)."""

    def __init__(self, listing: ToolList, pinned: Sequence[str], search: Tool) -> None:
        self.listing = listing
        self.pinned = [t for t in listing if t.name in pinned]
        self.base = [*self.pinned, search]
        self.searchable = [t for t in listing if t.name not in pinned]
        self.index = ToolIndex(
            IndexedTool(t.name, t.schema.description, t.schema.parameters) for t in self.searchable
        )


class SearchingToolset:
    """*inner*'s tools, or -- when they exceed *budget_tokens* -- the *pinned* ones,
    ``search_tools``, and the tools the errand's searches found (see the module)."""

    def __init__(
        self,
        inner: Toolset,
        *,
        budget_tokens: int = 5_000,
        pinned: Sequence[str] = (),
        results: int = 5,
    ) -> None:
        self.inner = inner
        self.budget_tokens = budget_tokens
        self.pinned = tuple(pinned)
        self.results = results
        self.search = make_tool(
            search_tools, effect=EffectClass.none, idempotent=True, name=SEARCH_TOOLS
        )
        self._pools: dict[int, tuple[ToolList, _Pool | None]] = {}
        self._memo = _Memo()
        # errand -> its pool and queries when last listed (what a search adds to)
        self._seen: dict[str, tuple[_Pool, tuple[str, ...]]] = {}
        self._latest: _Pool | None = None

    def _pool(self, listing: ToolList) -> _Pool | None:
        """The pool of *listing*, or None when its tools fit (or it has a search tool)."""
        known = self._pools.get(id(listing))
        if known is not None and known[0] is listing:
            return known[1]
        pool = None
        fits = schema_tokens(listing.schemas) <= self.budget_tokens
        if not fits and SEARCH_TOOLS not in listing:
            pool = _Pool(listing, self.pinned, self.search)
        if len(self._pools) >= 16:
            self._pools.clear()
        self._pools[id(listing)] = (listing, pool)  # (the listing kept: its id not reused)
        return pool

    def found(self, pool: _Pool, queries: Sequence[str]) -> list[Tool]:
        """The tools *queries*' searches add, in the order found, within the budget."""
        added: list[Tool] = []
        names = {t.name for t in pool.base}
        shown = [t.schema for t in pool.base]
        for query in queries:
            for place in pool.index.search(query, self.results):
                tool = pool.searchable[place]
                if tool.name in names:
                    continue
                # the whole list counted (a tool's own count misses the separators)
                if schema_tokens([*shown, tool.schema]) > self.budget_tokens:
                    continue  # (full: a smaller tool found later may still fit)
                names.add(tool.name)
                added.append(tool)
                shown.append(tool.schema)
        return added

    def tools(self, errand: ErrandView) -> ToolList:
        listing = self.inner.tools(errand)
        pool = self._pool(listing)
        if pool is None:
            return listing
        queries = tuple(errand.tool_searches)
        if len(self._seen) >= 4096:
            self._seen.clear()
        self._seen[errand.id] = (pool, queries)
        self._latest = pool
        return self._memo.get(
            (listing, *queries),
            lambda: FoundToolList([*pool.base, *self.found(pool, queries)], listing),
        )

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        if tool is not self.search:
            return await self.inner.call(tool, args, ctx)
        return ToolOutput(text=self.answer(ctx.errand_id, str(args["query"])))

    def answer(self, errand_id: str, query: str) -> str:
        """What ``search_tools(query)`` tells the model: the tools it found, and which
        of them it can call (all, unless the budget is full)."""
        pool, before = self._seen.get(errand_id, (self._latest, ()))
        if pool is None:
            return "every tool is in your tool list already: there is nothing to search"
        hits = [pool.searchable[i] for i in pool.index.search(query, self.results)]
        if not hits:
            return f"no tool matches {query!r}: try other words"
        now = {t.name for t in pool.base} | {t.name for t in self.found(pool, (*before, query))}
        lines = [f"Tools for {query!r} (callable from your next step):"]
        for t in hits:
            summary = " ".join(t.schema.description.split())[:160]
            mark = "" if t.name in now else " [not added: the tool list is full]"
            lines.append(f"- {t.name}: {summary}{mark}")
        return "\n".join(lines)
