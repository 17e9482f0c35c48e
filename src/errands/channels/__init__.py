"""Channels: how errands reaches a person outside the inbox (the webhook notifier
today; email next).

A channel is started by the harness (:meth:`errands.harness.Harness.channels`) in a
process that serves errands: it subscribes to the store's commits, reads what it needs
from the store, and never blocks an errand. It is closed when that process stops.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Channel"]


@runtime_checkable
class Channel(Protocol):
    async def close(self) -> None:
        """Deliver what is queued (briefly), then stop."""
        ...
