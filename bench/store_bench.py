"""Store benchmark: appends/s, commits (fsyncs)/s and bytes per event of SQLiteStore.

Each writer is an asyncio task with its own errand and its own lease owner, appending a
small ToolResult-like event in a loop (``append(..., owner=...)``, as the real loop does).
Side by side, in the same run, a *bare baseline*: one writer thread doing ``executemany``
of same-size rows into a similar table every 2 ms (one row per writer per commit), with
WAL and ``synchronous=FULL`` -- the practical limit of group commit on this disk. The
process tunes its garbage collector as the ``errands`` command does
(:func:`errands.engine.runtime.tune_gc`); ``--python-gc`` keeps Python's defaults. Each figure
is the median of several store/baseline pairs run in alternation.

    python bench/store_bench.py            # full run (~3-4 minutes)
    python bench/store_bench.py --quick    # a short run (< 60 s)
    python bench/store_bench.py --writers 1000 5000 --python-gc   # with Python's default GC

Results are printed as a table and written to ``bench/results/store_bench.json``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from probes import disk_bytes, machine_info

from errands.core import events as ev
from errands.core.labels import Provenance
from errands.engine.runtime import tune_gc
from errands.store.sqlite import SQLiteStore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "store_bench.json"
WRITERS_FULL = (1, 100, 1_000, 5_000)
TEXT = "ok: 42 rows matched; first: two-bedroom, 1,850/month, available from June " * 2


@dataclass
class Row:
    writers: int
    seconds: float
    appends: int
    appends_per_s: float
    commits_per_s: float
    events_per_commit: float
    body_bytes_per_event: float
    disk_bytes_per_event: float
    baseline_appends_per_s: float
    baseline_commits_per_s: float
    baseline_disk_bytes_per_event: float
    ratio: float  # store / baseline appends per second (the median of the repeats' ratios)
    ratios: list[float]  # each repeat's
    store_runs: list[float]  # each repeat's appends/s
    baseline_runs: list[float]


def _row(n: int, stores: list[dict[str, float]], bases: list[dict[str, float]]) -> Row:
    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs) if runs else 0.0

    ratios = [
        s["appends_per_s"] / b["appends_per_s"]
        for s, b in zip(stores, bases, strict=False)
        if b["appends_per_s"]
    ]
    return Row(
        writers=n,
        seconds=sum(s["seconds"] for s in stores),
        appends=int(sum(s["appends"] for s in stores)),
        appends_per_s=med(stores, "appends_per_s"),
        commits_per_s=med(stores, "commits_per_s"),
        events_per_commit=med(stores, "events_per_commit"),
        body_bytes_per_event=med(stores, "body_bytes_per_event"),
        disk_bytes_per_event=med(stores, "disk_bytes_per_event"),
        baseline_appends_per_s=med(bases, "appends_per_s"),
        baseline_commits_per_s=med(bases, "commits_per_s"),
        baseline_disk_bytes_per_event=med(bases, "disk_bytes_per_event"),
        ratio=statistics.median(ratios) if ratios else 0.0,
        ratios=ratios,
        store_runs=[s["appends_per_s"] for s in stores],
        baseline_runs=[b["appends_per_s"] for b in bases],
    )


def _event(i: int) -> ev.ToolResult:
    return ev.ToolResult(
        call_id=f"call_{i}",
        tool="listings.search",
        intent_seq=i,
        ok=True,
        content=ev.Content(text=TEXT, provenance=Provenance(kind="tool", name="listings.search")),
    )


# ------------------------------------------------------------------------ the store


async def _store_run(path: Path, writers: int, seconds: float, warmup: float) -> dict[str, float]:
    store = SQLiteStore(path)
    created = ev.ErrandCreated(
        title="watch listings",
        content=ev.Content(text="two-bedroom under 2,000", provenance=Provenance(kind="user")),
        model="bench/model",
        workspace="/tmp/ws",
    )
    ids = [f"errand-{i:05d}" for i in range(writers)]
    await asyncio.gather(*(store.create(e, created) for e in ids))
    got = await asyncio.gather(*(store.acquire(e, f"owner-{i}", 3600.0) for i, e in enumerate(ids)))
    assert all(got)
    size_before = await asyncio.to_thread(disk_bytes, path)

    state = {"measuring": False, "stop": False}
    counts = [0] * writers

    async def writer(k: int) -> None:
        errand_id, owner = ids[k], f"owner-{k}"
        n = 0
        while not state["stop"]:
            n += 1
            await store.append(errand_id, [_event(n)], owner=owner)
            if state["measuring"]:
                counts[k] += 1

    tasks = [asyncio.create_task(writer(k)) for k in range(writers)]
    await asyncio.sleep(warmup)
    commits0, events0, bytes0 = store.stats.commits, store.stats.events, store.stats.bytes
    state["measuring"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    commits, events, body = (
        store.stats.commits - commits0,
        store.stats.events - events0,
        store.stats.bytes - bytes0,
    )
    state["stop"] = True
    await asyncio.gather(*tasks)
    total_events = store.stats.events - writers  # minus the errand_created events
    await store.close()
    size_after = await asyncio.to_thread(disk_bytes, path)
    appends = sum(counts)
    return {
        "seconds": elapsed,
        "appends": appends,
        "appends_per_s": appends / elapsed,
        "commits_per_s": commits / elapsed,
        "events_per_commit": events / max(commits, 1),
        "body_bytes_per_event": body / max(events, 1),
        "disk_bytes_per_event": (size_after - size_before) / max(total_events, 1),
    }


# --------------------------------------------------------------------- the baseline


def _baseline_run(path: Path, writers: int, seconds: float, warmup: float) -> dict[str, float]:
    """One thread; every 2 ms, one ``executemany`` of one row per writer, then COMMIT."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE events (errand_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,"
        " at REAL NOT NULL, body TEXT NOT NULL, blob TEXT, PRIMARY KEY (errand_id, seq))"
        " WITHOUT ROWID"
    )
    body = _event(1).model_dump_json()
    ids = [f"errand-{i:05d}" for i in range(writers)]
    seq = 0
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup
    appends = commits = 0
    t_measure = 0.0
    next_tick = time.perf_counter()
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            break
        if now < next_tick:
            time.sleep(next_tick - now)
        next_tick = time.perf_counter() + 0.002
        seq += 1
        at = time.time()
        rows = [(e, seq, "tool_result", at, body, None) for e in ids]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", rows)
        conn.execute("COMMIT")
        if time.perf_counter() >= measure_from:
            if not t_measure:
                t_measure = time.perf_counter()
            else:
                appends += writers
                commits += 1
    elapsed = time.perf_counter() - t_measure
    total = seq * writers
    conn.close()
    size = disk_bytes(path)
    return {
        "appends_per_s": appends / elapsed,
        "commits_per_s": commits / elapsed,
        "disk_bytes_per_event": size / max(total, 1),
    }


