"""Long errands (issue 17, item 4): what showing and resuming cost as a log grows.

For errands of 1,000, 10,000 and 100,000 events (a loop's steps: request, reply with a
tool call, intent, result; on the real SQLite store on disk), the median of ``--runs``:

- **GET /api/errands/{id}**: the API (in process, over httpx's ASGI transport) returning
  the view and the newest 200 events -- a page, whatever the length;
- **inbox page**: the errand's page in the inbox (its request and the newest events);
- **resume, whole**: reading the whole log and folding it (what ``Loop.load`` did before
  fold snapshots, and still does for an errand without one), split into the read and
  the fold;
- **resume**: what ``Loop.load`` does now (``errands.store.resume``): the errand's fold
  snapshot and the events after it, at the worst tail the loop leaves (a snapshot every
  1,000 events: 999 events after it);
- **transcript**: decoding the resumed transcript, which happens at the next model call
  (the call sends it whole);
- **snapshot write**: the loop's next snapshot after 1,000 more events (only the new parts
  are encoded and written), and the first one of an errand that had none (everything).

    python bench/long_log_bench.py              # 1k, 10k, 100k (about two minutes)
    python bench/long_log_bench.py --sizes 1000 10000

Results are printed and written to ``bench/results/long_log.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from probes import machine_info
from rich.console import Console
from rich.table import Table

from errands.config import load_settings
from errands.core import events as ev
from errands.core.labels import Provenance
from errands.core.progress import Progress
from errands.harness import build
from errands.policy.hook import AllowAll
from errands.server.app import create_app
from errands.server.auth import Security
from errands.server.context import ServerContext
from errands.server.hub import Hub
from errands.server.idempotency import IdempotencyStore
from errands.store.resume import EVERY, resume, save
from errands.store.sqlite import SQLiteStore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "long_log.json"


def _step(i: int, request_seq: int) -> list[ev.Event]:
    args = {"path": f"notes/{i}.md"}
    call = ev.ToolCall(call_id=f"c{i}", name="read_file", arguments=args)
    text = f"line {i} of the notes; " * 8
    return [
        ev.ModelRequested(model="scripted:demo", tools_hash="sha256:x"),
        ev.ModelResponded(
            request_seq=request_seq,
            model="scripted:demo",
            tool_calls=[call],
            usage=ev.Usage(input_tokens=1_000, output_tokens=20),
        ),
        ev.ToolIntent(
            call_id=f"c{i}",
            tool="read_file",
            arguments=args,
            effect=ev.EffectClass.read,
            idempotent=True,
            idempotency_key=f"k{i}",
        ),
        ev.ToolResult(
            call_id=f"c{i}",
            tool="read_file",
            ok=True,
            content=ev.Content(text=text, provenance=Provenance(kind="tool", name="read_file")),
        ),
    ]


async def long_errand(store: SQLiteStore, errand_id: str, events: int) -> None:
    """An errand of *events* events (1 + 4 a step) on *store*."""
    request = ev.Content(text="read every note", provenance=Provenance(kind="user"))
    created = ev.ErrandCreated(title="long", content=request, model="scripted:demo", workspace="/w")
    await store.create(errand_id, created)
    batch: list[ev.Event] = []
    for i in range((events - 1) // 4):
        batch.extend(_step(i, 4 * i + 2))
        if len(batch) >= 4_000:
            await store.append(errand_id, batch)
            batch = []
    if batch:
        await store.append(errand_id, batch)


async def snapshot_at(store: SQLiteStore, errand_id: str, seq: int) -> float:
    """Write the errand's snapshot at *seq* as the loop would have; the ms it took."""
    p = Progress.empty(errand_id)
    stored = await store.read(errand_id)
    for s in stored[:seq]:
        p.apply(s.seq, s.event)
    started = time.perf_counter()
    assert await save(store, p, stored[seq - 1].event)
    return (time.perf_counter() - started) * 1000


