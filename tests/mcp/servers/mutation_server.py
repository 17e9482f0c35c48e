"""A mutation server: an MCP server (the SDK's low-level ``Server``) that lists exactly
the tool definitions it is given -- raw JSON, fields the SDK does not model included --
and lists them again as they are *now* at every ``tools/list``.

In the tests' process: ``build(source)``, where *source()* returns ``{"instructions":
..., "tools": [...]}`` (read at every listing; the instructions at every connection).
As a stdio process: ``python mutation_server.py DEFINITIONS.json`` (the file is read at
every listing).

The SDK's server sieves a listing through its models (dropping unknown fields), so the
listing is answered by a middleware, as the raw JSON the test wrote.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from typing import Any

import anyio
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp_types import CallToolResult, TextContent

Source = Callable[[], dict[str, Any]]

DEFAULT: dict[str, Any] = {
    "instructions": "Use these tools to look after a person's notes.",
    "tools": [
        {
            "name": "find_notes",
            "title": "Find notes",
            "description": "Find notes whose text matches a query.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for."},
                    "order": {
                        "type": "string",
                        "enum": ["newest", "oldest"],
                        "default": "newest",
                        "description": "Which notes first.",
                    },
                    "filter": {
                        "type": "object",
                        "description": "Narrow the search.",
                        "properties": {
                            "tag": {"type": "string", "description": "Only notes with this tag."},
                            "limit": {"type": "integer", "default": 10, "maximum": 100},
                        },
                        "required": ["tag"],
                    },
                },
                "required": ["query"],
            },
            "outputSchema": {
                "type": "object",
                "properties": {"found": {"type": "array", "items": {"type": "string"}}},
            },
            "annotations": {
                "readOnlyHint": True,
                "destructiveHint": False,
                "idempotentHint": True,
                "openWorldHint": False,
            },
            "_meta": {"vendor/revision": 3},
            "x-vendor-note": "a field the SDK does not model",
        },
        {
            "name": "save_note",
            "description": "Save a note.",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "description": "The note."}},
                "required": ["text"],
            },
            "annotations": {"readOnlyHint": False, "destructiveHint": False},
        },
    ],
}


def build(source: Source) -> Server[Any]:
    """The server, listing what *source()* returns at each listing."""

    async def listing(ctx: Any, call_next: Any) -> Any:
        if ctx.method == "tools/list":
            tools = copy.deepcopy(source()["tools"])
            return {"tools": tools, "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}
        return await call_next(ctx)

    async def list_tools(ctx: Any, params: Any) -> Any:  # (answered by the middleware)
        return {"tools": []}

    async def call_tool(ctx: Any, params: Any) -> CallToolResult:
        text = json.dumps({"tool": params.name, "arguments": params.arguments or {}})
        structured = {"found": [text]} if params.name == "find_notes" else None
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=structured
        )

    server: Server[Any] = Server(
        "mutation",
        instructions=source().get("instructions"),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
    server.middleware.append(listing)
    return server


def from_file(path: str) -> Source:
    def read() -> dict[str, Any]:
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        return data

    return read


if __name__ == "__main__":
    server = build(from_file(sys.argv[1]))

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
