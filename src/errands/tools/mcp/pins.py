"""Pins: what a person approved of an MCP server's tools, and how a listing compares.

A tool is pinned over its **whole** definition as the server sent it -- the raw
``tools/list`` entry (name, title, description, the full input schema with every nested
description, enum value, default and ``required`` list, the output schema, annotations,
``_meta``, and any field the SDK does not model) -- together with the server's
instructions, which the model reads too. The digest is SHA-256 over RFC 8785 canonical
JSON (:func:`errands.core.canonical.canonical_hash`), so key order and number spelling do
not matter and everything else does: a whitespace change or a homoglyph is a change.

:func:`judge` compares one listing with the pins: each tool is ``pinned`` (offered),
``new``, ``changed``, ``removed`` or ``refused`` (it cannot be offered at all: a name two
servers offer, a name listed twice, a name no model provider accepts). Only ``pinned``
tools reach the model. A rename shows as a new tool *and* a removed one, the new one
noting what it was probably renamed from -- it is reviewed like any new tool.

Pure: no I/O, no MCP SDK. The pinner is a parameter (the tests' negative control pins the
description alone and shows which mutations that lets through).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from errands.core.canonical import canonical_hash, canonical_json
from errands.core.events import EffectClass
from errands.store.protocol import McpPin as Pin

__all__ = [
    "Change",
    "Listing",
    "Pin",
    "Pinner",
    "ToolState",
    "ToolStatus",
    "definition_of",
    "diff",
    "effect_of",
    "exposed_name",
    "full_definition",
    "judge",
]

PREFIX = "mcp__"
# what every model provider accepts as a tool's name
_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolState(StrEnum):
    pinned = "pinned"  # as approved: offered to the model
    new = "new"  # never approved
    changed = "changed"  # its definition (or the server's instructions) changed since
    removed = "removed"  # approved, but the server no longer lists it
    refused = "refused"  # cannot be offered whatever a person says (see the reason)


@dataclass(frozen=True)
class Listing:
    """One complete ``tools/list`` of a server (every page), as it came."""

    server: str
    tools: tuple[dict[str, Any], ...]  # the raw entries, fields the SDK ignores included
    instructions: str | None = None
    protocol_version: str | None = None
    server_info: dict[str, Any] | None = None
    at: float = 0.0  # wall time


# the digest of a definition (the default pins all of it; a test's negative control
# injects a weaker one)
Pinner = Callable[[Mapping[str, Any]], str]


def full_definition(definition: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the whole definition."""
    return canonical_hash(dict(definition))


def definition_of(tool: Mapping[str, Any], instructions: str | None) -> dict[str, Any]:
    """What a pin covers: the raw tool entry and the server's instructions."""
    return {"tool": dict(tool), "instructions": instructions}


def exposed_name(server: str, tool: str) -> str:
    """The name the model sees: ``mcp__SERVER__TOOL`` (characters providers refuse in a
    tool's name become ``_``; a collision that makes is refused, see :func:`judge`)."""
    return PREFIX + server + "__" + re.sub(r"[^A-Za-z0-9_-]", "_", tool)


@dataclass(frozen=True)
class ToolStatus:
    server: str
    tool: str  # the name on the server
    name: str  # mcp__SERVER__TOOL
    state: ToolState
    digest: str | None = None  # of the definition listed now (None: removed)
    definition: dict[str, Any] | None = None  # as listed now
    pin: Pin | None = None
    reason: str = ""  # why it is not offered, in words
    renamed_from: str | None = None  # a new tool that looks like a removed one renamed

    @property
    def offered(self) -> bool:
        return self.state is ToolState.pinned

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "server": self.server,
            "tool": self.tool,
            "name": self.name,
            "state": self.state.value,
            "digest": self.digest,
            "pinned_digest": None if self.pin is None else self.pin.digest,
            "pinned_by": None if self.pin is None else self.pin.pinned_by,
            "pinned_at": None if self.pin is None else self.pin.pinned_at,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.renamed_from:
            out["renamed_from"] = self.renamed_from
        return out


def judge(
    listing: Listing,
    pins: Iterable[Pin],
    *,
    pinner: Pinner = full_definition,
    taken: Mapping[str, str] | None = None,
) -> list[ToolStatus]:
    """The state of every tool *listing* names, and of every pinned one it no longer
    names. *taken*: tool names other servers list (name -> server): a name two servers
    offer is refused on both (no server shadows another's tool)."""
    pinned = {p.tool: p for p in pins if p.server == listing.server}
    counts: dict[str, int] = {}
    exposed: dict[str, list[str]] = {}
    for raw in listing.tools:
        name = raw.get("name")
        if isinstance(name, str):
            counts[name] = counts.get(name, 0) + 1
            exposed.setdefault(exposed_name(listing.server, name), []).append(name)
    out: list[ToolStatus] = []
    seen: set[str] = set()
    for raw in listing.tools:
        name = raw.get("name")
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        definition = definition_of(raw, listing.instructions)
        digest = pinner(definition)
        pin = pinned.get(name)
        full = exposed_name(listing.server, name)
        refusal = _refusal(listing.server, name, full, counts, exposed, taken or {})
        if refusal:
            state, reason = ToolState.refused, refusal
        elif pin is None:
            state, reason = ToolState.new, "new: not approved yet"
        elif pin.digest != digest:
            state, reason = ToolState.changed, "its definition changed since it was approved"
        else:
            state, reason = ToolState.pinned, ""
        out.append(ToolStatus(listing.server, name, full, state, digest, definition, pin, reason))
    for name, pin in sorted(pinned.items()):
        if name not in seen:
            out.append(
                ToolStatus(
                    listing.server,
                    name,
                    exposed_name(listing.server, name),
                    ToolState.removed,
                    pin=pin,
                    reason="approved, but the server no longer lists it",
                )
            )
    return _note_renames(out)


