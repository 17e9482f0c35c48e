"""Resuming an errand in O(tail): its fold snapshot, then the events after it.

:func:`resume` is what a runner (``Loop.load``) and the operations on an errand
(approve, tell, ...) fold an errand's log with: the snapshot the store keeps for it
(:mod:`errands.core.snapshot`), checked, and the events after it -- or, if it has none
or it is in doubt, the whole log, as before. :func:`maybe_save` is called by the loop
after its appends and writes a new snapshot every :data:`EVERY` events, or sooner when
the transcript grew by :data:`EVERY_BYTES` since the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.snapshot import Chain, decode, encode, fmt, stored
from errands.store.protocol import Snapshot, Store, StoreReader

__all__ = ["EVERY", "EVERY_BYTES", "maybe_save", "resume", "save"]

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Progress)

EVERY = 1_000  # events between two snapshots (a resume folds at most about this many)
EVERY_BYTES = 4 << 20  # ... or this much new transcript text, looked at every LOOK events
LOOK = 100


async def resume(
    store: StoreReader,
    errand_id: str,
    cls: type[P],
    *,
    decoder: Callable[..., tuple[P, tuple[str, float]] | None] = decode,
    anchored: bool = True,
) -> P:
    """The errand's fold: from its snapshot and the events after it when the snapshot
    is sound, else from its whole log. (*decoder* and *anchored*: the tests' controls.)"""
    snap = await store.snapshot(errand_id)
    if snap is not None and snap.format == fmt():
        found = decoder(snap.seq, snap.state, snap.parts, snap.data, cls)
        if found is not None:
            p, (kind, at) = found
            tail = await store.read(errand_id, after=snap.seq - 1)
            # the anchor: the log still holds, at the snapshot's place, the event it ended on
            here = (tail[0].seq, tail[0].event.type, tail[0].event.at) if tail else None
            if here is not None and (here == (snap.seq, kind, at) or not anchored):
                for s in tail[1:]:
                    p.apply(s.seq, s.event)
                p.snapshot_seq = snap.seq
                return p
        log.info(
            "errand %s: its fold snapshot at %d is not sound; folding it whole", errand_id, snap.seq
        )
    whole = cls.empty(errand_id)
    assert isinstance(whole, cls)
    for s in await store.read(errand_id):
        whole.apply(s.seq, s.event)
    return whole


def _due(p: Progress, added: int) -> bool:
    since = p.last_seq - p.snapshot_seq
    if since >= EVERY:
        return True
    if since < LOOK or p.last_seq // LOOK == (p.last_seq - added) // LOOK:
        return False  # (the text is measured once every LOOK events)
    fresh = p.messages.fresh() if isinstance(p.messages, Chain) else p.messages
    return sum(len(m.text) for m in fresh) >= EVERY_BYTES


async def save(store: Store, p: Progress, last: ev.Event) -> bool:
    """Write *p*'s snapshot (*last*: the event at ``p.last_seq``, its anchor)."""
    encoded = encode(p, (last.type, last.at))
    p.snapshot_seq = encoded.seq  # (a concurrent append does not start another meanwhile)
    snap = Snapshot(encoded.seq, fmt(), encoded.state, encoded.parts, encoded.new)
    if await store.put_snapshot(p.errand_id, snap):
        stored(encoded)
        return True
    return False


async def maybe_save(
    store: Store, p: Progress, seqs: Sequence[int], added: Sequence[ev.Event]
) -> None:
    """After an append of *added* at *seqs* (folded into *p*): a snapshot, if one is due."""
    if seqs and seqs[-1] == p.last_seq and _due(p, len(added)):
        await save(store, p, added[-1])
