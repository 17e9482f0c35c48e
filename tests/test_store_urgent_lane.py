"""A person's decision goes ahead of the errands' own writes in one process (issue 17, item 3).

An append without an owner -- an outside input: an approval's decision, a message, a
cancel -- goes to the writer's urgent lane (:class:`~errands.store.writer.WriteQueue`): the
batch being staged is cut short once it has staged ``URGENT_AFTER`` operations, the
decision commits in a transaction of its own and its caller is told at once; the rest of
the batch goes on after it. Here the errands' appends are made slow to stage (2 ms each,
by the test's subclass), 300 of them are queued at once and a decision after them: it is
acknowledged long before the last of them, and nothing is lost, repeated or reordered
(control: one lane, where the decision waits for all 300).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from errands.core import events as ev
from errands.core.labels import Provenance
from errands.store.sqlite import SQLiteStore
from errands.store.writer import Op, Tx, WriteQueue

BULK = 300
ERRANDS = 10


class SlowSteps(SQLiteStore):
    """The errands' own appends take 2 ms each to stage (a busy writer)."""

    def _append_in_tx(self, tx: Tx, op: Op) -> list[int]:
        if op.owner is not None:
            time.sleep(0.002)
        return super()._append_in_tx(tx, op)


class OneLane(WriteQueue):
    """The control: everything in the bulk lane, in arrival order."""

    __slots__ = ()

    def put(self, op: Op | None) -> None:
        self.bulk.put(op)


class SlowOneLane(SlowSteps):
    _queue_class = OneLane


def _created() -> ev.ErrandCreated:
    return ev.ErrandCreated(
        title="t",
        content=ev.Content(text="go", provenance=Provenance(kind="user")),
        model="scripted:m",
        workspace="/w",
    )


def _note(text: str) -> ev.ErrorRaised:
    return ev.ErrorRaised(kind="model", message=text)


async def _decision_place(store: SQLiteStore) -> int:
    """How many of the errands' appends were acknowledged before the decision."""
    created = _created()
    for i in range(ERRANDS):
        await store.create(f"e{i}", created)
        assert await store.acquire(f"e{i}", "runner", 60.0)
    await store.create("waiting", created)
    done: list[str] = []

    async def step(i: int) -> list[int]:
        seqs = await store.append(f"e{i % ERRANDS}", [_note(f"s{i}")], owner="runner")
        done.append("step")
        return seqs

    async def decide() -> list[int]:
        await asyncio.sleep(0.02)  # (the bulk is queued and its batch is staging)
        seqs = await store.append("waiting", [_note("decided")])
        done.append("decision")
        return seqs

    results = await asyncio.gather(*(step(i) for i in range(BULK)), decide())
    assert results[-1] == [2]
    # nothing lost, repeated or reordered: each errand's steps in the order queued
    for e in range(ERRANDS):
        logged = [getattr(s.event, "message", "") for s in (await store.read(f"e{e}"))[1:]]
        assert logged == [f"s{i}" for i in range(e, BULK, ERRANDS)]
        assert [s.seq for s in await store.read(f"e{e}")] == list(range(1, BULK // ERRANDS + 2))
    assert [getattr(s.event, "message", "") for s in await store.read("waiting")] == ["", "decided"]
    assert await store.integrity_check() == []
    return done.index("decision")


async def test_a_decision_is_acknowledged_ahead_of_the_bulk(tmp_path: Path) -> None:
    store = SlowSteps(tmp_path / "s.db")
    try:
        place = await _decision_place(store)
    finally:
        await store.close()
    assert place < BULK // 3, place  # (~10 steps of 2 ms queued while it waited 20 ms)


async def test_control_in_one_lane_the_decision_waits_for_the_bulk(tmp_path: Path) -> None:
    store = SlowOneLane(tmp_path / "s.db")
    try:
        place = await _decision_place(store)
    finally:
        await store.close()
    assert place == BULK


async def test_the_switch_interval_is_as_it_was_after_a_decision(tmp_path: Path) -> None:
    """The urgent lane commits with a short thread switch interval, and puts it back."""
    before = sys.getswitchinterval()
    store = SQLiteStore(tmp_path / "s.db")
    try:
        await store.create("e", _created())
        await asyncio.gather(*(store.append("e", [_note(f"d{i}")]) for i in range(20)))
    finally:
        await store.close()
    assert sys.getswitchinterval() == before
