"""The MCP toolset: every configured server's pinned tools, as ``mcp__SERVER__TOOL``.

:class:`McpToolset` is a :class:`~errands.tools.toolset.Toolset`. Its servers live on
an event loop of their own, in a thread (:class:`Runtime`): the toolset protocol lists
synchronously, the SDK's connections must stay on one loop, and an errand's runner may
be on any loop. The first listing starts the servers (lazily) and waits for them;
after that, listings are refreshed in the background and never block a step.

What the model is offered is decided by :func:`errands.tools.mcp.pins.judge` on every
listing: only tools whose whole definition matches a person's pin. Before each call
the server is listed again when its last listing is older than ``[mcp]
relist_seconds`` (or came from an earlier start of the server), the pins are read
again, and a call to a tool that is no longer pinned is refused, saying why and what to
do. Every result is labelled untrusted (flow control applies to it), private, with the
server and tool as its source.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
import time
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from errands.core.labels import Confidentiality, Integrity
from errands.core.states import ErrandView
from errands.store.protocol import StoreReader
from errands.tools.mcp.client import Connection, McpError, Target, describe, require_sdk
from errands.tools.mcp.extras import extras_for, run_extra
from errands.tools.mcp.pins import (
    Listing,
    Pinner,
    ServerReport,
    ToolState,
    ToolStatus,
    effect_of,
    exposed_name,
    full_definition,
    idempotent_of,
    judge,
)
from errands.tools.mcp.settings import McpSettings
from errands.tools.tool import Tool, ToolArgumentError, ToolContext, ToolError, ToolOutput
from errands.tools.toolset import ToolList

__all__ = ["McpTool", "McpToolset", "Runtime", "judge_all", "result_text"]

T = TypeVar("T")

CHECK_SECONDS = 2.0  # pins are read again (in the background) at most this often
FIRST_LISTING_MARGIN = 5.0


class Runtime:
    """An event loop in a daemon thread, started on first use, for the servers."""

    def __init__(self, name: str = "errands-mcp") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    @property
    def started(self) -> bool:
        return self._loop is not None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await *coro* on the runtime's loop from another loop (a cancel reaches it)."""
        return await asyncio.wrap_future(self.submit(coro))

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self, last: Coroutine[Any, Any, Any] | None = None, timeout: float = 10.0) -> None:
        """Run *last* (closing the servers), then end the loop and its thread."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            if last is not None:
                last.close()
            return
        if last is not None:
            # (stopping: what could not close is ended with the loop)
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(last, loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if not loop.is_running():
            loop.close()


class _AnyArguments(BaseModel):
    model_config = ConfigDict(extra="allow")


@dataclass
class McpTool(Tool):
    """A pinned MCP tool: arguments validated against its (pinned) input schema."""

    server: str = ""
    remote: str = ""  # its name on the server
    digest: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict)
    extra: str = ""  # one of errands' own resource or prompt tools (.extras), not the server's

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        from jsonschema import validators  # type: ignore[import-untyped]
        from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

        args = dict(raw)
        try:
            cls = validators.validator_for(self.input_schema)
            errors = sorted(cls(self.input_schema).iter_errors(args), key=lambda e: e.path)
        except SchemaError as exc:
            raise ToolArgumentError(
                f"{self.name}: its input schema is not valid JSON Schema ({exc.message})"
            ) from None
        if errors:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e.path) or 'arguments'}: {e.message[:200]}"
                for e in errors[:5]
            )
            raise ToolArgumentError(f"bad arguments for {self.name}: {problems}")
        return args


def _not_here(**kwargs: Any) -> Any:
    raise ToolError("an MCP tool runs through its toolset")


def make_mcp_tool(status: ToolStatus, effects: Mapping[str, Any]) -> McpTool:
    assert status.definition is not None and status.digest is not None
    raw = status.definition["tool"]
    schema = raw.get("inputSchema")
    schema = dict(schema) if isinstance(schema, dict) else {"type": "object"}
    shown = {k: v for k, v in schema.items() if k != "$schema"}
    shown.setdefault("type", "object")
    shown.setdefault("properties", {})
    description = raw.get("description") or raw.get("title") or status.tool
    effect = effects.get(status.tool) or effect_of(raw)
    return McpTool(
        name=status.name,
        description=str(description),
        fn=_not_here,
        args_model=_AnyArguments,
        effect_spec=effect,
        idempotent=idempotent_of(raw),
        _schema=shown,
        server=status.server,
        remote=status.tool,
        digest=status.digest,
        input_schema=schema,
    )


def judge_all(
    listings: Mapping[str, Listing], pins: list[Any], pinner: Pinner = full_definition
) -> dict[str, list[ToolStatus]]:
    """Every server's tool states, a tool name two servers list refused on both."""
    owners: dict[str, set[str]] = {}
    for server, listing in listings.items():
        for raw in listing.tools:
            if isinstance(raw.get("name"), str):
                owners.setdefault(raw["name"], set()).add(server)
    out = {}
    for server, listing in listings.items():
        taken = {
            name: sorted(s for s in servers if s != server)[0]
            for name, servers in owners.items()
            if len(servers) > 1 and server in servers
        }
        out[server] = judge(listing, pins, pinner=pinner, taken=taken)
    return out


