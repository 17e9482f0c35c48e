"""Fold snapshots in the store, backend-neutral (errands.core.snapshot; docs/store.md).

An errand keeps at most one snapshot: a row (the sequence number it folds through, its
format, its state, the names of its parts in order) and its parts by name.
:meth:`SnapshotOps.put_snapshot` refuses one whose bytes hold a secret the store
redacts, and one no newer than the kept one; otherwise the backend writes only the
parts the kept one lacks and deletes those it no longer names, in one transaction.

A backend implements the hooks below with a few statements each
(:mod:`errands.store.sqlite.snapshots`, :mod:`errands.store.postgres.snapshots`).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from errands.store.protocol import Snapshot
from errands.store.writer import Tx

__all__ = ["SnapshotOps", "snapshot_from_rows"]


def snapshot_from_rows(row: Sequence[Any], parts: Iterable[Sequence[Any]]) -> Snapshot:
    """A snapshot from its row ``(seq, format, state, parts)`` and its part rows
    ``(name, body)``."""
    seq, fmt, state, names = row
    data = {str(name): bytes(body) for name, body in parts}
    return Snapshot(int(seq), str(fmt), bytes(state), tuple(str(names).split()), data)


class SnapshotOps(abc.ABC):
    """Mixed into a backend's store (before :class:`~errands.store.base.BaseStore`,
    whose defaults keep no snapshots)."""

    if TYPE_CHECKING:  # what the base store provides

        async def _submit(self, fn: Callable[[Tx], Any]) -> Any: ...
        def _holds_secret(self, snapshot: Snapshot) -> bool: ...

    # ------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    def _read_snapshot(self, errand_id: str) -> Snapshot | None:
        """The errand's snapshot, or None (any thread; no transaction)."""

    @abc.abstractmethod
    def _kept_snapshot_seq(self, tx: Tx, errand_id: str) -> int | None:
        """The sequence number of the errand's kept snapshot (None: none), its row
        locked to the commit where the backend needs it."""

    @abc.abstractmethod
    def _write_snapshot(self, tx: Tx, errand_id: str, snapshot: Snapshot) -> None:
        """Replace the errand's snapshot with *snapshot*: write its parts in *data*,
        delete the parts it no longer names, write its row."""

    # ------------------------------------------------------------ the protocol

    async def snapshot(self, errand_id: str) -> Snapshot | None:
        return await asyncio.to_thread(self._read_snapshot, errand_id)

    async def put_snapshot(self, errand_id: str, snapshot: Snapshot) -> bool:
        if self._holds_secret(snapshot):  # (a fold of the redacted log never does)
            return False

        def op(tx: Tx) -> bool:
            kept = self._kept_snapshot_seq(tx, errand_id)
            if kept is not None and kept >= snapshot.seq:
                return False
            self._write_snapshot(tx, errand_id, snapshot)
            return True

        return bool(await self._submit(op))