def _baseline(path: Path, writers: int, seconds: float, warmup: float) -> dict[str, float]:
    out: dict[str, dict[str, float]] = {}
    thread = threading.Thread(
        target=lambda: out.setdefault("r", _baseline_run(path, writers, seconds, warmup))
    )
    thread.start()
    thread.join()
    return out["r"]


# ------------------------------------------------------------------------ reporting


def print_table(rows: list[Row]) -> None:
    headers = (
        "writers",
        "appends/s",
        "commits/s",
        "events/commit",
        "body B/event",
        "disk B/event",
        "baseline appends/s",
        "baseline commits/s",
        "store/baseline",
    )
    cells = [
        (
            f"{r.writers:,}",
            f"{r.appends_per_s:,.0f}",
            f"{r.commits_per_s:,.0f}",
            f"{r.events_per_commit:,.1f}",
            f"{r.body_bytes_per_event:,.0f}",
            f"{r.disk_bytes_per_event:,.0f}",
            f"{r.baseline_appends_per_s:,.0f}",
            f"{r.baseline_commits_per_s:,.0f}",
            f"{r.ratio:.0%}",
        )
        for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="SQLiteStore vs bare group-commit baseline (WAL, synchronous=FULL)")
        for h in headers:
            table.add_column(h, justify="right")
        for c in cells:
            table.add_row(*c)
        Console(width=160).print(table)
    except ImportError:  # pragma: no cover - rich is a dependency, but stay plain-friendly
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
        for c in cells:
            print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 60 s)")
    parser.add_argument("--writers", type=int, nargs="*", help="writer counts to run")
    parser.add_argument("--seconds", type=float, help="measured seconds per run")
    parser.add_argument("--repeats", type=int, help="store/baseline pairs per writer count")
    parser.add_argument("--dir", type=Path, help="where the db files go (a disk, not tmpfs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--python-gc",
        action="store_true",
        help="keep Python's default GC settings (default: errands.engine.runtime.tune_gc(), as"
        " the errands command does)",
    )
    args = parser.parse_args()
    if not args.python_gc:
        tune_gc()

    writers = tuple(args.writers or WRITERS_FULL)
    seconds = args.seconds or (3.0 if args.quick else 6.0)
    warmup = 1.0 if args.quick else 1.5
    repeats = args.repeats or (1 if args.quick else 3)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="errands-bench-", dir=args.dir) as tmp:
        directory = Path(tmp)
        info = machine_info(directory)
        for n in writers:
            # store and baseline alternate, `repeats` times: a busy neighbour slows both
            stores: list[dict[str, float]] = []
            bases: list[dict[str, float]] = []
            for r in range(repeats):
                db = directory / f"store-{n}-{r}.db"
                stores.append(asyncio.run(_store_run(db, n, seconds, warmup)))
                if not args.no_baseline:
                    bases.append(_baseline(directory / f"baseline-{n}-{r}.db", n, seconds, warmup))
            rows.append(_row(n, stores, bases))
            print(
                f"{n:>5} writers: store {rows[-1].appends_per_s:,.0f}/s, "
                f"baseline {rows[-1].baseline_appends_per_s:,.0f}/s "
                f"(ratios {', '.join(f'{x:.0%}' for x in rows[-1].ratios)})",
                file=sys.stderr,
                flush=True,
            )
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "store_bench",
                "mode": "quick" if args.quick else "full",
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {**info, "load_avg_at_end": os.getloadavg()},
                "settings": {
                    "gc": "python default"
                    if args.python_gc
                    else "errands.engine.runtime.tune_gc()",
                    "gc_threshold": gc.get_threshold(),
                    "measured_seconds": seconds,
                    "warmup_seconds": warmup,
                    "repeats": repeats,
                    "baseline_tick_ms": 2,
                    "note": "each figure is the median over the repeats; store and baseline"
                    " runs alternate",
                },
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
