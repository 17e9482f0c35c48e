"""Memory that stays flat (issue 21, item 5): a day of errands under the virtual clock, in
one process, with its RSS, open file descriptors, threads and asyncio tasks sampled.

What runs is what ``errands up`` runs, wired by ``harness.build``: the SQLite store on
disk, the runner serving (``Runner.serve``: claiming errands, noticing wake-ups, driving
their loops) with its scheduler (a watch checked every minute whose page gets a new item
every 10 minutes, and three hourly schedules), approvals decided through
``harness.approvals`` as they come (approved and denied in turn), errands handed over
every 5 minutes, and retention every hour (finished errands compacted after two hours).
The model is the scripted model (a lookup, then a message that needs approval, then a
final answer); the watch's page is simulated (no HTTP). Time is a
:class:`~errands.clock.FakeClock` moved a minute at a time, and the bench gives the
serving loops a few milliseconds of real time each minute (they poll every 5 ms here,
every 0.5 s in ``errands up``).

A sample is taken every simulated hour, after ``gc.collect()``: RSS (psutil), open file
descriptors, threads, asyncio tasks, and the Python objects the collector tracks.

    python bench/soak_bench.py                 # 24 simulated hours
    python bench/soak_bench.py --hours 6       # shorter

Prints a table (start, after warm-up, end) and writes ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from errands.clock import FakeClock
from errands.config import RetentionSettings, Settings, load_settings
from errands.core.events import EffectClass
from errands.engine.operations import create_errand
from errands.engine.retention import Retention
from errands.engine.schedules import ScheduleRequest, add_schedule
from errands.errors import StoreError
from errands.harness import Harness, build
from errands.models.scripted import Script, ScriptedModel
from errands.store.sqlite import SQLiteStore
from errands.tools import watchcheck
from errands.tools.tool import ToolContext
from errands.tools.toolset import FunctionToolset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "soak.json"
MINUTE, HOUR = 60.0, 3600.0
POLL = 0.005  # real seconds between the runner's looks (errands up: 0.5)

SCRIPT = {
    "name": "soak",
    "latency_ms": 0,
    "turns": [
        {
            "text": "Looking it up.",
            "tool_calls": [{"name": "lookup", "arguments": {"term": "flats"}}],
        },
        {
            "text": "Telling Bob.",
            "tool_calls": [{"name": "send_message", "arguments": {"to": "bob", "body": "news"}}],
        },
        {
            "cases": [
                {"when_contains": "denied", "text": "Understood: not sent."},
                {"text": "Sent: Bob knows."},
            ]
        },
    ],
}


def tools() -> FunctionToolset:
    reg = FunctionToolset()
    sent: list[int] = [0]

    @reg.tool(effect=EffectClass.read, idempotent=True)
    def lookup(term: str, ctx: ToolContext) -> str:
        """Look something up.

        Args:
            term: What to look up.
        """
        return f"{term}: three new listings, " + "details " * 200

    @reg.tool(effect=EffectClass.external, roles={"to": "recipient", "body": "body"})
    def send_message(to: str, body: str, ctx: ToolContext) -> str:
        """Send a message to someone.

        Args:
            to: The recipient.
            body: The message.
        """
        sent[0] += 1
        return f"sent to {to}"

    return reg


class Page:
    """The watched page: one more item every *change_every* seconds."""

    def __init__(self, clock: FakeClock, change_every: float) -> None:
        self.clock, self.start, self.change_every = clock, clock.wall(), change_every

    def checked(self) -> watchcheck.Checked:
        newest = int((self.clock.wall() - self.start) // self.change_every)
        items = tuple(
            watchcheck.Item(key=f"flat-{n}", text=f"flat {n}")
            for n in range(max(0, newest - 9), newest + 1)
        )
        return watchcheck.Checked(False, items, None, None, "https://flats.example/", 200)


@dataclass
class Sample:
    hour: float
    rss_mb: float
    fds: int
    threads: int
    tasks: int
    objects: int
    errands: int
    store_bytes: int


@dataclass
class SoakResult:
    hours: float
    warmup_hours: float
    seconds: float = 0.0
    errands: int = 0
    approvals: int = 0
    watch_runs: int = 0
    samples: list[Sample] = field(default_factory=list)

    def at(self, hour: float) -> Sample:
        return min(self.samples, key=lambda s: abs(s.hour - hour))

    def growth(self) -> dict[str, float]:
        """End minus after-warm-up, per measure."""
        warm, end = self.at(self.warmup_hours), self.samples[-1]
        return {
            "rss_mb": round(end.rss_mb - warm.rss_mb, 2),
            "fds": end.fds - warm.fds,
            "threads": end.threads - warm.threads,
            "tasks": end.tasks - warm.tasks,
            "objects": end.objects - warm.objects,
        }


def sample(hour: float, h: Harness, errands: int) -> Sample:
    gc.collect()
    proc = psutil.Process()
    db = str(h.settings.db_path)
    size = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    return Sample(
        hour=round(hour, 2),
        rss_mb=round(proc.memory_info().rss / 2**20, 2),
        fds=proc.num_fds(),
        threads=threading.active_count(),
        tasks=len(asyncio.all_tasks()),
        objects=len(gc.get_objects()),
        errands=errands,
        store_bytes=size,
    )


async def soak(
    home: Path,
    *,
    hours: float = 24.0,
    warmup_hours: float = 2.0,
    change_every: float = 10 * MINUTE,
    every_minutes: int = 5,
    progress: bool = False,
    toolset: FunctionToolset | None = None,
) -> SoakResult:
    """Run *hours* of the day; a sample every hour (and at the start). *toolset* replaces
    the bench's tools (``lookup``, ``send_message``): a test's leaking variant."""
    home.mkdir(parents=True, exist_ok=True)
    settings: Settings = load_settings(home)
    spec = home / "soak.json"
    spec.write_text(json.dumps(SCRIPT))
    clock = FakeClock(wall=1_800_000_000.0)
    store = SQLiteStore(settings.db_path, clock=clock)
    model = ScriptedModel(Script.model_validate(SCRIPT))
    h = build(
        settings, store=store, toolsets=[toolset or tools()], builtins=False, models=lambda _: model
    )
    # what errands up runs: the runner serving (claiming, waking), its scheduler; leases
    # outlive the simulated day (renewing runs on real time, which barely passes)
    runner = h.runner(lease_ttl=30 * 86400.0).with_schedules(clock)
    runner.loop.clock = clock
    page = Page(clock, change_every)
    scheduler = runner.scheduler
    assert scheduler is not None

    async def check(*args: Any, **kwargs: Any) -> watchcheck.Checked:
        return page.checked()

    scheduler.check = check  # type: ignore[method-assign]  (the simulated page)
    retention = Retention(store, RetentionSettings(keep_days=2 / 24, schedule_runs=10), clock)
    out = SoakResult(hours, warmup_hours)
    started = time.monotonic()
    decisions = 0
    stop = asyncio.Event()
    serving: asyncio.Task[None] | None = None
    try:
        request = ScheduleRequest(
            name="flats", kind="watch", every="1m", url="https://flats.example/", select="li",
            text="tell Bob about new flats",
        )  # fmt: skip
        await add_schedule(store, settings, request, clock=clock)
        for i in range(3):
            hourly = ScheduleRequest(
                name=f"hourly-{i}", kind="cron", cron=f"{i * 7} * * * *", text="the report"
            )
            await add_schedule(store, settings, hourly, clock=clock)
        serving = asyncio.create_task(runner.serve(stop, poll=POLL))
        await asyncio.sleep(10 * POLL)
        out.samples.append(sample(0.0, h, 0))
        minutes = int(hours * 60)
        for minute in range(1, minutes + 1):
            clock.advance(MINUTE)
            scheduler.nudge()  # (its wait is in real time: look now)
            if minute % every_minutes == 0:  # a person hands over an errand
                await create_errand(store, settings, f"errand {minute}", model=f"scripted:{spec}")
                out.errands += 1
            await asyncio.sleep(2 * POLL)  # (the runner claims and runs)
            for pending in await store.pending_approvals():
                decisions += 1
                try:
                    if decisions % 2:
                        await h.approvals.approve(pending.id, by="soak", channel="bench")
                    else:
                        await h.approvals.deny(
                            pending.id, reason="not now", by="soak", channel="bench"
                        )
                except StoreError:
                    continue
                out.approvals += 1
            await asyncio.sleep(2 * POLL)
            if minute % 60 == 0:
                await retention.run()
                count, done, out.watch_runs = _counts(settings.db_path)
                out.samples.append(sample(minute / 60, h, count))
                if progress:
                    s = out.samples[-1]
                    print(
                        f"hour {s.hour:5.1f}: rss {s.rss_mb:7.1f} MB, fds {s.fds}, threads "
                        f"{s.threads}, tasks {s.tasks}, objects {s.objects:,}, errands "
                        f"{s.errands} ({done} done)",
                        flush=True,
                    )
    finally:
        stop.set()
        if serving is not None:
            await serving
        await runner.drain()
        await h.close()
    out.seconds = round(time.monotonic() - started, 1)
    return out


def _counts(db: Path) -> tuple[int, int, int]:
    """Errands, done ones, and the watch's runs -- read by the bench on a connection of
    its own, so that nothing it reads stays in the process it measures."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        total, done, runs = conn.execute(
            "SELECT count(*), sum(state = 'done'), sum(view LIKE '%\"schedule\":\"flats\"%')"
            " FROM errands"
        ).fetchone()
    return int(total), int(done or 0), int(runs or 0)


