"""A person's decision does not wait for a worker's whole batch (issue 17, item 3).

While the favoured process (the server) waits for the write gate it holds a shared lock on
``FILE-gate-urgent``; the gate's holder looks at it as it stages and commits what it has
staged, running the rest of its batch first in its next transaction. Here: the gate sees
the favoured waiter (control: an unfavoured waiter is not urgent), and a batch cut short
loses, reorders and repeats nothing -- every append acknowledged, at its place, after the
commits it was cut into (control: never yielding makes one commit).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from errands.core import events as ev
from errands.core.labels import Provenance
from errands.store.sqlite import SQLiteStore
from errands.store.sqlite.connection import WriteGate


def _wait_in_line(gate: WriteGate, started: threading.Event) -> threading.Thread:
    def go() -> None:
        started.set()
        gate.acquire(5.0, lambda: None)
        gate.release()

    t = threading.Thread(target=go)
    t.start()
    return t


def _urgent_while_waiting(tmp_path: Path, favoured: bool) -> bool:
    path = str(tmp_path / "s.db")
    holder, waiter = WriteGate(path), WriteGate(path)
    if favoured:
        waiter.favour()
    try:
        holder.acquire(1.0, lambda: None)
        started = threading.Event()
        t = _wait_in_line(waiter, started)
        started.wait()
        deadline = time.monotonic() + 2
        seen = False
        while not seen and time.monotonic() < deadline:
            seen = holder.urgent()
            time.sleep(0.001)
        holder.release()
        t.join()
        return seen and not holder.urgent()  # (and not once the waiter is through)
    finally:
        holder.close()
        waiter.close()


def test_the_holder_sees_the_favoured_process_wait(tmp_path: Path) -> None:
    assert _urgent_while_waiting(tmp_path, favoured=True)


def test_control_an_unfavoured_waiter_is_not_urgent(tmp_path: Path) -> None:
    assert not _urgent_while_waiting(tmp_path, favoured=False)


class Yielding(SQLiteStore):
    """A store whose writer is always asked to yield (as when the server waits)."""

    asked = 0

    def _yield_now(self) -> bool:
        self.asked += 1
        return True


async def _commits_for(store: SQLiteStore, n: int) -> int:
    """Queue four appends to each of *n* errands at once; check every one landed, in
    order; the commits they took."""
    created = ev.ErrandCreated(
        title="t",
        content=ev.Content(text="go", provenance=Provenance(kind="user")),
        model="scripted:m",
        workspace="/w",
    )
    for i in range(n):
        await store.create(f"e{i}", created)
    before = store.stats.commits
    seqs = await asyncio.gather(
        *(
            store.append(f"e{i % n}", [ev.ErrorRaised(kind="model", message=f"m{k}")])
            for k in range(4)
            for i in range(n)
        )
    )
    commits = store.stats.commits - before
    logs = [
        [getattr(s.event, "message", "") for s in (await store.read(f"e{i}"))[1:]] for i in range(n)
    ]
    assert logs == [[f"m{k}" for k in range(4)] for _ in range(n)]  # all there, in order
    assert seqs == [[k + 2] for k in range(4) for _ in range(n)]  # as acknowledged
    return commits


async def test_a_batch_cut_short_loses_and_reorders_nothing(tmp_path: Path) -> None:
    store = Yielding(tmp_path / "y.db")
    plain = SQLiteStore(tmp_path / "p.db")
    try:
        cut = await _commits_for(store, 50)
        whole = await _commits_for(plain, 50)
    finally:
        await store.close()
        await plain.close()
    assert store.asked > 0
    # 200 appends queued at once: cut into pieces of 16; the control commits them together
    assert cut >= 200 // 16 > whole
