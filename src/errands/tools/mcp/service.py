"""What a person does with MCP pins -- list, diff, approve -- for ``errands mcp`` and
``/api/mcp`` alike.

Approving lists the server again and pins what it lists *now*; a caller that showed
the person particular definitions passes their digests (*expect*), and the approval is
refused (a 409, nothing written) if the server lists anything else by then: a person
approves what they saw, never what a server slipped in meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from errands.errors import NotFound, StoreError, UserError
from errands.store.protocol import McpPin, Store
from errands.tools.mcp.pins import MISSING, Change, ServerReport, ToolState, ToolStatus, diff
from errands.tools.mcp.toolset import McpToolset

__all__ = ["Approved", "ChangedSince", "approve", "diff_report", "report_of"]


class ChangedSince(StoreError):
    """The server lists a definition other than the one the person was shown."""

    http_status = 409


@dataclass(frozen=True)
class Approved:
    server: str
    pinned: list[tuple[str, str]]  # (tool, digest)
    dropped: list[str]  # tools the server no longer lists, their pins forgotten

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "pinned": [{"tool": t, "digest": d} for t, d in self.pinned],
            "dropped": self.dropped,
        }


async def report_of(toolset: McpToolset, server: str, *, relist: bool = True) -> ServerReport:
    if server not in toolset.connections:
        known = ", ".join(sorted(toolset.connections)) or "none"
        raise NotFound(f"no MCP server named {server!r} in errands.toml (configured: {known})")
    for report in await toolset.reports(relist=relist):
        if report.server == server:
            return report
    raise NotFound(f"no MCP server named {server!r}")  # (not reached)


async def approve(
    toolset: McpToolset,
    store: Store,
    server: str,
    tool: str | None = None,
    *,
    by: str,
    expect: Mapping[str, str] | None = None,
) -> Approved:
    """Pin what *server* lists now: every tool that is new or changed (and forget the pins
    of tools it no longer lists), or only *tool*. *expect*: tool -> the digest the person
    was shown; any other definition listed now refuses the whole approval."""
    report = await report_of(toolset, server)
    if report.error is not None and not report.tools:
        raise UserError(f"cannot approve: {report.error}")
    statuses = {s.tool: s for s in report.tools}
    if tool is not None:
        if tool not in statuses:
            listed = ", ".join(sorted(statuses)) or "none"
            raise NotFound(f"MCP server {server} lists no tool {tool!r} (it lists: {listed})")
        chosen = [statuses[tool]]
    else:
        chosen = [s for s in report.tools if s.state is not ToolState.pinned]
    refused = [s for s in chosen if s.state is ToolState.refused]
    if refused:
        raise UserError(
            "cannot approve: "
            + "; ".join(f"{s.tool}: {s.reason}" for s in refused)
            + (" (approve the others by name)" if tool is None and len(chosen) > 1 else "")
        )
    for name, digest in (expect or {}).items():
        now = statuses.get(name)
        if now is None or now.digest != digest:
            raise ChangedSince(
                f"MCP server {server} lists {name!r} differently from what you were shown "
                f"(shown {digest}, listed now {None if now is None else now.digest}); "
                "look at it again (errands mcp diff) before approving"
            )
    pins = [
        McpPin(server, s.tool, s.digest, s.definition, by)
        for s in chosen
        if s.state is not ToolState.removed and s.digest is not None and s.definition is not None
    ]
    dropped = [s.tool for s in chosen if s.state is ToolState.removed]
    if pins or dropped:
        await store.pin_mcp(server, pins, drop=dropped, by=by)
    await toolset.forget_pins_read()
    return Approved(server, [(p.tool, p.digest) for p in pins], dropped)


# -- diffs ---------------------------------------------------------------------------------


def changes_of(status: ToolStatus) -> list[Change]:
    """What differs between the pinned definition and the listed one, leaf by leaf."""
    before = status.pin.definition if status.pin is not None else MISSING
    after = status.definition if status.definition is not None else MISSING
    if before is MISSING or after is MISSING:
        return []
    return diff(before, after)


def diff_report(report: ServerReport) -> dict[str, Any]:
    """Every tool that is not as pinned, with its changes (JSON-ready)."""
    tools = []
    for s in report.tools:
        if s.state is ToolState.pinned:
            continue
        entry: dict[str, Any] = {
            "tool": s.tool,
            "name": s.name,
            "state": s.state.value,
            "reason": s.reason,
            "digest": s.digest,
            "pinned_digest": None if s.pin is None else s.pin.digest,
        }
        if s.renamed_from:
            entry["renamed_from"] = s.renamed_from
        if s.state is ToolState.changed:
            entry["changes"] = [_change(c) for c in changes_of(s)]
        elif s.definition is not None:
            entry["definition"] = s.definition
        tools.append(entry)
    return {"server": report.server, "error": report.error, "tools": tools}


def _change(change: Change) -> dict[str, Any]:
    """A change as JSON: a side that had no value has no key."""
    out: dict[str, Any] = {"path": change.path}
    if change.before is not MISSING:
        out["before"] = change.before
    if change.after is not MISSING:
        out["after"] = change.after
    return out


def show_value(value: Any) -> str:
    """A value in a diff line: JSON, with what the eye misses made visible (a string's
    non-ASCII characters as escapes, so a homoglyph or a no-break space shows)."""
    if value is MISSING:
        return "(absent)"
    return json.dumps(value, ensure_ascii=True)