def table(result: SoakResult) -> str:
    rows = [
        ("start", result.samples[0]),
        (f"after warm-up ({result.warmup_hours:g} h)", result.at(result.warmup_hours)),
        (f"end ({result.hours:g} h)", result.samples[-1]),
    ]
    lines = [
        f"{'':<24}{'RSS MB':>9}{'fds':>6}{'threads':>9}{'tasks':>7}{'objects':>10}"
        f"{'errands':>9}{'store bytes':>13}"
    ]
    for name, s in rows:
        lines.append(
            f"{name:<24}{s.rss_mb:>9.1f}{s.fds:>6}{s.threads:>9}{s.tasks:>7}{s.objects:>10,}"
            f"{s.errands:>9}{s.store_bytes:>13,}"
        )
    g = result.growth()
    lines.append(
        f"{'growth after warm-up':<24}{g['rss_mb']:>+9.1f}{g['fds']:>+6}{g['threads']:>+9}"
        f"{g['tasks']:>+7}{g['objects']:>+10,}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--warmup-hours", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from errands.engine.runtime import tune_gc

    tune_gc()  # (as the errands command does)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(
            soak(Path(tmp), hours=args.hours, warmup_hours=args.warmup_hours, progress=True)
        )
    print(table(result))
    print(
        f"{result.hours:g} simulated hours in {result.seconds:.0f} s: {result.errands} errands "
        f"handed over, {result.watch_runs} watch runs, {result.approvals} approvals decided"
    )
    args.out.parent.mkdir(exist_ok=True)
    data = asdict(result) | {"growth_after_warmup": result.growth()}
    args.out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
