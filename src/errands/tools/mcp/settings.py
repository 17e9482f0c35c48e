"""``[mcp]`` in ``errands.toml``: the MCP servers whose tools errands offers.

::

    [mcp]
    relist_seconds = 60            # list a server's tools again before a call after this long

    [mcp.servers.files]            # a stdio server: errands starts it (lazily) and stops it
    command = ["mcp-server-filesystem", "/srv/shared"]
    env_from = { GITHUB_TOKEN = "MY_GITHUB_TOKEN" }   # the server's variable <- errands' own

    [mcp.servers.board]            # a streamable-HTTP server
    url = "http://127.0.0.1:9000/mcp"
    headers_env = { Authorization = "BOARD_TOKEN" }   # header <- the variable holding its value

The models live in :mod:`errands.config` (the config layer sits below the tools); this
module names them for the MCP package.
"""

from __future__ import annotations

from errands.config import SERVER_NAME, McpServerSettings, McpSettings

__all__ = ["SERVER_NAME", "McpServerSettings", "McpSettings"]
