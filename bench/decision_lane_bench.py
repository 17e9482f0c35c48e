"""A person's decision behind a busy writer, in one process (issue 17, item 3).

The store's writer (group commit) is kept busy by N errands appending without pause on a
thread of their own, with its own event loop (as the runner runs beside the server's);
on the main thread "a person" appends a decision to one of 400 other errands every
10 ms. Measured, per variant, side by side in one run (``--rounds`` times, alternately):

- the decision's latency (p50/p99: from its append to the caller resuming), and the part
  of it spent before the writer answered (put -> resolved, "writer");
- the bulk's appends per second while deciding (is the bulk starved?);
- the store's commits.

Variants: ``one lane`` (every operation in arrival order: the writer before issue 17's
urgent lane), ``urgent lane`` (decisions first, the interpreter's switch interval left
as is), ``lane+switch`` (as shipped: 0.1 ms switch interval while the lane commits).

    python bench/decision_lane_bench.py [--rounds 3] [--errands 200] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from errands.core import events as ev
from errands.core.labels import Provenance
from errands.store.sqlite import SQLiteStore
from errands.store.writer import Op, WriteQueue

STAMPS: dict[int, list[float]] = {}  # id(decision op) -> [put, resolved]


def _stamp(op: Op | None) -> None:
    if op is not None and op.fn is None and op.owner is None:
        STAMPS[id(op)] = [time.perf_counter()]


class Lanes(WriteQueue):
    __slots__ = ()

    def put(self, op: Op | None) -> None:
        _stamp(op)
        super().put(op)


class OneLane(WriteQueue):
    __slots__ = ()

    def put(self, op: Op | None) -> None:
        _stamp(op)
        self.bulk.put(op)


class Timed(SQLiteStore):
    def _resolve(self, batch: list[Op]) -> None:
        now = time.perf_counter()
        for op in batch:
            stamp = STAMPS.get(id(op))
            if stamp is not None and len(stamp) == 1:
                stamp.append(now)
        super()._resolve(batch)


class OneLaneStore(Timed):
    _queue_class = OneLane


class LaneStore(Timed):
    _queue_class = Lanes
    urgent_switch = None


class LaneSwitchStore(Timed):
    _queue_class = Lanes


VARIANTS: dict[str, type[Timed]] = {
    "one lane": OneLaneStore,
    "urgent lane": LaneStore,
    "lane+switch": LaneSwitchStore,
}


def _created(title: str) -> ev.ErrandCreated:
    return ev.ErrandCreated(
        title=title,
        content=ev.Content(text="go", provenance=Provenance(kind="user")),
        model="scripted:m",
        workspace="/w",
    )


def _ms(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


async def run(cls: type[Timed], errands: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = cls(Path(tmp) / "s.db")
        for i in range(errands):
            await store.create(f"b{i}", _created(f"b{i}"))
            assert await store.acquire(f"b{i}", "runner", 3600)
        for i in range(400):
            await store.create(f"w{i}", _created(f"w{i}"))
        stop = threading.Event()
        steps = 0
        body = "x" * 2000  # (a model turn's event is a few kilobytes)

        async def errand(i: int) -> None:
            nonlocal steps
            while not stop.is_set():
                note = ev.ErrorRaised(kind="model", message=body)
                await store.append(f"b{i}", [note], owner="runner")
                steps += 1
                await asyncio.sleep(0)

        async def bulk() -> None:
            await asyncio.gather(*(errand(i) for i in range(errands)))

        latencies: list[float] = []

        async def person() -> None:
            k = 0
            await asyncio.sleep(1.0)
            while not stop.is_set():
                t0 = time.perf_counter()
                await store.append(f"w{k % 400}", [ev.ErrorRaised(kind="model", message="ok")])
                latencies.append(time.perf_counter() - t0)
                k += 1
                await asyncio.sleep(0.01)

        runner = threading.Thread(target=lambda: asyncio.run(bulk()))
        runner.start()
        deciding = asyncio.create_task(person())
        await asyncio.sleep(1.0)
        s0, t0 = steps, time.perf_counter()
        await asyncio.sleep(seconds)
        rate = (steps - s0) / (time.perf_counter() - t0)
        stop.set()
        await deciding
        await asyncio.to_thread(runner.join)
        commits = store.stats.commits
        await store.close()
    writer = sorted(s[1] - s[0] for s in STAMPS.values() if len(s) == 2)
    STAMPS.clear()
    latencies.sort()
    return {
        "decisions": len(latencies),
        "p50_ms": _ms(latencies, 0.5),
        "p99_ms": _ms(latencies, 0.99),
        "writer_p50_ms": _ms(writer, 0.5),
        "writer_p99_ms": _ms(writer, 0.99),
        "bulk_appends_per_s": round(rate),
        "commits": commits,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--errands", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # (as errands up sets it)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, cls in VARIANTS.items():
            result = await run(cls, args.errands, args.seconds)
            runs[name].append(result)
            print(f"round {r + 1} {name:12} {result}", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds:")
    keys = ("p50_ms", "p99_ms", "writer_p50_ms", "writer_p99_ms", "bulk_appends_per_s")
    print(f"{'variant':12} " + " ".join(f"{k:>18}" for k in keys))
    for name, results in runs.items():
        cells = [statistics.median(float(x[k]) for x in results) for k in keys]
        print(f"{name:12} " + " ".join(f"{c:>18.1f}" for c in cells))


if __name__ == "__main__":
    asyncio.run(main())
