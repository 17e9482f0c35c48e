"""Toolsets: where an errand's tools come from.

A :class:`Toolset` does two things: list the tools an errand may use
(:meth:`Toolset.tools`) and run one of them (:meth:`Toolset.call`). The loop and the
dispatcher see nothing else, so what sits behind the protocol can be a set of Python
functions (:class:`FunctionToolset`, the built-ins and a person's own tools), an MCP
server, a tool search over thousands of tools, or a combination:

- :class:`CombinedToolset` -- several toolsets as one (a name may come from only one);
- :class:`FilteredToolset` -- the tools of another toolset that a predicate keeps,
  per errand (per-errand tool sets); :class:`AllowedToolset`, the tools an errand's
  own allow-list names (``ErrandView.tools``: a schedule's runs).

A listing is a :class:`ToolList`: immutable, sorted by name, with the schemas the
model sees and their fingerprint. A toolset returns the *same* list object for as
long as nothing changed, so what the model sees stays byte-stable (the provider's
prompt cache) and the loop pays nothing per step for asking again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from errands.core.canonical import canonical_hash
from errands.core.messages import ToolSchema
from errands.core.states import ErrandView
from errands.tools.tool import (
    Contract,
    EffectSpec,
    Preview,
    Tool,
    ToolContext,
    ToolOutput,
    UnknownTool,
    make_tool,
)

__all__ = [
    "AllowedToolset",
    "CombinedToolset",
    "FilteredToolset",
    "FunctionToolset",
    "ToolList",
    "Toolset",
]


class ToolList:
    """The tools one errand may use: by name, sorted, with schemas and a fingerprint."""

    __slots__ = ("_by_name", "_fingerprint", "_schemas", "withheld")

    def __init__(
        self, tools: Iterable[Tool] = (), withheld: Mapping[str, str] | None = None
    ) -> None:
        by_name: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in by_name:
                raise ValueError(f"two tools are named {tool.name}")
            by_name[tool.name] = tool
        self._by_name = dict(sorted(by_name.items()))
        self._schemas: tuple[ToolSchema, ...] | None = None
        self._fingerprint: str | None = None
        # tools a toolset knows but does not offer, and why (an MCP tool whose definition
        # changed since a person approved it): a call names the reason, not "unknown"
        self.withheld: Mapping[str, str] = withheld or {}

    def get(self, name: str) -> Tool:
        try:
            return self._by_name[name]
        except KeyError:
            if name in self.withheld:
                raise UnknownTool(self.withheld[name]) from None
            known = ", ".join(self._by_name) or "none"
            raise UnknownTool(f"unknown tool {name!r}; available tools: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def schemas(self) -> tuple[ToolSchema, ...]:
        """What the model sees, in a deterministic order (a byte-stable prefix)."""
        if self._schemas is None:
            self._schemas = tuple(t.schema for t in self)
        return self._schemas

    @property
    def fingerprint(self) -> str:
        """Canonical hash of every schema: changes iff what the model sees changes."""
        if self._fingerprint is None:
            self._fingerprint = canonical_hash(
                [
                    {"name": s.name, "description": s.description, "parameters": s.parameters}
                    for s in self.schemas
                ]
            )
        return self._fingerprint


@runtime_checkable
class Toolset(Protocol):
    """Lists an errand's tools and runs them."""

    def tools(self, errand: ErrandView) -> ToolList:
        """The tools *errand* may use now (the same object while nothing changed)."""
        ...

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        """Run *tool* -- one this toolset listed -- on validated *args*. A tool's failure
        raises :class:`~errands.tools.tool.ToolError` (told to the model)."""
        ...


