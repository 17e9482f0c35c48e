"""Retention under a simulated week (issue 21, item 3): a 1-second watch and 100 daily
schedules on the virtual clock, with ``[retention]`` applied every hour as ``errands up``
does, and the store's bytes on disk sampled.

Real pieces: the SQLite store on disk (WAL, ``synchronous=FULL``), the scheduler
(:class:`errands.engine.scheduler.Scheduler`, firing slots and checking the watch in
the store's transactions) and retention (:class:`errands.engine.retention.Retention`).
Simulated: time (a :class:`~errands.clock.FakeClock`), the watched page (the check
returns its items without HTTP: the page gets a new item every ``--change-every``
seconds) and the runs' work -- each run the scheduler starts is finished at once with
what a typical run logs (a model request and answer with its cost, two tool calls with a
few KB of output each, the final state), written through the store like any run.

    python bench/retention_sim.py                      # a week (about 15-30 minutes)
    python bench/retention_sim.py --days 1 --quick     # a day

Writes ``bench/results/retention_sim.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from errands.clock import FakeClock
from errands.config import RetentionSettings, Settings, load_settings
from errands.core import events as ev
from errands.core.labels import Provenance
from errands.engine.retention import Retention
from errands.engine.scheduler import Scheduler
from errands.engine.schedules import ScheduleRequest, add_schedule
from errands.store.sqlite import SQLiteStore
from errands.store.sqlite.retention import file_bytes
from errands.tools import watchcheck

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "retention_sim.json"
HOUR, DAY = 3600.0, 86400.0
TOOL_OUTPUT = 3000  # characters of each simulated tool result


class Page:
    """The watched page: one more item every *change_every* seconds of the clock."""

    def __init__(self, clock: FakeClock, change_every: float) -> None:
        self.clock = clock
        self.start = clock.wall()
        self.change_every = change_every

    def items(self) -> tuple[watchcheck.Item, ...]:
        newest = int((self.clock.wall() - self.start) // self.change_every)
        return tuple(
            watchcheck.Item(key=f"listing-{n}", text=f"flat {n}, 2 rooms, {1500 + n % 700}")
            for n in range(max(0, newest - 19), newest + 1)
        )


def checking(page: Page) -> type[Scheduler]:
    class Simulated(Scheduler):
        @staticmethod
        async def check(*args: Any, **kwargs: Any) -> watchcheck.Checked:
            return watchcheck.Checked(
                not_modified=False,
                items=page.items(),
                etag=None,
                last_modified=None,
                url="https://flats.example/list",
                status=200,
            )

    return Simulated


async def finish(store: SQLiteStore, errand_id: str, at: float, n: int) -> None:
    """What a typical run logs, written through the store."""
    tool_text = f"result {n}: " + "x" * TOOL_OUTPUT
    usage = ev.Usage(input_tokens=900, output_tokens=120, cost_usd=0.0021)
    events: list[ev.Event] = [
        ev.ModelRequested(model="sim/model", tools_hash="h", at=at),
        ev.ModelResponded(
            request_seq=2,
            model="sim/model",
            content=ev.Content(text="Looking.", provenance=Provenance(kind="model")),
            tool_calls=[ev.ToolCall(call_id="c1", name="fetch_url", arguments={"url": "u"})],
            usage=usage,
            at=at,
        ),
    ]
    for call in ("c1", "c2"):
        events.append(
            ev.ToolResult(
                call_id=call,
                tool="fetch_url",
                ok=True,
                content=ev.Content(text=tool_text, provenance=Provenance(kind="tool")),
                at=at,
            )
        )
    result = ev.Content(text=f"Run {n}: nothing new.", provenance=Provenance(kind="model"))
    events.append(ev.StateChanged(state="done", result=result, at=at))
    await store.append(errand_id, events)


@dataclass
class Sample:
    day: float
    store_bytes: int  # the file and its WAL, just after retention ran
    wal_bytes: int
    errands: int
    compacted: int
    runs_rows: int
    watch_items: int


@dataclass
class SimResult:
    days: float
    watch_every: float
    schedules: int
    change_every: float
    keep_days: float
    schedule_runs: int
    checks: int = 0
    runs: int = 0
    seconds: float = 0.0
    max_bytes: int = 0  # the file and its WAL at their largest (just before retention)
    max_file_bytes: int = 0  # the file alone at its largest (just after retention)
    end_bytes: int = 0
    samples: list[Sample] = field(default_factory=list)
    gc: list[dict[str, Any]] = field(default_factory=list)


async def simulate(
    home: Path,
    *,
    days: float = 7.0,
    watch_every: float = 1.0,
    schedules: int = 100,
    change_every: float = 3600.0,
    rules: RetentionSettings | None = None,
    gc_every: float = HOUR,
    progress: bool = False,
) -> SimResult:
    rules = rules or RetentionSettings(keep_days=1.0, schedule_runs=24)
    settings: Settings = load_settings(home)
    clock = FakeClock(wall=1_800_000_000.0)
    store = SQLiteStore(settings.db_path, clock=clock)
    page = Page(clock, change_every)
    scheduler = checking(page)(store, settings, clock=clock)
    retention = Retention(store, rules, clock=clock)
    out = SimResult(
        days, watch_every, schedules, change_every, rules.keep_days, rules.schedule_runs
    )
    started = time.monotonic()
    try:
        await add_schedule(
            store,
            settings,
            ScheduleRequest(
                name="flats",
                kind="watch",
                every=f"{watch_every:g}s",
                url="https://flats.example/list",
                select="li",
                text="tell me about new flats",
            ),
            clock=clock,
        )
        for i in range(schedules):
            await add_schedule(
                store,
                settings,
                ScheduleRequest(
                    name=f"daily-{i}",
                    kind="cron",
                    cron=f"{i % 60} {i % 24} * * *",
                    text=f"the morning report number {i}",
                ),
                clock=clock,
            )
        end = clock.wall() + days * DAY
        next_gc = clock.wall() + gc_every
        n = 0
        while clock.wall() < end:
            clock.advance(watch_every)
            await scheduler.tick()
            out.checks += 1
            for view in await store.list_errands(states=[_queued()], limit=1000):
                await finish(store, view.id, clock.wall(), n)
                n += 1
            if clock.wall() >= next_gc:
                next_gc += gc_every
                report = await retention.run()
                out.gc.append(report.as_dict() | {"compacted": len(report.compacted)})
                out.samples.append(await _sample(store, settings, clock, end - days * DAY))
                # (the peak: just before retention, the WAL of the hour included)
                out.max_bytes = max(out.max_bytes, report.file_bytes_before)
                sample = out.samples[-1]
                out.max_file_bytes = max(out.max_file_bytes, sample.store_bytes - sample.wal_bytes)
                if progress:
                    s = out.samples[-1]
                    print(
                        f"day {s.day:5.2f}: {s.store_bytes:>11,} bytes, {s.errands} errands "
                        f"({s.compacted} compacted), {s.runs_rows} run rows",
                        file=sys.stderr,
                    )
        out.runs = n
    finally:
        await store.close()
    out.end_bytes = file_bytes(str(settings.db_path))
    out.seconds = round(time.monotonic() - started, 1)
    return out


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _queued() -> Any:
    from errands.core.states import ErrandState

    return ErrandState.queued


async def _sample(store: SQLiteStore, settings: Settings, clock: FakeClock, t0: float) -> Sample:
    import sqlite3
    from contextlib import closing

    views = await store.list_errands(limit=1_000_000)
    with closing(sqlite3.connect(settings.db_path)) as db:
        runs = db.execute("SELECT count(*) FROM schedule_runs").fetchone()[0]
        items = db.execute("SELECT count(*) FROM watch_items").fetchone()[0]
    return Sample(
        day=round((clock.wall() - t0) / DAY, 3),
        store_bytes=file_bytes(str(settings.db_path)),
        wal_bytes=_size(f"{settings.db_path}-wal"),
        errands=len(views),
        compacted=sum(1 for v in views if v.compacted),
        runs_rows=int(runs),
        watch_items=int(items),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--watch-every", type=float, default=1.0)
    parser.add_argument("--schedules", type=int, default=100)
    parser.add_argument("--change-every", type=float, default=3600.0)
    parser.add_argument("--keep-days", type=float, default=1.0)
    parser.add_argument("--schedule-runs", type=int, default=24)
    args = parser.parse_args()
    rules = RetentionSettings(keep_days=args.keep_days, schedule_runs=args.schedule_runs)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(
            simulate(
                Path(tmp),
                days=args.days,
                watch_every=args.watch_every,
                schedules=args.schedules,
                change_every=args.change_every,
                rules=rules,
                progress=True,
            )
        )
    RESULTS.parent.mkdir(exist_ok=True)
    data = asdict(result)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(
        f"{result.days:g} days, {result.checks:,} watch checks, {result.runs:,} runs in "
        f"{result.seconds:.0f} s: store at most {result.max_bytes:,} bytes with its WAL "
        f"(just before an hourly retention), the file alone at most "
        f"{result.max_file_bytes:,}; {result.end_bytes:,} at the end"
    )


if __name__ == "__main__":
    main()
