"""MCP pins in the store, backend-neutral: the rows a backend reads as
:class:`~errands.store.protocol.McpPin` and as log entries, and the transaction that
approves and drops pins (each logged with who and when).

A backend implements the hooks below with a statement each
(:mod:`errands.store.sqlite.mcp_pins`; the PostgreSQL store's extras).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from errands.core.canonical import canonical_json
from errands.store.protocol import McpPin
from errands.store.writer import Tx

__all__ = ["McpPinOps", "log_entries", "pin_from_row"]

_LOG_KEYS = ("server", "tool", "action", "digest", "by", "at")


def pin_from_row(row: Sequence[Any]) -> McpPin:
    """A pin from the columns ``server, tool, digest, definition (JSON), pinned_by,
    pinned_at``."""
    server, tool, digest, definition, by, at = row
    return McpPin(str(server), str(tool), str(digest), json.loads(definition), str(by), float(at))


def log_entries(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """The pin log's rows ``server, tool, action, digest, by, at`` as dicts."""
    return [dict(zip(_LOG_KEYS, r, strict=True)) for r in rows]


class McpPinOps(abc.ABC):
    """Mixed into a backend's store."""

    if TYPE_CHECKING:  # what the base store provides

        async def _submit(self, fn: Callable[[Tx], Any]) -> Any: ...

    # ------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    def _put_pin(
        self, tx: Tx, server: str, tool: str, digest: str, definition: str, by: str
    ) -> None:
        """Insert or replace the pin of (*server*, *tool*), pinned now."""

    @abc.abstractmethod
    def _drop_pin(self, tx: Tx, server: str, tool: str) -> bool:
        """Delete the pin of (*server*, *tool*); False if there was none."""

    @abc.abstractmethod
    def _log_pin(
        self, tx: Tx, server: str, tool: str, action: str, digest: str | None, by: str
    ) -> None:
        """Add an entry to the pin log, now."""

    # ------------------------------------------------------------ the protocol

    async def pin_mcp(
        self, server: str, pins: Sequence[McpPin], *, drop: Sequence[str] = (), by: str = ""
    ) -> None:
        rows = [(p.tool, p.digest, canonical_json(p.definition), by or p.pinned_by) for p in pins]

        def op(tx: Tx) -> None:
            for tool, digest, definition, who in rows:
                self._put_pin(tx, server, tool, digest, definition, who)
                self._log_pin(tx, server, tool, "pinned", digest, who)
            for tool in drop:
                if self._drop_pin(tx, server, tool):
                    self._log_pin(tx, server, tool, "dropped", None, by)

        await self._submit(op)