def _refusal(
    server: str,
    name: str,
    full: str,
    counts: Mapping[str, int],
    exposed: Mapping[str, Sequence[str]],
    taken: Mapping[str, str],
) -> str:
    if counts[name] > 1:
        return f"the server lists {name!r} {counts[name]} times"
    other = taken.get(name)
    if other is not None and other != server:
        return f"server {other!r} offers a tool named {name!r} too: neither is offered"
    if not _PROVIDER_NAME.match(full):
        return f"{full!r} is not a name model providers accept (at most 64 of A-Z a-z 0-9 _ -)"
    if len(exposed[full]) > 1:
        others = ", ".join(repr(n) for n in exposed[full] if n != name)
        return f"{name!r} and {others} would both be called {full}"
    return ""


def _note_renames(statuses: list[ToolStatus]) -> list[ToolStatus]:
    """A new tool whose definition, but for its name, is a removed tool's: say so."""
    removed = {
        canonical_json(_nameless(s.pin.definition)): s.tool
        for s in statuses
        if s.state is ToolState.removed and s.pin is not None
    }
    if not removed:
        return statuses
    out = []
    for s in statuses:
        if s.state is ToolState.new and s.definition is not None:
            was = removed.get(canonical_json(_nameless(s.definition)))
            if was is not None:
                s = ToolStatus(
                    s.server, s.tool, s.name, s.state, s.digest, s.definition, s.pin,
                    f"new: probably {was!r} renamed; not approved yet", renamed_from=was,
                )  # fmt: skip
        out.append(s)
    return out


def _nameless(definition: Mapping[str, Any]) -> dict[str, Any]:
    tool = dict(definition.get("tool") or {})
    tool.pop("name", None)
    return {**definition, "tool": tool}


# -- diffs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One leaf that differs: its JSON path, and its values before and after (``MISSING``
    where there was none)."""

    path: str
    before: Any
    after: Any


class _Missing:
    def __repr__(self) -> str:
        return "(none)"


MISSING: Any = _Missing()


def diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """Every difference between two JSON values, leaf by leaf, in a stable order.
    Strings are compared exactly (a trailing space, a Cyrillic ``а`` for a Latin ``a``)."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[Change] = []
        for key in sorted(set(before) | set(after)):
            changes.extend(
                diff(before.get(key, MISSING), after.get(key, MISSING), _join(path, key))
            )
        return changes
    if isinstance(before, list) and isinstance(after, list):
        changes = []
        for i in range(max(len(before), len(after))):
            changes.extend(
                diff(
                    before[i] if i < len(before) else MISSING,
                    after[i] if i < len(after) else MISSING,
                    f"{path}[{i}]",
                )
            )
        return changes
    if type(before) is type(after) and before == after:
        return []
    return [Change(path or "(whole)", before, after)]


def _join(path: str, key: str) -> str:
    plain = re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", key) is not None
    return f"{path}.{key}" if plain and path else (key if plain else f"{path}[{key!r}]")


# -- effect classes -------------------------------------------------------------------


def effect_of(tool: Mapping[str, Any]) -> EffectClass:
    """The effect class a tool's annotations give, conservatively. The annotations are
    hints from the server -- but pinned ones: a person approved them.

    - none at all -> ``external`` (it may do anything);
    - ``readOnlyHint`` -> ``read`` if ``openWorldHint`` is false, else ``network``;
    - otherwise destructive (``destructiveHint`` true, or absent: the spec's default)
      -> ``irreversible``;
    - otherwise (``destructiveHint`` false) -> ``write_local`` if ``openWorldHint`` is
      false, else ``external``.
    """
    notes = tool.get("annotations")
    if not isinstance(notes, Mapping) or not any(
        k in notes for k in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
    ):
        return EffectClass.external
    closed = notes.get("openWorldHint") is False
    if notes.get("readOnlyHint") is True:
        return EffectClass.read if closed else EffectClass.network
    if notes.get("destructiveHint") is not False:
        return EffectClass.irreversible
    return EffectClass.write_local if closed else EffectClass.external


def idempotent_of(tool: Mapping[str, Any]) -> bool:
    """May a call left in doubt by a crash run again? Only if the (pinned) annotations
    say it is read-only or idempotent."""
    notes = tool.get("annotations")
    if not isinstance(notes, Mapping):
        return False
    return notes.get("readOnlyHint") is True or notes.get("idempotentHint") is True


@dataclass
class ServerReport:
    """What ``errands mcp ls`` shows of one server: its tools' states, or why it could not
    be listed."""

    server: str
    transport: str  # "stdio: CMD ..." or the URL
    tools: list[ToolStatus] = field(default_factory=list)
    error: str | None = None
    protocol_version: str | None = None
    server_info: dict[str, Any] | None = None
    listed_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "transport": self.transport,
            "protocol_version": self.protocol_version,
            "server_info": self.server_info,
            "listed_at": self.listed_at,
            "error": self.error,
            "tools": [t.as_dict() for t in self.tools],
        }
