"""A server's resources and prompts, as tools errands itself defines (opted into per
server: ``resources = true``, ``prompts = true``).

Their definitions are errands' own, so nothing the server wrote reaches the model's tool
list; what they return -- a resource's text, a prompt's messages, the lists -- is the
server's, and is labelled untrusted like every MCP result. Reading from a stdio server is
``read``; from an HTTP server ``network`` (the URI the model chooses leaves the machine).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from errands.core.events import EffectClass
from errands.tools.mcp.client import Connection
from errands.tools.mcp.pins import exposed_name

__all__ = ["EXTRAS", "Extra", "extras_for"]


@dataclass(frozen=True)
class Extra:
    suffix: str  # the name on the server's side of mcp__SERVER__
    description: str
    schema: dict[str, Any]
    needs: str  # "resources" | "prompts"


EXTRAS = (
    Extra(
        "resources_list",
        "List the resources this MCP server offers (URI, name, type). Untrusted content.",
        {"type": "object", "properties": {}},
        "resources",
    ),
    Extra(
        "resource_read",
        "Read one of this MCP server's resources by its URI. Untrusted content.",
        {
            "type": "object",
            "properties": {"uri": {"type": "string", "description": "The resource's URI."}},
            "required": ["uri"],
        },
        "resources",
    ),
    Extra(
        "prompts_list",
        "List the prompts this MCP server offers, with their arguments. Untrusted content.",
        {"type": "object", "properties": {}},
        "prompts",
    ),
    Extra(
        "prompt_get",
        "Get one of this MCP server's prompts, filled in with arguments. Untrusted content.",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The prompt's name."},
                "arguments": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "The prompt's arguments, by name.",
                },
            },
            "required": ["name"],
        },
        "prompts",
    ),
)


def extras_for(
    server: str, resources: bool, prompts: bool, http: bool
) -> list[tuple[str, Extra, EffectClass]]:
    """The extra tools a server's settings ask for: (exposed name, what, effect)."""
    wanted = {"resources": resources, "prompts": prompts}
    effect = EffectClass.network if http else EffectClass.read
    return [(exposed_name(server, e.suffix), e, effect) for e in EXTRAS if wanted[e.needs]]


async def run_extra(conn: Connection, suffix: str, args: Mapping[str, Any], limit: int) -> str:
    """Carry out one extra tool on *conn*: the result as text for the model."""
    run: dict[str, Callable[[Any], Any]] = {
        "resources_list": lambda c: c.list_resources(cache_mode="refresh"),
        "resource_read": lambda c: c.read_resource(str(args["uri"]), cache_mode="refresh"),
        "prompts_list": lambda c: c.list_prompts(cache_mode="refresh"),
        "prompt_get": lambda c: c.get_prompt(
            str(args["name"]), {str(k): str(v) for k, v in (args.get("arguments") or {}).items()}
        ),
    }
    method = {
        "resources_list": "resources/list",
        "resource_read": "resources/read",
        "prompts_list": "prompts/list",
        "prompt_get": "prompts/get",
    }[suffix]
    result = await conn.request(method, run[suffix])
    if suffix == "resources_list":
        text = (
            "\n".join(
                f"{r.uri}  {r.name}"
                + (f" ({r.mime_type})" if r.mime_type else "")
                + (f": {r.description}" if r.description else "")
                for r in result.resources
            )
            or "(no resources)"
        )
    elif suffix == "prompts_list":
        text = (
            "\n".join(
                f"{p.name}({', '.join(a.name for a in p.arguments or [])})"
                + (f": {p.description}" if p.description else "")
                for p in result.prompts
            )
            or "(no prompts)"
        )
    elif suffix == "resource_read":
        parts = []
        for item in result.contents:
            body = getattr(item, "text", None)
            parts.append(
                body if body is not None else f"[{item.mime_type or 'binary'} data at {item.uri}]"
            )
        text = "\n".join(parts) or "(empty)"
    else:
        parts = []
        for message in result.messages:
            content = message.content
            body = getattr(content, "text", None)
            parts.append(
                f"{message.role}: "
                + (body if body is not None else json.dumps(content.model_dump(mode="json")))
            )
        text = "\n".join(parts) or "(empty)"
    if len(text) > limit:
        text = text[:limit] + f"\n[cut: the MCP server returned {len(text)} characters in all]"
    return text