async def next_snapshot(store: SQLiteStore, errand_id: str) -> tuple[float, float]:
    """Resume, append 1,000 events as the loop does, write the next snapshot: (ms to
    decode the transcript, ms to write the snapshot)."""
    p = await resume(store, errand_id, Progress)
    started = time.perf_counter()
    assert len(tuple(p.messages)) == len(p.messages)
    decoded = (time.perf_counter() - started) * 1000
    base = p.last_seq // 4
    events = [e for i in range(250) for e in _step(base + i, p.last_seq + 4 * i + 2)]
    seqs = await store.append(errand_id, events)
    for seq, event in zip(seqs, events, strict=True):
        p.apply(seq, event)
    started = time.perf_counter()
    assert await save(store, p, events[-1])
    return decoded, (time.perf_counter() - started) * 1000


async def _median(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


async def measure(sizes: list[int], runs: int) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="errands-longlog-"))
    settings = load_settings(home)
    store = SQLiteStore(home / "long.db")
    harness = build(settings, store=store, policy=AllowAll())
    ctx = ServerContext(
        harness=harness,
        hub=Hub(store),
        security=Security(host="127.0.0.1", port=7878),
        idempotency=IdempotencyStore(home / "server.sqlite"),
        base_url="http://127.0.0.1:7878",
    )
    rows = []
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:7878") as api:
        for size in sizes:
            eid = f"long{size}"
            await long_errand(store, eid, size)

            async def get(eid: str = eid, size: int = size) -> None:
                r = await api.get(f"/api/errands/{eid}")
                assert r.status_code == 200 and len(r.json()["events"]) == min(200, size)

            async def page(eid: str = eid) -> None:
                r = await api.get(f"/errands/{eid}")
                assert r.status_code == 200
                api.cookies.clear()

            read_ms: list[float] = []
            fold_ms: list[float] = []
            for _ in range(runs):
                started = time.perf_counter()
                stored = await store.read(eid)
                read = time.perf_counter()
                p = Progress.empty(eid)
                for s in stored:
                    p.apply(s.seq, s.event)
                read_ms.append((read - started) * 1000)
                fold_ms.append((time.perf_counter() - read) * 1000)
            row: dict[str, Any] = {
                "events": size,
                "get_ms": await _median(get, runs),
                "inbox_page_ms": await _median(page, runs),
                "whole_ms": round(
                    statistics.median(r + f for r, f in zip(read_ms, fold_ms, strict=True)), 1
                ),
                "whole_read_ms": round(statistics.median(read_ms), 1),
                "whole_fold_ms": round(statistics.median(fold_ms), 1),
            }
            last = (await store.view(eid)).last_seq
            tail = min(EVERY - 1, last - 2)
            row["tail_events"] = tail
            row["first_snapshot_ms"] = round(await snapshot_at(store, eid, last - tail), 1)

            async def resumed(eid: str = eid, last: int = last, tail: int = tail) -> None:
                p = await resume(store, eid, Progress)
                assert p.last_seq == last and p.snapshot_seq == last - tail

            row["resume_ms"] = await _median(resumed, runs)
            decoded, written = await next_snapshot(store, eid)
            row["transcript_decode_ms"] = round(decoded, 1)
            row["next_snapshot_ms"] = round(written, 1)
            rows.append(row)
    ctx.idempotency.close()
    await store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.sizes, args.runs))
    table = Table(title="A long errand: shown a page at a time; resumed from its snapshot")
    columns = (
        "events",
        "GET /api/errands/{id}",
        "inbox page",
        "resume (snapshot + 999)",
        "resume, whole (read + fold)",
        "transcript decode",
        "snapshot write: next / first",
    )
    for name in columns:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            f"{r['events']:,}",
            f"{r['get_ms']:.1f} ms",
            f"{r['inbox_page_ms']:.1f} ms",
            f"{r['resume_ms']:.1f} ms",
            f"{r['whole_ms']:.0f} ms ({r['whole_read_ms']:.0f} + {r['whole_fold_ms']:.0f})",
            f"{r['transcript_decode_ms']:.0f} ms",
            f"{r['next_snapshot_ms']:.0f} / {r['first_snapshot_ms']:.0f} ms",
        )
    Console(width=170).print(table)
    results = {
        "machine": machine_info(Path(tempfile.gettempdir())),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
