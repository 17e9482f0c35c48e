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

Imported by :mod:`errands.config` (no MCP SDK here: the SDK is the optional extra
``errands[mcp]``, needed only once a server is configured).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from errands.core.events import EffectClass

__all__ = ["SERVER_NAME", "McpServerSettings", "McpSettings"]

# a server's name is part of its tools' names (mcp__SERVER__TOOL): letters, digits, - and
# single underscores between them (a double or a last one would make the name ambiguous)
SERVER_NAME = r"^[A-Za-z0-9](?:_?[A-Za-z0-9-])*$"
_SERVER_NAME = re.compile(SERVER_NAME)
MAX_SERVER_NAME = 24


class McpServerSettings(BaseModel):
    """``[mcp.servers.NAME]``: one server -- a ``command`` errands starts (stdio), or the
    ``url`` of a streamable-HTTP endpoint."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(default=None, min_length=1)
    url: str | None = Field(default=None, pattern=r"^https?://")
    # stdio: the working directory, fixed variables, and variables taken from errands' own
    # environment (the server's name -> errands' name); nothing else is inherited but the
    # SDK's safe few (HOME, PATH, USER, ...)
    cwd: Path | None = None
    env: dict[str, str] = {}
    env_from: dict[str, str] = {}
    # HTTP: request headers whose values are in environment variables (header -> variable)
    headers_env: dict[str, str] = {}
    # per tool (its name on the server): the effect class instead of the one its
    # annotations give (errands policy rules on mcp__NAME__TOOL decide per tool too)
    effects: dict[str, EffectClass] = {}
    # a call, or a listing, that takes longer is stopped (and the server restarted)
    timeout_seconds: float = Field(default=60.0, gt=0)
    # starting the server and negotiating the protocol
    startup_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        if (self.command is None) == (self.url is None):
            raise ValueError("give a server either a command (stdio) or a url (HTTP), not both")
        if self.url is None and self.headers_env:
            raise ValueError("headers_env is for a server with a url")
        if self.command is None and (self.env or self.env_from or self.cwd):
            raise ValueError("env, env_from and cwd are for a server with a command")
        return self


class McpSettings(BaseModel):
    """``[mcp]``: the servers, and how often their tools are listed again."""

    model_config = ConfigDict(extra="forbid")

    servers: dict[str, McpServerSettings] = {}
    # a server may change its tools at any time (two instances behind one URL may list
    # different ones): a call is preceded by a new listing when the last is older
    relist_seconds: float = Field(default=60.0, ge=0)
    # a result longer than this (in characters) is cut, saying so
    max_result_chars: int = Field(default=200_000, gt=0)
    # after a crash, a server is started again after 1 s, 2 s, 4 s ... up to this
    max_backoff_seconds: float = Field(default=60.0, gt=0)

    @field_validator("servers")
    @classmethod
    def _names(cls, servers: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        for name in servers:
            if len(name) > MAX_SERVER_NAME or not _SERVER_NAME.match(name):
                raise ValueError(
                    f"{name!r} cannot name an MCP server: use up to {MAX_SERVER_NAME} letters, "
                    "digits, - and single _ (its tools are called mcp__NAME__TOOL)"
                )
        return servers
