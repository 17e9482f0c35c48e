"""MCP servers' tools in errands, pinned: see ``docs/mcp.md``.

- :mod:`.settings` -- ``[mcp]`` in ``errands.toml`` (no SDK needed to read it);
- :mod:`.pins` -- what a pin covers, how a listing compares with the pins, diffs,
  effect classes from annotations (pure);
- :mod:`.client` -- one server through the official SDK (``errands[mcp]``): started
  lazily, restarted with backoff, every request bounded in time, listings taken raw;
- :mod:`.toolset` -- :class:`McpToolset`, the pinned tools as ``mcp__SERVER__TOOL``;
- :mod:`.service` -- what ``errands mcp`` and ``/api/mcp`` do: list, diff, approve.

Importing this package does not import the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from errands.config import Settings
    from errands.store.protocol import StoreReader
    from errands.tools.mcp.toolset import McpToolset

__all__ = ["check_sdk", "mcp_toolset"]


def check_sdk() -> None:
    """A ConfigError saying what to install, unless the MCP SDK is there."""
    from errands.errors import ConfigError
    from errands.tools.mcp.client import McpMissing, require_sdk

    try:
        require_sdk()
    except McpMissing as exc:
        raise ConfigError(str(exc)) from None


def mcp_toolset(settings: Settings, store: StoreReader) -> McpToolset:
    """The toolset of the servers in *settings*' ``[mcp]`` (a ConfigError, saying what
    to install, without the SDK)."""
    from errands.errors import ConfigError
    from errands.tools.mcp.client import McpMissing
    from errands.tools.mcp.toolset import McpToolset

    try:
        return McpToolset(settings.mcp, store, logs=settings.home / "logs" / "mcp")
    except McpMissing as exc:
        raise ConfigError(str(exc)) from None
