"""Long errands (issue 17, item 4): what showing and resuming cost as a log grows.

For errands of 1,000, 10,000 and 100,000 events (a loop's steps: request, reply with a
tool call, intent, result; on the real SQLite store on disk), the median of ``--runs``:

- **GET /api/errands/{id}**: the API (in process, over httpx's ASGI transport) returning
  the view and the newest 200 events -- a page, whatever the length;
- **inbox page**: the errand's page in the inbox (its request and the newest events);
- **resume**: what a runner does to take an errand up again today: read its whole log
  and fold it (``Loop.load``), split into the read and the fold.

    python bench/long_log_bench.py              # 1k, 10k, 100k (about a minute)
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
            rows.append(
                {
                    "events": size,
                    "get_ms": await _median(get, runs),
                    "inbox_page_ms": await _median(page, runs),
                    "resume_ms": round(
                        statistics.median(r + f for r, f in zip(read_ms, fold_ms, strict=True)), 1
                    ),
                    "resume_read_ms": round(statistics.median(read_ms), 1),
                    "resume_fold_ms": round(statistics.median(fold_ms), 1),
                }
            )
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
    table = Table(title="A long errand: shown a page at a time; resumed by reading it whole")
    for name in ("events", "GET /api/errands/{id}", "inbox page", "resume", "(read + fold)"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            f"{r['events']:,}",
            f"{r['get_ms']:.1f} ms",
            f"{r['inbox_page_ms']:.1f} ms",
            f"{r['resume_ms']:.0f} ms",
            f"{r['resume_read_ms']:.0f} + {r['resume_fold_ms']:.0f} ms",
        )
    Console(width=120).print(table)
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
