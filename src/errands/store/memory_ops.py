"""Memory across errands in the store, backend-neutral (docs/memory.md): the rows a
backend reads as :class:`~errands.store.protocol.Memory`, and the transaction that
keeps one.

:meth:`MemoryOps.remember` checks its arguments (:func:`errands.store.memory.check_memory`:
a bad one is one clear error, nothing written), then, in one transaction of the writer,
returns the memory the same ``remember`` call kept already (the pair (errand, seq): a
call run again after a crash keeps nothing twice) or keeps a new one. A backend
implements the hooks below (its table and its search index) with a few statements each
(:mod:`errands.store.sqlite.memory`, :mod:`errands.store.postgres.memory`).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from errands.core.labels import Confidentiality, Integrity, Label
from errands.store.memory import check_memory
from errands.store.protocol import Memory
from errands.store.writer import Tx

__all__ = ["MemoryOps", "memory_from_row"]


def memory_from_row(row: Sequence[Any]) -> Memory:
    """A memory from the columns ``id, scope, text, tags (JSON), integrity,
    confidentiality, at, errand_id, seq``."""
    mid, scope, text, tags, integrity, conf, at, errand_id, seq = row
    return Memory(
        id=int(mid),
        scope=str(scope),
        text=str(text),
        tags=tuple(json.loads(tags)),
        label=Label.of(Integrity(integrity), Confidentiality(conf)),
        at=float(at),
        errand_id=errand_id,
        seq=None if seq is None else int(seq),
    )


class MemoryOps(abc.ABC):
    """Mixed into a backend's store."""

    if TYPE_CHECKING:  # what the base store provides

        async def _submit(self, fn: Callable[[Tx], Any]) -> Any: ...

    # ------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    def _memory_of_call(self, tx: Tx, errand_id: str, seq: int | None) -> Memory | None:
        """The memory the ``remember`` call (*errand_id*, *seq*) kept, if any."""

    @abc.abstractmethod
    def _insert_memory(self, tx: Tx, memory: Memory) -> int:
        """Keep *memory* (its id not yet given: 0) and index it; its new id."""

    # ------------------------------------------------------------ the protocol

    async def remember(
        self,
        scope: str,
        text: str,
        tags: Sequence[str],
        label: Label,
        *,
        errand_id: str | None = None,
        seq: int | None = None,
    ) -> Memory:
        text, kept = check_memory(scope, text, tags)

        def op(tx: Tx) -> Memory:
            if errand_id is not None:
                found = self._memory_of_call(tx, errand_id, seq)
                if found is not None:  # the same call, run again: nothing twice
                    return found
            new = Memory(0, scope, text, kept, label, tx.now, errand_id, seq)
            return dataclasses.replace(new, id=self._insert_memory(tx, new))

        memory: Memory = await self._submit(op)
        return memory
