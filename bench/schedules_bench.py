"""Schedules and watches (issue 15): what they cost while nothing happens, and how late
they fire while errands is busy.

Three measurements, each through the pieces ``errands up`` runs (``harness.build``, a
:class:`~errands.engine.runner.Runner` with its scheduler, ``serve()``; the real
SQLite store on disk, the system clock):

- **idle watches**: 10 watches on unchanging listings pages (a rotating ad outside the
  selected part) checked every second for ``--idle-minutes`` (default 5): model calls,
  errands and events written (all should be 0), CPU; then one page gets a new listing:
  exactly one errand, given only that listing;
- **idle scale**: a serving process with 10,000 schedules whose next slot is at least an
  hour away and 10,000 sleeping errands (timers a day away), against an empty one
  (each in a fresh child process): CPU while idle (share of one core), RSS, threads and
  asyncio tasks, at the start of the idle minute and at its end;
- **lateness**: 100 schedules every second while 1,000 errands run on the 200 ms scripted
  model: each run's creation time minus its slot (p50, p99, max).

    python bench/schedules_bench.py                 # all (about 8 minutes)
    python bench/schedules_bench.py --quick         # 1 idle minute, 20 s of lateness
    python bench/schedules_bench.py --only lateness

Results are printed and written to ``bench/results/schedules_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from probes import machine_info

from errands.config import load_settings
from errands.core import events as ev
from errands.core.states import ErrandState
from errands.engine.schedules import ScheduleRequest, add_schedule
from errands.harness import build
from errands.models.scripted import ScriptedModel, load_script
from errands.store.sqlite import SQLiteStore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "schedules_bench.json"


def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def threads() -> int:
    return threading.active_count()


def write_script(path: Path, turns: list[dict[str, Any]], latency_ms: float) -> str:
    path.write_text(json.dumps({"name": path.stem, "latency_ms": latency_ms, "turns": turns}))
    return f"scripted:{path}"


class Counting:
    """Every model the runs ask for, counting the calls made."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, spec: str) -> Any:
        model = ScriptedModel(load_script(spec.removeprefix("scripted:")), name=spec)
        original = model.complete

        async def complete(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await original(*args, **kwargs)

        model.complete = complete  # type: ignore[method-assign]
        return model


# ----------------------------------------------------------------- pages for watches


class Pages:
    """A site on 127.0.0.1 with N listings pages; each answer carries a fresh ad."""

    def __init__(self, n: int) -> None:
        self.listings = {f"/page{i}": ["studio, 900", "2 rooms, 1900"] for i in range(n)}
        self.hits = 0
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                pages.hits += 1
                items = "".join(f"<li>{x}</li>" for x in pages.listings.get(self.path, []))
                body = (
                    f"<html><body><div class=ad>ad #{pages.hits}</div>"
                    f"<ul class=results>{items}</ul></body></html>"
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=partial(self.httpd.serve_forever, 0.1), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def home_in(root: Path, name: str) -> Path:
    home = root / name
    home.mkdir(parents=True, mode=0o700)
    (home / "errands.toml").write_text('[network]\nallow_private = ["127.0.0.1"]\n')
    return home


async def serving(home: Path, models: Any = None) -> tuple[Any, Any, asyncio.Event, Any]:
    """errands as ``errands up`` runs it, minus HTTP: the harness, a runner with its
    scheduler, serving until the event is set."""
    harness = build(load_settings(home), models=models)
    runner = harness.runner().with_schedules()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.serve(stop))
    return harness, runner, stop, task


async def stop_serving(harness: Any, stop: asyncio.Event, task: Any) -> None:
    stop.set()
    await task
    await harness.close()


# ----------------------------------------------------------------- idle watches


async def idle_watches(root: Path, minutes: float) -> dict[str, Any]:
    home = home_in(root, "watches")
    pages = Pages(10)
    model = write_script(home / "m.json", [{"text": "a new listing: noted"}], 0)
    settings = load_settings(home)
    store = SQLiteStore(settings.db_path)
    for i, path in enumerate(pages.listings):
        body = {"name": f"w{i}", "kind": "watch", "every": "1s", "url": pages.url(path)}
        body |= {"select": "ul.results li", "model": model, "text": "tell me what is new"}
        await add_schedule(store, settings, ScheduleRequest(**body))
    await store.close()
    counting = Counting()
    harness, _, stop, task = await serving(home, counting)
    try:
        await asyncio.sleep(3)  # the baselines
        events0 = harness.store.stats.events
        hits0, cpu0, t0 = pages.hits, time.process_time(), time.monotonic()
        await asyncio.sleep(minutes * 60)
        idle_s = time.monotonic() - t0
        idle = {
            "seconds": round(idle_s, 1),
            "checks": pages.hits - hits0,
            "model_calls": counting.calls,
            "errands": len(await harness.store.list_errands(limit=100)),
            "events_written": harness.store.stats.events - events0,
            "cpu_share_of_one_core": round((time.process_time() - cpu0) / idle_s, 4),
        }
        pages.listings["/page3"] = ["loft, 2400", *pages.listings["/page3"]]
        t1 = time.monotonic()
        while not await harness.store.list_errands(limit=10) and time.monotonic() - t1 < 30:
            await asyncio.sleep(0.05)
        seen_in = time.monotonic() - t1
        await asyncio.sleep(5)  # and nothing more
        made = await harness.store.list_errands(limit=10)
        diff = ""
        if made:
            for stored in await harness.store.read(made[0].id):
                if isinstance(stored.event, ev.UserMessage) and stored.event.channel == "watch":
                    diff = stored.event.content.text
        changed = {
            "errands": len(made),
            "noticed_after_s": round(seen_in, 2),
            "diff": diff,
            "diff_is_only_the_new_item": "loft, 2400" in diff and "studio" not in diff,
        }
    finally:
        await stop_serving(harness, stop, task)
        pages.close()
    return {"watches": 10, "every_s": 1, "idle": idle, "after_one_change": changed}


# ----------------------------------------------------------------- idle scale


def populate(home: Path, schedules: int, sleepers: int) -> None:
    async def go() -> None:
        settings = load_settings(home)
        store = SQLiteStore(settings.db_path)
        try:
            for i in range(schedules):  # next slots at least an hour away
                body: dict[str, Any] = {"name": f"s{i}", "text": "summarise the board"}
                body |= (
                    {"kind": "cron", "cron": f"{i % 60} {i % 24} * * *", "tz": "Europe/Paris"}
                    if i % 2
                    else {"kind": "every", "every": f"{2 + i % 20}h"}
                )
                await add_schedule(store, settings, ScheduleRequest(**body))
            wake = time.time() + 86400
            for i in range(sleepers):
                errand_id = f"esleep{i:07d}"
                created = ev.ErrandCreated(
                    title="wait for the vendor", model="scripted:demo", workspace=str(home),
                    content=ev.Content(text="chase the vendor", provenance=ev.Provenance(kind="user")),
                )  # fmt: skip
                await store.create(errand_id, created)
                call = ev.ToolCall(call_id="c1", name="wait", arguments={"seconds": 86400})
                (req,) = await store.append(
                    errand_id, [ev.ModelRequested(model="m", tools_hash="x")]
                )
                await store.append(
                    errand_id,
                    [
                        ev.ModelResponded(request_seq=req, model="m", tool_calls=[call]),
                        ev.Sleeping(call_id="c1", tool="wait", wake_at=wake, reason="an answer"),
                    ],
                )
        finally:
            await store.close()

    asyncio.run(go())


async def idle_child(home: Path, seconds: float) -> dict[str, Any]:
    """In a child process: serve, settle, then measure an idle stretch."""
    harness, _, stop, task = await serving(home)
    try:
        await asyncio.sleep(10)  # start-up and the first passes
        start = {"rss_mb": rss_mb(), "threads": threads(), "tasks": len(asyncio.all_tasks())}
        c0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = (time.process_time() - c0) / (time.monotonic() - t0)
        end = {"rss_mb": rss_mb(), "threads": threads(), "tasks": len(asyncio.all_tasks())}
        sleeping = len(
            await harness.store.list_errands(states=[ErrandState.sleeping], limit=100_000)
        )
        scheduled = len(await harness.store.schedules())
    finally:
        await stop_serving(harness, stop, task)
    return {
        "schedules": scheduled,
        "sleeping_errands": sleeping,
        "cpu_share_of_one_core": round(cpu, 4),
        "start": start,
        "end": end,
    }


def idle_scale(root: Path, seconds: float, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, count in (("empty", 0), ("loaded", n)):
        home = home_in(root, f"scale-{name}")
        populate(home, count, count)
        done = subprocess.run(
            [sys.executable, __file__, "--child-idle", str(home), "--idle-seconds", str(seconds)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    empty, loaded = out["empty"], out["loaded"]
    out["rss_growth_mb_over_empty"] = round(loaded["end"]["rss_mb"] - empty["end"]["rss_mb"], 1)
    return out


# ----------------------------------------------------------------- lateness


async def lateness(root: Path, seconds: float, busy: int, schedules: int) -> dict[str, Any]:
    home = home_in(root, "lateness")
    settings = load_settings(home)
    # the busy errands: a step is a 200 ms model call and a list_files call; each does
    # 20 steps, and finished ones are replaced, so that 1,000 run at all times
    step = {"text": "", "tool_calls": [{"name": "list_files", "arguments": {}}]}
    busy_model = write_script(home / "busy.json", [step] * 20 + [{"text": "done"}], 200)
    run_model = write_script(home / "run.json", [{"text": "board summarised"}], 200)
    store = SQLiteStore(settings.db_path)
    for i in range(schedules):
        body = {"name": f"s{i}", "kind": "every", "every": "1s", "model": run_model, "text": "tick"}
        await add_schedule(store, settings, ScheduleRequest(**body))
    await store.close()
    harness, runner, stop, task = await serving(home)
    try:
        t0 = time.time()

        busy_ids: set[str] = set()

        async def keep_busy() -> None:  # 1,000 errands running at all times
            while time.time() - t0 < seconds:
                busy_ids.intersection_update(runner.tasks)
                for _ in range(busy - len(busy_ids)):
                    errand_id = await harness.create("be busy", model=busy_model)
                    busy_ids.add(errand_id)
                    runner.start(errand_id)
                await asyncio.sleep(0.05)

        await keep_busy()
        end = time.time()
    finally:
        await stop_serving(harness, stop, task)
    store = SQLiteStore(settings.db_path)
    late: list[float] = []
    try:
        for i in range(schedules):
            for row in await store.schedule_runs(f"s{i}", 100_000):
                if row.outcome == "started" and row.errand_id and t0 + 3 <= row.slot <= end:
                    view = await store.view(row.errand_id)
                    late.append(view.created_at - row.slot)
        steps = sum(v.steps for v in await store.list_errands(limit=1_000_000))
    finally:
        await store.close()
    late.sort()
    q = statistics.quantiles(late, n=100) if len(late) > 1 else [0.0] * 99
    return {
        "schedules": schedules,
        "every_s": 1,
        "busy_errands": busy,
        "model_latency_ms": 200,
        "seconds": seconds,
        "runs_measured": len(late),
        "model_steps_during": steps,
        "lateness_s": {
            "p50": round(q[49], 3),
            "p99": round(q[98], 3),
            "max": round(late[-1], 3) if late else None,
        },
    }


# ----------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["watches", "scale", "lateness"])
    parser.add_argument("--idle-minutes", type=float, default=5.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--lateness-seconds", type=float, default=60.0)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child-idle", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_idle:
        print(json.dumps(asyncio.run(idle_child(args.child_idle, args.idle_seconds))))
        return
    if args.quick:
        args.idle_minutes, args.idle_seconds, args.lateness_seconds = 1.0, 20.0, 20.0
    root = Path(tempfile.mkdtemp(prefix="errands-schedules-bench-", dir=args.dir))
    os.environ["ERRANDS_HOME"] = str(root / "unused")
    results: dict[str, Any] = {
        "machine": machine_info(args.dir),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if args.only in (None, "watches"):
        results["idle_watches"] = asyncio.run(idle_watches(root, args.idle_minutes))
        print(json.dumps(results["idle_watches"], indent=2))
    if args.only in (None, "scale"):
        results["idle_scale"] = idle_scale(root, args.idle_seconds, args.n)
        print(json.dumps(results["idle_scale"], indent=2))
    if args.only in (None, "lateness"):
        results["lateness"] = asyncio.run(lateness(root, args.lateness_seconds, 1000, 100))
        print(json.dumps(results["lateness"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
