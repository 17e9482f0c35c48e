"""Memory benchmark: what ``remember``, ``search_memory`` and a purging ``forget`` cost in
SQLiteStore as the memories grow (docs/memory.md).

For N memories already kept (sentences of ~12 words from a 2,000-word vocabulary), it
times, each as the median of its repeats:

- ``remember``: one memory kept (one durable commit);
- ``search``: a two-word query, the best 10 (FTS5 bm25, any word);
- ``forget``: a purge -- delete, FTS5 ``optimize`` (the merge that takes the deleted
  terms out of the file's pages), and the WAL checkpoint;
- side by side, the anchor: the same delete *without* the merge (what a delete that
  leaves the terms in the file costs), so the price of the purge is visible.

    python bench/memory_bench.py            # N = 1,000 and 10,000 (~1 minute)
    python bench/memory_bench.py --sizes 1000

Results are printed as a table and written to ``bench/results/memory_bench.json``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from probes import machine_info

from errands.core.labels import Confidentiality, Integrity, Label
from errands.store.sqlite import SQLiteStore
from errands.store.writer import Tx

LABEL = Label.of(Integrity.trusted, Confidentiality.private)
RESULTS = Path(__file__).parent / "results" / "memory_bench.json"


def _sentence(rng: random.Random, vocabulary: list[str]) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(12))


async def _forget_without_merge(store: SQLiteStore, memory_id: int) -> None:
    m = await store.memory(memory_id)

    def op(tx: Tx) -> None:
        tx.conn.execute(
            "INSERT INTO memories_fts(memories_fts, rowid, text, tags) VALUES ('delete', ?, ?, ?)",
            (m.id, m.text, " ".join(m.tags)),
        )
        tx.conn.execute("DELETE FROM memories WHERE id = ?", (m.id,))

    await store._submit(op)
    await store._after_purge()


async def _timed(fn: Any, repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        await fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def run(size: int, repeats: int) -> dict[str, Any]:
    rng = random.Random(size)
    vocabulary = [f"w{i}" for i in range(2000)]
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "m.db")
        try:
            ids = []
            for start in range(0, size, 500):
                batch = [
                    store.remember("person", _sentence(rng, vocabulary), ["bench"], LABEL)
                    for _ in range(min(500, size - start))
                ]
                ids += [m.id for m in await asyncio.gather(*batch)]
            remember = await _timed(
                lambda i: store.remember("person", _sentence(rng, vocabulary), [], LABEL), repeats
            )
            search = await _timed(
                lambda i: store.memories(
                    "person", f"{rng.choice(vocabulary)} {rng.choice(vocabulary)}", 10
                ),
                repeats,
            )
            victims = rng.sample(ids, 2 * repeats)
            forget = await _timed(lambda i: store.forget(victims[i]), repeats)
            plain = await _timed(
                lambda i: _forget_without_merge(store, victims[repeats + i]), repeats
            )
        finally:
            await store.close()
    return {
        "memories": size,
        "remember_ms": round(remember, 2),
        "search_ms": round(search, 3),
        "forget_purge_ms": round(forget, 2),
        "forget_without_merge_ms": round(plain, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rows = [asyncio.run(run(n, args.repeats)) for n in args.sizes]
    header = ("memories", "remember ms", "search ms", "forget (purge) ms", "anchor: no merge ms")
    print(" | ".join(header))
    for r in rows:
        print(
            f"{r['memories']:>8,} | {r['remember_ms']:>11} | {r['search_ms']:>9} | "
            f"{r['forget_purge_ms']:>17} | {r['forget_without_merge_ms']:>19}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"machine": machine_info(Path(tempfile.gettempdir())), "rows": rows}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
