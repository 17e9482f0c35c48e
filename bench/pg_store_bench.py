"""PostgreSQL store benchmark: appends/s and commits/s of PostgresStore against a bare
psycopg baseline on the same server, in the same run (SQLiteStore beside them for
reference).

Each writer is an asyncio task with its own errand and lease, appending a small event in
a loop (``append(..., owner=...)``, as the real loop does). The *bare baseline* is one
thread doing ``executemany`` of same-size rows into a similar table and committing, in a
loop, with as many rows per commit as there are writers -- what one client's group commit
could do at best on this server. Each figure is the median of ``--repeats`` runs.

    python bench/pg_store_bench.py --quick                  # a throw-away server (tests/helpers)
    python bench/pg_store_bench.py --url postgresql://...   # an existing database (it writes!)

Results: a table, and ``bench/results/pg_store_bench.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from errands.core import events as ev
from errands.core.labels import Provenance
from errands.store import Store
from errands.store.postgres import PostgresStore
from errands.store.sqlite import SQLiteStore

RESULTS = Path(__file__).parent / "results" / "pg_store_bench.json"
BODY = "x" * 300  # about a small tool result's size


def _event() -> ev.Event:
    return ev.ToolResult(
        call_id="c",
        tool="t",
        ok=True,
        content=ev.Content(text=BODY, provenance=Provenance(kind="tool")),
    )


async def _store_run(store: Store, writers: int, seconds: float) -> tuple[float, float]:
    created = ev.ErrandCreated(
        title="w",
        model="m",
        workspace="/tmp",
        content=ev.Content(text="t", provenance=Provenance(kind="user")),
    )
    for i in range(writers):
        await store.create(f"w{i}", created)
        assert await store.acquire(f"w{i}", f"o{i}", 600)
    stop = time.monotonic() + seconds
    count = 0
    commits0 = store.stats.commits  # type: ignore[attr-defined]

    async def writer(i: int) -> None:
        nonlocal count
        event = _event()
        while time.monotonic() < stop:
            await store.append(f"w{i}", [event], owner=f"o{i}")
            count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    elapsed = time.monotonic() - t0
    commits = store.stats.commits - commits0  # type: ignore[attr-defined]
    return count / elapsed, commits / elapsed


def _baseline(url: str, writers: int, seconds: float) -> tuple[float, float]:
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bare (errand_id TEXT, seq BIGINT, type TEXT,"
            " at DOUBLE PRECISION, body TEXT, PRIMARY KEY (errand_id, seq))"
        )
        conn.commit()
        seq = 0
        rows = 0
        commits = 0
        stop = time.monotonic() + seconds
        t0 = time.monotonic()
        body = _event().model_dump_json()
        while time.monotonic() < stop:
            seq += 1
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO bare VALUES (%s, %s, %s, %s, %s)",
                    [(f"w{i}", seq, "tool_result", time.time(), body) for i in range(writers)],
                )
            conn.commit()
            rows += writers
            commits += 1
        elapsed = time.monotonic() - t0
        conn.execute("DROP TABLE bare")
        conn.commit()
    return rows / elapsed, commits / elapsed


def _fresh_url(base: str | None) -> tuple[str, Any]:
    if base is not None:
        return base, None
    from helpers.postgres import server

    s = server()
    return s.url(s.new_database()), s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--url", help="an existing database (default: a throw-away server)")
    parser.add_argument("--writers", type=int, nargs="*")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    writers = args.writers or ([100, 1000] if args.quick else [10, 100, 1000])
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    repeats = args.repeats or (1 if args.quick else 3)
    results: list[dict[str, Any]] = []
    for n in writers:
        runs: dict[str, list[tuple[float, float]]] = {"postgres": [], "baseline": [], "sqlite": []}
        for _ in range(repeats):
            url, _server = _fresh_url(args.url)
            pg = PostgresStore(url)
            try:
                runs["postgres"].append(asyncio.run(_store_run(pg, n, seconds)))
            finally:
                asyncio.run(pg.close())
            runs["baseline"].append(_baseline(url, n, seconds))
            with tempfile.TemporaryDirectory(dir=Path.home()) as d:
                lite = SQLiteStore(Path(d) / "b.sqlite")
                try:
                    runs["sqlite"].append(asyncio.run(_store_run(lite, n, seconds)))
                finally:
                    asyncio.run(lite.close())
        row: dict[str, Any] = {"writers": n}
        for name, values in runs.items():
            row[f"{name}_appends_per_s"] = statistics.median(v[0] for v in values)
            row[f"{name}_commits_per_s"] = statistics.median(v[1] for v in values)
        row["postgres_vs_baseline"] = row["postgres_appends_per_s"] / row["baseline_appends_per_s"]
        results.append(row)
        print(
            f"{n:>6} writers: PostgresStore {row['postgres_appends_per_s']:>9,.0f} appends/s"
            f" ({row['postgres_commits_per_s']:,.0f} commits/s) | bare psycopg"
            f" {row['baseline_appends_per_s']:>9,.0f} rows/s ({row['baseline_commits_per_s']:,.0f}"
            f" commits/s) | ratio {row['postgres_vs_baseline']:.2f} | SQLiteStore"
            f" {row['sqlite_appends_per_s']:>9,.0f} appends/s",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"seconds": seconds, "repeats": repeats, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