class FunctionToolset:
    """Python functions as tools: the built-ins, and a person's own.

    ``toolset.add(make_tool(fn, effect=...))``, or as a decorator::

        tools = FunctionToolset()

        @tools.tool(effect=EffectClass.read, roles={"path": "path"})
        def word_count(path: str, ctx: ToolContext) -> int: ...
    """

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._list: ToolList | None = None
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name} is registered already")
        self._tools[tool.name] = tool
        self._list = None
        return tool

    def tool(
        self,
        *,
        effect: EffectSpec,
        idempotent: bool = False,
        honours_idempotency_key: bool = False,
        name: str | None = None,
        pre: Iterable[Contract] = (),
        post: Iterable[Contract] = (),
        roles: dict[str, str] | None = None,
        preview: Preview | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: add a typed function as a tool (see :func:`make_tool`)."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(
                make_tool(
                    fn,
                    effect=effect,
                    idempotent=idempotent,
                    honours_idempotency_key=honours_idempotency_key,
                    name=name,
                    pre=pre,
                    post=post,
                    roles=roles,
                    preview=preview,
                )
            )
            return fn

        return decorate

    @property
    def listing(self) -> ToolList:
        """Every tool (the same object until a tool is added)."""
        if self._list is None:
            self._list = ToolList(self._tools.values())
        return self._list

    def get(self, name: str) -> Tool:
        return self.listing.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def tools(self, errand: ErrandView) -> ToolList:
        return self.listing

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        return await tool.invoke(args, ctx)


class _Memo:
    """A few listings a combinator derived, by what they were derived from (the keys
    hold the listings themselves, compared by identity, so a key is never reused)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.items: dict[tuple[Any, ...], ToolList] = {}

    def get(self, key: tuple[Any, ...], make: Callable[[], ToolList]) -> ToolList:
        found = self.items.get(key)
        if found is None:
            if len(self.items) >= self.size:
                self.items.clear()
            found = self.items[key] = make()
        return found


class CombinedToolset:
    """Several toolsets as one. A tool name may come from only one of them: a second
    toolset listing the same name is refused (no tool shadows another)."""

    def __init__(self, toolsets: Sequence[Toolset]) -> None:
        self.toolsets = tuple(toolsets)
        self._memo = _Memo()
        # id(tool) -> (the tool, the toolset that listed it); the tool is kept so its id
        # is not reused while the entry exists
        self._owner: dict[int, tuple[Tool, Toolset]] = {}

    def tools(self, errand: ErrandView) -> ToolList:
        lists = [ts.tools(errand) for ts in self.toolsets]

        def merge() -> ToolList:
            for ts, listing in zip(self.toolsets, lists, strict=True):
                for tool in listing:
                    self._owner[id(tool)] = (tool, ts)
            withheld = {k: v for listing in lists for k, v in listing.withheld.items()}
            return ToolList((tool for listing in lists for tool in listing), withheld)

        return self._memo.get(tuple(lists), merge)

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        found = self._owner.get(id(tool))
        if found is None or found[0] is not tool:
            raise UnknownTool(f"{tool.name} is not one of these toolsets' tools")
        return await found[1].call(tool, args, ctx)


class FilteredToolset:
    """The tools of *inner* that *keep(errand, tool)* keeps -- per errand."""

    def __init__(self, inner: Toolset, keep: Callable[[ErrandView, Tool], bool]) -> None:
        self.inner = inner
        self.keep = keep
        self._memo = _Memo()

    def tools(self, errand: ErrandView) -> ToolList:
        listing = self.inner.tools(errand)
        kept = tuple(t for t in listing if self.keep(errand, t))
        if len(kept) == len(listing):
            return listing
        return self._memo.get(
            (listing, *(t.name for t in kept)), lambda: ToolList(kept, listing.withheld)
        )

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        return await self.inner.call(tool, args, ctx)


class AllowedToolset(FilteredToolset):
    """Only the tools an errand's allow-list names (``ErrandView.tools``); every tool of
    *inner* for an errand without one (the common case costs one attribute read)."""

    def __init__(self, inner: Toolset) -> None:
        super().__init__(inner, lambda errand, tool: tool.name in (errand.tools or ()))

    def tools(self, errand: ErrandView) -> ToolList:
        if errand.tools is None:
            return self.inner.tools(errand)
        return super().tools(errand)
