"""One MCP server, through the official SDK: start it, list its tools raw, call them.

A :class:`Connection` holds one ``mcp.Client`` (stdio: a child process errands starts;
streamable HTTP: a URL) and keeps it in a task of its own, as anyio requires of the
SDK's task groups. It starts lazily, at the first listing or call. What can go wrong
with a server is told in one line naming the server, and handled:

- it **crashes** (the connection closes) -- the call fails, saying so; the next use
  starts it again, at once the first time and then after 1 s, 2 s, 4 s ... (up to
  ``[mcp] max_backoff_seconds``) while it keeps failing;
- it **hangs** -- a listing or call longer than the server's ``timeout_seconds`` fails,
  and the server is restarted (a hung process is not trusted with the next call);
- it sends **malformed JSON-RPC** -- the call in flight fails at once with what the
  server sent, and the server is restarted;
- it returns a **huge result** -- the text is cut at ``[mcp] max_result_chars``,
  saying how long it was.

Listings are taken raw: ``tools/list`` pages are read as plain JSON (every field the
server sent, those the SDK does not model included), which is what a pin covers
(:mod:`errands.tools.mcp.pins`); the SDK is then given the parsed listing too, for what
it derives from one (output-schema validation, 2026 header mapping).

Sampling requests from a server are refused: errands lends no model to a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

from errands.tools.mcp.pins import Listing
from errands.tools.mcp.settings import McpServerSettings
from errands.tools.tool import ToolError

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["Connection", "McpError", "McpMissing", "Target", "default_target", "describe"]

T = TypeVar("T")

MAX_PAGES = 100  # of one tools/list: a paginator that never ends cannot hang errands
CONNECTION_CLOSED = -32000  # the SDK's error codes (mcp.shared.exceptions)
REQUEST_TIMEOUT = -32001

# what the Client is given as its server: a Transport, an in-process server (tests), ...
Target = Callable[[], Any]


class McpError(ToolError):
    """An MCP server could not do what was asked (told to the model as the result)."""

    kind = "mcp_error"


class McpMissing(McpError):
    """``errands[mcp]`` is not installed."""


def require_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise McpMissing(
            "MCP servers are configured ([mcp.servers] in errands.toml), but the MCP SDK is "
            "not installed: pip install 'errands[mcp]'"
        ) from None


def describe(settings: McpServerSettings) -> str:
    """The server as ``errands mcp ls`` names it: its command line, or its URL."""
    if settings.command is not None:
        return "stdio: " + " ".join(settings.command)
    return str(settings.url)


def _variable(name: str, what: str, server: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise McpError(f"MCP server {server}: the environment variable {name} ({what}) is not set")
    return value


def default_target(name: str, settings: McpServerSettings, logs: Path | None) -> Target:
    """How to reach a configured server: a stdio child process (its stderr to
    ``logs/NAME.log``), or a streamable-HTTP URL with its headers."""

    def target() -> Any:
        if settings.command is not None:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            env = dict(settings.env)
            for var, source in settings.env_from.items():
                env[var] = _variable(source, f"env_from {var}", name)
            params = StdioServerParameters(
                command=settings.command[0],
                args=settings.command[1:],
                env=env or None,
                cwd=settings.cwd,
            )
            return stdio_client(params, errlog=_errlog(logs, name))
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {
            header: _variable(var, f"headers_env {header}", name)
            for header, var in settings.headers_env.items()
        }
        http = httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(settings.timeout_seconds, read=None)
        )
        return streamable_http_client(str(settings.url), http_client=http)

    return target


def _errlog(logs: Path | None, name: str) -> TextIO:
    """Where a stdio server's stderr goes: its log file (a real file: the child writes
    to it directly)."""
    if logs is None:
        return sys.stderr
    with contextlib.suppress(OSError):
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        return open(logs / f"{name}.log", "a", encoding="utf-8")  # (the child writes to it)
    return sys.stderr


class Connection:
    """One server, on one event loop: lazily started, restarted after a failure with
    backoff, every request bounded in time."""

    def __init__(
        self,
        name: str,
        settings: McpServerSettings,
        *,
        target: Target | None = None,
        logs: Path | None = None,
        max_backoff: float = 60.0,
        max_result_chars: int = 200_000,
    ) -> None:
        self.name = name
        self.settings = settings
        self.target = target or default_target(name, settings, logs)
        self.max_backoff = max_backoff
        self.max_result_chars = max_result_chars
        self.timeout = settings.timeout_seconds
        self.protocol_version: str | None = None
        self.server_info: dict[str, Any] | None = None
        self.instructions: str | None = None
        self.generation = 0  # +1 at every start: a listing from an older one is stale
        self.starts = 0
        self.failures = 0  # in a row
        self.last_error: str | None = None
        self._next_try = 0.0
        self._client: Client | None = None
        self._holder: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._broken: asyncio.Future[str] | None = None  # what broke the connection
        self._lock: asyncio.Lock | None = None
        self._dead = False  # the client in hand failed: start anew at the next use

    # -- starting and stopping ----------------------------------------------------------

    async def client(self) -> Client:
        """The connected client, starting the server if it is not running."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is not None and self._usable():
                return self._client
            await self._close()
            wait = self._next_try - time.monotonic()
            if wait > 0:
                raise McpError(
                    f"MCP server {self.name} is down ({self.last_error}); errands starts it "
                    f"again in {wait:.0f} s"
                )
            try:
                return await self._start()
            except McpError as exc:
                self._failed(str(exc), restart=False)
                raise
            except Exception as exc:
                why = f"MCP server {self.name} could not be started: {_plain(exc)}"
                self._failed(why, restart=False)
                raise McpError(why) from None

    def _usable(self) -> bool:
        return (
            not self._dead
            and self._holder is not None
            and not self._holder.done()
            and (self._broken is None or not self._broken.done())
        )

    async def _start(self) -> Client:
        require_sdk()
        from mcp import Client
        from mcp.shared.exceptions import MCPError

        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Client] = loop.create_future()
        broken: asyncio.Future[str] = loop.create_future()
        stop = asyncio.Event()

        async def on_message(message: Any) -> None:
            # a transport-level Exception: what the server sent is not JSON-RPC
            if isinstance(message, Exception) and not broken.done():
                broken.set_result(f"sent malformed JSON-RPC ({_plain(message)[:200]})")

        async def refuse_sampling(context: Any, params: Any) -> Any:
            from mcp_types import ErrorData

            return ErrorData(code=-32600, message="errands does not lend its model to servers")

        client = Client(
            self.target(),
            read_timeout_seconds=self.timeout,
            message_handler=on_message,
            sampling_callback=refuse_sampling,
            cache=None,
        )

        async def hold() -> None:
            try:
                async with client:
                    if not ready.done():
                        ready.set_result(client)
                    await stop.wait()
            except BaseException as exc:  # (it ends the holder; the next use starts again)
                if not ready.done():
                    ready.set_exception(exc)
                elif not broken.done():
                    broken.set_result(f"closed the connection ({_plain(exc)[:200]})")
                if not isinstance(exc, Exception):
                    raise
            finally:
                if not broken.done():
                    broken.set_result("closed the connection")

        self._stop, self._broken = stop, broken
        self._holder = asyncio.create_task(hold(), name=f"mcp server {self.name}")
        self.starts += 1
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.settings.startup_seconds)
        except TimeoutError:
            await self._close()
            raise McpError(
                f"MCP server {self.name} did not start within {self.settings.startup_seconds:g} s"
            ) from None
        except MCPError as exc:
            await self._close()
            raise McpError(f"MCP server {self.name} refused to start: {exc}") from None
        except BaseException:
            await self._close()
            raise
        self._client, self._dead = client, False
        self.generation += 1
        self.protocol_version = client.protocol_version
        info = client.server_info
        self.server_info = None if info is None else info.model_dump(mode="json", exclude_none=True)
        self.instructions = client.instructions
        return client

    async def _close(self) -> None:
        holder, self._holder, self._client = self._holder, None, None
        if self._stop is not None:
            self._stop.set()
        if holder is not None and not holder.done():
            try:
                await asyncio.wait_for(asyncio.shield(holder), 5.0)
            except (TimeoutError, Exception):
                holder.cancel()
                with contextlib.suppress(BaseException):
                    await holder

    async def close(self) -> None:
        """Stop the server (a stdio child is ended)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._close()

    def _failed(self, why: str, *, restart: bool = True) -> None:
        """A failure: the next use starts the server again -- at once after the first,
        then with backoff while failures follow one another."""
        self.failures += 1
        self.last_error = why
        delay = 0.0 if self.failures <= 1 else min(self.max_backoff, 2.0 ** (self.failures - 2))
        self._next_try = time.monotonic() + delay
        if restart:
            self._dead = True
        if restart and self._stop is not None:
            self._stop.set()  # (the holder ends the client; the next use starts anew)

    # -- requests ------------------------------------------------------------------------

    async def request(self, what: str, fn: Callable[[Client], Awaitable[T]]) -> T:
        """Run *fn* on the client, bounded by the server's timeout; any failure is an
        :class:`McpError` saying what happened to *what*."""
        from mcp.shared.exceptions import MCPError
        from pydantic import ValidationError

        client = await self.client()
        broken = self._broken
        assert broken is not None
        work: asyncio.Future[T] = asyncio.ensure_future(fn(client))
        either: list[asyncio.Future[Any]] = [work, broken]
        try:
            done, _ = await asyncio.wait(
                either, timeout=self.timeout + 1.0, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            work.cancel()
            raise
        if work not in done:
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            if broken.done():
                why = f"MCP server {self.name} {broken.result()} during {what}"
            else:
                why = f"MCP server {self.name} did not answer {what} within {self.timeout:g} s"
            self._failed(why)
            raise McpError(why + "; it is restarted on the next use")
        try:
            result = work.result()
        except MCPError as exc:
            code = exc.error.code
            if code in (CONNECTION_CLOSED, REQUEST_TIMEOUT) or broken.done():
                what_happened = (
                    broken.result()
                    if broken.done()
                    else "closed the connection (it crashed or exited)"
                    if code == CONNECTION_CLOSED
                    else f"did not answer within {self.timeout:g} s"
                )
                why = f"MCP server {self.name} {what_happened} during {what}"
                self._failed(why)
                raise McpError(why + "; it is restarted on the next use") from None
            raise McpError(
                f"MCP server {self.name} answered {what} with an error: {exc.error.message}"
            ) from None
        except ValidationError as exc:
            raise McpError(
                f"MCP server {self.name} answered {what} with something that is not valid MCP "
                f"({exc.error_count()} problem(s), first: {exc.errors()[0]['msg']})"
            ) from None
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            why = f"MCP server {self.name} failed during {what}: {_plain(exc)}"
            self._failed(why)
            raise McpError(why + "; it is restarted on the next use") from None
        except ToolError:
            raise
        except Exception as exc:  # the SDK refused the answer (an output schema it breaks)
            raise McpError(f"MCP server {self.name}: {what} failed: {_plain(exc)}") from None
        self.failures = 0
        return result

    async def list_tools(self) -> Listing:
        """Every page of ``tools/list``, raw."""
        import mcp_types as types
        from pydantic import TypeAdapter

        # (the SDK types this for its models; a TypeAdapter of a dict gives the JSON as sent)
        raw_result = cast(Any, TypeAdapter(dict[str, Any]))

        async def fetch(client: Client) -> list[dict[str, Any]]:
            tools: list[dict[str, Any]] = []
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                params = None if cursor is None else types.PaginatedRequestParams(cursor=cursor)
                page = await client.session.send_request(
                    types.ListToolsRequest(params=params), raw_result
                )
                entries = page.get("tools")
                if not isinstance(entries, list) or not all(isinstance(t, dict) for t in entries):
                    raise McpError(f"MCP server {self.name} listed its tools in an unknown shape")
                # a copy, through JSON: what is pinned is what the wire could carry, and no
                # object an in-process server keeps (and may change) is shared
                tools.extend(json.loads(json.dumps(entries)))
                _absorb(client, page, complete=cursor is None and not page.get("nextCursor"))
                next_cursor = page.get("nextCursor")
                if not next_cursor:
                    return tools
                cursor = str(next_cursor)
            raise McpError(f"MCP server {self.name} listed its tools in over {MAX_PAGES} pages")

        tools = await self.request("tools/list", fetch)
        return Listing(
            server=self.name,
            tools=tuple(tools),
            instructions=self.instructions,
            protocol_version=self.protocol_version,
            server_info=self.server_info,
            at=time.time(),
        )

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> Any:
        """``tools/call``: the SDK's ``CallToolResult``."""
        return await self.request(
            f"tools/call {tool}",
            lambda client: client.call_tool(tool, arguments, read_timeout_seconds=self.timeout),
        )


def _absorb(client: Client, page: dict[str, Any], *, complete: bool) -> None:
    """Give the SDK the listing it did not fetch itself (what it derives from one)."""
    import mcp_types as types

    with contextlib.suppress(Exception):
        parsed = types.ListToolsResult.model_validate(page, by_name=False)
        client.session._absorb_tool_listing(parsed, complete=complete)


def _plain(exc: BaseException) -> str:
    """An exception in words (an ExceptionGroup by its first leaf)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