@dataclass(frozen=True)
class _State:
    listing: ToolList
    tools: Mapping[str, McpTool]
    statuses: Mapping[str, list[ToolStatus]]
    key: tuple[Any, ...]


class McpToolset:
    """The configured MCP servers' pinned tools (see the module's documentation).

    *targets*: how to reach a server instead of its configuration (tests: an in-process
    server); *pinner*: what a pin is taken over (tests: a weaker one, as a control).
    Close it with :meth:`aclose` (or :meth:`close`): the servers stop with errands."""

    def __init__(
        self,
        settings: McpSettings,
        store: StoreReader,
        *,
        logs: Path | None = None,
        targets: Mapping[str, Target] | None = None,
        pinner: Pinner = full_definition,
        runtime: Runtime | None = None,
    ) -> None:
        require_sdk()
        self.settings = settings
        self.store = store
        self.pinner = pinner
        self.runtime = runtime or Runtime()
        self.connections = {
            name: Connection(
                name,
                server,
                target=(targets or {}).get(name),
                logs=logs,
                max_backoff=settings.max_backoff_seconds,
                max_result_chars=settings.max_result_chars,
            )
            for name, server in settings.servers.items()
        }
        self.listings: dict[str, Listing] = {}
        self.listed_generation: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self._state: _State | None = None
        self._checked = 0.0
        self._refreshing: concurrent.futures.Future[None] | None = None
        self._closed = False
        _open.add(self)

    # -- the toolset protocol -----------------------------------------------------------

    def tools(self, errand: ErrandView) -> ToolList:
        state = self._state
        if state is None:
            if self._closed:
                return ToolList()
            wait = max(
                s.startup_seconds + s.timeout_seconds for s in self.settings.servers.values()
            )
            warming = self._refreshing
            with contextlib.suppress(concurrent.futures.TimeoutError):
                if warming is not None and not warming.done():  # (the listing warm() began)
                    warming.result(wait + FIRST_LISTING_MARGIN)
                else:
                    self.runtime.run_blocking(self.refresh(), wait + FIRST_LISTING_MARGIN)
            state = self._state
            if state is None:
                return ToolList()
        elif time.monotonic() - self._checked >= CHECK_SECONDS and not self._closed:
            self._check_in_background()
        return state.listing

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        if not isinstance(tool, McpTool):
            raise ToolError(f"{tool.name} is not an MCP tool")
        return await self.runtime.run(self._call(tool, args))

    def warm(self) -> None:
        """Start the servers and list their tools now, in the background: ``errands up``
        and ``errands worker`` call it at start, so that the first errand finds the tools
        listed instead of holding up every errand of its runner while a server starts."""
        if self._state is None and not self._closed and self._refreshing is None:
            self._checked = time.monotonic()
            self._refreshing = self.runtime.submit(self.refresh())

    # -- listing and judging (on the runtime's loop) --------------------------------------

    def _check_in_background(self) -> None:
        running = self._refreshing
        if running is not None and not running.done():
            return
        self._checked = time.monotonic()
        self._refreshing = self.runtime.submit(self.refresh(only_stale=True))

    def _stale(self, server: str) -> bool:
        listing = self.listings.get(server)
        if listing is None:
            return True
        conn = self.connections[server]
        return (
            time.time() - listing.at >= self.settings.relist_seconds
            or self.listed_generation.get(server) != conn.generation
        )

    async def refresh(self, servers: list[str] | None = None, *, only_stale: bool = False) -> None:
        """List *servers* (default: all; *only_stale*: those due), read the pins, judge."""
        names = [n for n in (servers or list(self.connections)) if not only_stale or self._stale(n)]

        async def list_one(name: str) -> None:
            conn = self.connections[name]
            try:
                listing = await conn.list_tools()
            except ToolError as exc:
                # a server that cannot be listed offers nothing: what it would list now
                # is unknown (it may be an instance with other tools)
                self.errors[name] = str(exc)
                self.listings.pop(name, None)
                return
            self.listings[name] = listing
            self.listed_generation[name] = conn.generation
            self.errors.pop(name, None)

        if names:
            await asyncio.gather(*(list_one(n) for n in names))
        pins = await self.store.mcp_pins()
        self._checked = time.monotonic()
        self._judge(pins)

    def _judge(self, pins: list[Any]) -> None:
        statuses = judge_all(self.listings, pins, self.pinner)
        offered = [s for server in statuses.values() for s in server if s.offered]
        withheld_now = [
            (s.name, s.reason) for server in statuses.values() for s in server if not s.offered
        ]
        key = (
            *sorted(self.listings),
            *sorted(self.errors.items()),
            *sorted((s.name, s.digest) for s in offered),
            *sorted(withheld_now),
        )
        old = self._state
        if old is not None and old.key == key:
            self._state = _State(old.listing, old.tools, statuses, key)
            return
        tools = {s.name: make_mcp_tool(s, self.settings.servers[s.server].effects) for s in offered}
        for server in sorted(self.listings):
            for extra in self._extras(server):
                listed = {st.name for st in statuses.get(server, [])}
                if extra.name not in listed:  # (a server's own tool of that name wins)
                    tools[extra.name] = extra
        withheld = {
            exposed_name(p.server, p.tool): f"{exposed_name(p.server, p.tool)} is not available: "
            + self.errors[p.server]
            for p in pins
            if p.server in self.errors and p.server not in self.listings
        }
        withheld.update(
            (s.name, _refusal_text(s))
            for server in statuses.values()
            for s in server
            if not s.offered
        )
        self._state = _State(ToolList(tools.values(), withheld), tools, statuses, key)

    def _extras(self, server: str) -> list[McpTool]:
        conf = self.settings.servers[server]
        return [
            McpTool(
                name=name,
                description=extra.description,
                fn=_not_here,
                args_model=_AnyArguments,
                effect_spec=effect,
                idempotent=True,
                _schema=extra.schema,
                server=server,
                input_schema=extra.schema,
                extra=extra.suffix,
            )
            for name, extra, effect in extras_for(
                server, conf.resources, conf.prompts, http=conf.url is not None
            )
        ]

    async def _call(self, tool: McpTool, args: dict[str, Any]) -> ToolOutput:
        server = tool.server
        if tool.extra:
            text = await run_extra(
                self.connections[server], tool.extra, args, self.settings.max_result_chars
            )
            return ToolOutput(
                text=text,
                integrity=Integrity.untrusted,
                confidentiality=Confidentiality.private,
                source=f"mcp:{server}/{tool.extra}",
            )
        await self.refresh([server], only_stale=True)  # (the pins are read again too)
        if server not in self.listings and server in self.errors:  # (it cannot be listed)
            raise McpError(f"{tool.name} is not available: {self.errors[server]}")
        status = next((s for s in self._statuses(server) if s.tool == tool.remote), None)
        if status is None or not status.offered:
            raise ToolError(
                _refusal_text(status)
                if status is not None
                else f"{tool.name}: MCP server {server} no longer lists {tool.remote!r}"
            )
        conn = self.connections[server]
        result = await conn.call_tool(tool.remote, args)
        text = result_text(result, self.settings.max_result_chars)
        if getattr(result, "is_error", False):
            raise ToolError(f"{tool.name} failed (MCP server {server} says): {text}")
        return ToolOutput(
            text=text,
            integrity=Integrity.untrusted,
            confidentiality=Confidentiality.private,
            source=f"mcp:{server}/{tool.remote}",
        )

    def _statuses(self, server: str) -> list[ToolStatus]:
        state = self._state
        return [] if state is None else list(state.statuses.get(server, []))

    # -- what errands mcp ls and the API show -----------------------------------------------

    async def reports(self, *, relist: bool = True) -> list[ServerReport]:
        """Every server's tools and their states (listing them again if *relist*)."""
        if relist:
            await self.runtime.run(self.refresh())
        state = self._state
        out = []
        for name, conn in self.connections.items():
            listing = self.listings.get(name)
            out.append(
                ServerReport(
                    server=name,
                    transport=describe(conn.settings),
                    tools=[] if state is None else list(state.statuses.get(name, [])),
                    error=self.errors.get(name),
                    protocol_version=conn.protocol_version,
                    server_info=conn.server_info,
                    listed_at=None if listing is None else listing.at,
                )
            )
        return out

    async def forget_pins_read(self) -> None:
        """Read the pins again now (a person approved something in this process)."""
        await self.runtime.run(self.refresh(only_stale=True))

    # -- closing ---------------------------------------------------------------------------

    async def _close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self.connections.values()))

    def close(self) -> None:
        """Stop every server and the runtime (idempotent; from any thread but the runtime's)."""
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        self.runtime.stop(self._close_all())

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _refusal_text(status: ToolStatus | None) -> str:
    if status is None:
        return "this MCP tool is not offered"
    how = (
        f"errands mcp diff {status.server}, then errands mcp approve {status.server} {status.tool}"
    )
    if status.state is ToolState.refused:
        return f"{status.name} is refused: {status.reason}"
    if status.state is ToolState.removed:
        return f"{status.name}: MCP server {status.server} no longer lists {status.tool!r}"
    what = "is new" if status.state is ToolState.new else "changed since it was approved"
    return (
        f"{status.name} is not available: its definition on MCP server {status.server} {what}, "
        f"and a person must review it before errands offers it ({how})"
    )


def result_text(result: Any, limit: int) -> str:
    """A ``CallToolResult`` as text for the model: text blocks as they are, other blocks
    named, structured content as JSON when there is no text; cut at *limit*."""
    import json

    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif kind == "resource":
            inner = block.resource
            text = getattr(inner, "text", None)
            parts.append(text if text is not None else f"[resource {inner.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource link {block.uri} ({block.name})]")
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    structured = getattr(result, "structured_content", None)
    if structured is not None and not parts:
        parts.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(parts) if parts else "(no content)"
    if len(text) > limit:
        text = text[:limit] + f"\n[cut: the MCP server returned {len(text)} characters in all]"
    return text


# every toolset not yet closed, stopped when the process exits (their child processes too)
_open: weakref.WeakSet[McpToolset] = weakref.WeakSet()


@atexit.register
def _close_open() -> None:
    for toolset in list(_open):
        toolset.close()
