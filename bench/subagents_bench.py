"""Sub-errand fan-out benchmark (issue 22): one parent delegates to 93 children, each
making S model calls with a tool call between each two (``list_files``), then the
parent reads the 93 reports and answers.

Cases:

* ``scripted``: an in-process scripted model answering at once -- what errands itself
  costs per step (loop, store, wake-ups) at this fan-out;
* ``latency``: the same model taking 200 ms a call -- a child's lower bound is S x
  0.2 s and the children run at once, so wall / bound shows the overhead and the
  parallelism;
* ``staggered`` (only with ``--only``): the children end one after another (child k
  answers at its ``1 + k x S / 93``-th call, 50 ms a call), each end waking the parent:
  the ``parent events`` and ``parent sleeps`` columns show what the wakes that find
  children still running add to the parent's log;
* ``ratelimited``: the OpenAI Chat Completions wire simulator over HTTP (``tests/sim``)
  enforcing 6,000 requests and 3M input tokens a minute (a sliding window of
  ``--window`` seconds with the limits scaled to it: the arithmetic is the same),
  errands configured with the same ``rpm`` / ``itpm`` -- every child's calls share the
  endpoint's limiter. The lower bound is the larger of requests / rate and input
  tokens / rate (the tokens as the simulator counts them; a child's conversation grows
  with each step, so the token limit can bind).

A daily budget cap (``[budget] daily_usd``) is set with a price on the model; the
report checks spend <= cap, every child done, the parent's answer assembled (its
report lists all 93), peak RSS (``ru_maxrss``: the simulator's threads are in this
process too) and the most asyncio tasks seen.

    python bench/subagents_bench.py                      # 93 children x 40 calls, all cases
    python bench/subagents_bench.py --steps 160          # the Antigravity scale (~15,000 calls)
    python bench/subagents_bench.py --only scripted latency --steps 160 \
        --out bench/results/subagents_bench_160.json

Results: a table, and ``bench/results/subagents_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers.fanout import CHILD, FanModel, serving, until, with_subagents  # noqa: E402
from probes import machine_info, text_table  # noqa: E402  (bench/ is the script's directory)
from ratelimit_bench import _NoCache, prompt_tokens  # noqa: E402
from sim.core import SimLimits, Turn, call  # noqa: E402
from sim.openai_server import OpenAIChatSim  # noqa: E402

from errands.config import BudgetSettings, Price, ProviderSettings, load_settings  # noqa: E402
from errands.core.events import Limits, ToolCall, ToolResult, Usage  # noqa: E402
from errands.core.states import TERMINAL, ErrandState  # noqa: E402
from errands.engine.operations import create_errand  # noqa: E402
from errands.harness import build  # noqa: E402
from errands.models.protocol import ModelReply  # noqa: E402
from errands.policy.hook import AllowAll  # noqa: E402

RESULTS = HERE / "results" / "subagents_bench.json"
KEY_ENV = "SUBAGENTS_BENCH_KEY"
RPM, TPM = 6000, 3_000_000  # the provider's limits, per minute
PRICE = Price(input=1.0, output=4.0)  # USD per million tokens
CAP_USD = 50.0  # the daily budget cap


class StepSim(OpenAIChatSim):
    """The simulator playing the parent and its children: the parent's first turn
    delegates *n* tasks; a child calls ``list_files`` until its *steps*-th call, which
    answers; the parent's second turn assembles its answer."""

    def __init__(self, n: int, steps: int) -> None:
        super().__init__()
        self.n, self.steps = n, steps

    def last_text(self, body: Any) -> str:
        messages = body["messages"]
        first = next((m for m in messages if m.get("role") == "user"), {})
        asked = sum(1 for m in messages if m.get("role") == "assistant")
        return json.dumps({"first": json.dumps(first.get("content")), "asked": asked})

    def _take_turn(self, last_text: str, *, consume: bool) -> Turn | None:
        seen = json.loads(last_text)
        if CHILD in seen["first"]:
            if seen["asked"] < self.steps - 1:
                return Turn(tool_calls=(call("list_files", {}),), cached_tokens=0)
            return Turn(text="answer: done", cached_tokens=0)
        if seen["asked"] == 0:
            tasks = [{"task": f"{CHILD} {k}", "tools": ["list_files"]} for k in range(self.n)]
            return Turn(tool_calls=(call("delegate", {"tasks": tasks}),), cached_tokens=0)
        return Turn(text="assembled the answers of every sub-errand", cached_tokens=0)


class StaggeredFanModel(FanModel):
    """FanModel whose child ``CHILD k`` answers at its ``1 + k * steps // n``-th call (50 ms
    each): the children end one after another over the run, each end waking the parent
    (its log then shows what a wake that sleeps on costs)."""

    async def complete(self, request: Any, on_text: Any = None) -> Any:
        first = next(m.text for m in request.messages if m.role == "user")
        if CHILD not in first:
            return await super().complete(request, on_text)
        k = int(first[first.index(CHILD) :].split()[1])
        asked = sum(1 for m in request.messages if m.role == "assistant")
        await asyncio.sleep(self.latency)
        usage = Usage(input_tokens=10, output_tokens=5)
        if asked < k * self.child_calls // self.n:
            call = ToolCall(call_id=f"c{asked}", name="list_files", arguments={})
            return ModelReply(tool_calls=[call], usage=usage, model=self.name)
        return ModelReply(text=f"answer of {CHILD} {k}", usage=usage, model=self.name)


@dataclass
class Row:
    case: str
    children: int
    steps: int  # model calls per child
    model_calls: int
    done: int
    parent_done: bool
    parent_read_all: bool
    wall_s: float
    lower_bound_s: float
    ratio: float  # wall / lower bound
    calls_per_s: float
    requests: int  # at the simulator (ratelimited only)
    answered_429: int
    share_429: float
    spend_usd: float
    cap_usd: float
    peak_rss_mb: float
    peak_tasks: int
    parent_events: int  # the parent's log, whole
    parent_sleeps: int  # its sleeping events (a wake that sleeps on used to add one)


async def _watch_tasks(peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], len(asyncio.all_tasks()))
        await asyncio.sleep(0.05)


async def run_case(case: str, n: int, steps: int, window: float, base: Path) -> Row:
    home = Path(tempfile.mkdtemp(prefix=f"sub-{case}-", dir=base))
    sim: StepSim | None = None
    try:
        settings = with_subagents(load_settings(home), max_parallel=n, max_total=max(256, n))
        settings = settings.model_copy(
            update={
                "budget": BudgetSettings(daily_usd=CAP_USD),
                "prices": {"scripted:demo": PRICE, "sim:gpt-sim": PRICE, "gpt-sim": PRICE},
            }
        )
        if case == "ratelimited":
            sim = StepSim(n, steps)
            sim.cache = _NoCache()  # type: ignore[assignment]
            sim.start()
            limiter = sim.enforce_limits(
                SimLimits(
                    requests=round(RPM * window / 60),
                    input_tokens=round(TPM * window / 60),
                    window=window,
                    tokens=prompt_tokens,
                )
            )
            assert limiter is not None
            os.environ[KEY_ENV] = sim.api_key
            endpoint = ProviderSettings(
                kind="openai",
                base_url=sim.base_url,
                api_key_env=KEY_ENV,
                limit_window_seconds=window,
                rpm=RPM,
                itpm=TPM,
                max_attempts=10,
                retry_max_seconds=600,
            )
            settings = settings.model_copy(update={"providers": {"sim": endpoint}})
            harness = build(settings, policy=AllowAll())
            spec = "sim:gpt-sim"
        elif case == "staggered":
            model = StaggeredFanModel(n, child_calls=steps, latency=0.05)
            harness = build(settings, policy=AllowAll(), models=lambda _spec: model)  # type: ignore[arg-type,return-value]
            spec = "scripted:demo"
        else:
            latency = 0.2 if case == "latency" else 0.0
            model = FanModel(n, child_calls=steps, latency=latency)
            harness = build(settings, policy=AllowAll(), models=lambda _spec: model)  # type: ignore[arg-type,return-value]
            spec = "scripted:demo"
        store = harness.store
        peak_tasks, stop = [0], asyncio.Event()
        watcher = asyncio.create_task(_watch_tasks(peak_tasks, stop))
        try:
            # (the children inherit the parent's limits: room for every call)
            limits = Limits(max_steps=steps + 10)
            eid = await create_errand(store, settings, "fan out", model=spec, limits=limits)
            start = time.monotonic()
            async with serving(harness.runner(), poll=0.2):
                parent = await until(store, eid, lambda v: v.state in TERMINAL, timeout=3600)
            wall = time.monotonic() - start
            children = await store.children(eid)
            spend = parent.usage.cost_usd + sum(c.usage.cost_usd for c in children)
            calls = parent.steps + sum(c.steps for c in children)
            logged = [stored.event for stored in await store.read(eid)]
            report = next(
                (
                    e.content.text
                    for e in logged
                    if isinstance(e, ToolResult) and e.tool == "delegate"
                ),
                "",
            )
        finally:
            stop.set()
            await watcher
            await harness.close()
        requests = rejected = 0
        if sim is not None:
            received = [r for r in sim.requests if r.method == "POST"]
            requests, rejected = len(received), sum(1 for r in received if r.status == 429)
            admitted_tokens = sum(t for _, t in limiter.admitted)
            bound = max(len(limiter.admitted) / (RPM / 60), admitted_tokens / (TPM / 60))
        elif case == "latency":
            bound = (steps + 2) * 0.2  # one child's calls, and the parent's two
        elif case == "staggered":
            bound = (steps + 2) * 0.05  # the longest child's calls, and the parent's two
        else:
            bound = 0.0
        return Row(
            case=case,
            children=n,
            steps=steps,
            model_calls=calls,
            done=sum(1 for c in children if c.state is ErrandState.done),
            parent_done=parent.state is ErrandState.done,
            parent_read_all=parent.state is ErrandState.done
            and f"{n} of {n} sub-errands ended" in report,
            wall_s=round(wall, 2),
            lower_bound_s=round(bound, 2),
            ratio=round(wall / bound, 3) if bound else 0.0,
            calls_per_s=round(calls / wall, 1),
            requests=requests,
            answered_429=rejected,
            share_429=round(rejected / requests, 4) if requests else 0.0,
            spend_usd=round(spend, 4),
            cap_usd=CAP_USD,
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            peak_tasks=peak_tasks[0],
            parent_events=len(logged),
            parent_sleeps=sum(1 for e in logged if e.type == "sleeping"),
        )
    finally:
        if sim is not None:
            sim.stop()
        shutil.rmtree(home, ignore_errors=True)


class LoggedFanModel(FanModel):
    """FanModel writing each call it is asked (errand, its place) to a file, flushed:
    what a killed process asked is still counted."""

    def __init__(self, log: Path, n: int, steps: int, latency: float) -> None:
        super().__init__(n, child_calls=steps, latency=latency)
        self.log = open(log, "a", encoding="utf-8")  # noqa: SIM115  (the process's life)

    async def complete(self, request: Any, on_text: Any = None) -> Any:
        k = sum(1 for m in request.messages if m.role == "assistant")
        self.log.write(f"{request.errand_id} {k}\n")
        self.log.flush()
        return await super().complete(request, on_text)


async def worker(home: Path, n: int, steps: int, eid: str) -> None:
    """``--worker``: serve *home*'s store (as ``errands up``) until *eid* has ended."""
    settings = with_subagents(load_settings(home), max_parallel=n, max_total=max(256, n))
    model = LoggedFanModel(home / "calls.log", n, steps, latency=0.05)
    harness = build(settings, policy=AllowAll(), models=lambda _spec: model)  # type: ignore[arg-type,return-value]
    try:
        async with serving(harness.runner(lease_ttl=2.0), poll=0.2):
            await until(harness.store, eid, lambda v: v.state in TERMINAL, timeout=3600)
    finally:
        await harness.close()


def _spawn(home: Path, n: int, steps: int, eid: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(home), str(eid)]
    cmd += ["--children", str(n), "--steps", str(steps)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


async def run_crash(n: int, steps: int, base: Path) -> dict[str, Any]:
    """The fan-out served by a worker process killed with SIGKILL when half the model
    calls are made, then by a fresh one until the parent ends: every child resumes,
    none is made twice, and only a call in flight at the kill is asked again."""
    home = Path(tempfile.mkdtemp(prefix="sub-crash-", dir=base))
    try:
        settings = load_settings(home)
        harness = build(settings, policy=AllowAll())
        eid = await create_errand(
            harness.store,
            settings,
            "fan out",
            model="scripted:demo",
            limits=Limits(max_steps=steps + 10),
        )
        await harness.close()
        total, log = n * steps + 2, home / "calls.log"
        start = time.monotonic()
        first = _spawn(home, n, steps, eid)
        while not log.exists() or log.read_text().count("\n") < total // 2:
            await asyncio.sleep(0.05)
            assert first.poll() is None, "the worker ended before the kill"
        first.send_signal(signal.SIGKILL)
        first.wait()
        at_kill = log.read_text().count("\n")
        second = _spawn(home, n, steps, eid)
        await asyncio.to_thread(second.wait, 3600)
        wall = time.monotonic() - start
        harness = build(settings, policy=AllowAll())
        try:
            parent = await harness.store.view(eid)
            children = await harness.store.children(eid)
            logged = parent.steps + sum(c.steps for c in children)
        finally:
            await harness.close()
        asked = collections.Counter(log.read_text().split("\n")[:-1])
        again = {key: count for key, count in asked.items() if count > 1}
        per_errand = collections.Counter(key.split()[0] for key in again)
        return {
            "case": "crash",
            "children": n,
            "steps": steps,
            "killed_after_calls": at_kill,
            "parent_done": parent.state is ErrandState.done,
            "children_done": sum(1 for c in children if c.state is ErrandState.done),
            "children_made": len(children),
            "distinct_titles": len({c.title for c in children}),
            "model_calls_logged": logged,
            "model_calls_asked": sum(asked.values()),
            "asked_again": sum(again.values()) - len(again),
            "most_asked_again_per_errand": max(per_errand.values(), default=0),
            "wall_s": round(wall, 1),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


HEADERS = [
    "case", "children", "calls/child", "model calls", "done", "wall s", "bound s", "wall/bound",
    "calls/s", "429s", "429 %", "spend $", "peak RSS MB", "peak tasks", "parent events",
    "parent sleeps",
]  # fmt: skip


def table(rows: list[Row]) -> str:
    lines = [
        [
            r.case, str(r.children), str(r.steps), str(r.model_calls),
            f"{r.done}/{r.children}" + ("" if r.parent_read_all else " (parent NOT done)"),
            f"{r.wall_s:.1f}", f"{r.lower_bound_s:.1f}" if r.lower_bound_s else "-",
            f"{r.ratio:.2f}" if r.ratio else "-", f"{r.calls_per_s:.0f}",
            str(r.answered_429) if r.requests else "-",
            f"{100 * r.share_429:.2f}" if r.requests else "-",
            f"{r.spend_usd:.4f}", f"{r.peak_rss_mb:.0f}", str(r.peak_tasks),
            str(r.parent_events), str(r.parent_sleeps),
        ]
        for r in rows
    ]  # fmt: skip
    return text_table(HEADERS, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--children", type=int, default=93)
    parser.add_argument("--steps", type=int, default=40, help="model calls per child")
    parser.add_argument("--window", type=float, default=10.0, help="the simulator's window (s)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["scripted", "latency", "staggered", "ratelimited"],
        default=None,
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--crash", action="store_true", help="also the SIGKILL run")
    parser.add_argument("--worker", nargs=2, metavar=("HOME", "ERRAND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(Path(args.worker[0]), args.children, args.steps, args.worker[1]))
        return
    cases = args.only or ["scripted", "latency", "ratelimited"]
    base = Path(tempfile.gettempdir())
    info = machine_info(base, ("openai", "httpx"))
    info["note"] = "the simulator runs as threads in the same process; the box is shared"
    started = time.monotonic()
    rows = []
    for case in cases:
        row = asyncio.run(run_case(case, args.children, args.steps, args.window, base))
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    crash: dict[str, Any] | None = None
    if args.crash:
        crash = asyncio.run(run_crash(args.children, args.steps, base))
        print(json.dumps(crash))
    info["load_avg_at_end"] = os.getloadavg()
    print()
    print(table(rows))
    targets: dict[str, dict[str, bool]] = {}
    for r in rows:
        checks = {
            "every child done": r.done == r.children,
            "parent answered": r.parent_read_all,
            "spend <= cap": r.spend_usd <= r.cap_usd,
        }
        if r.case == "ratelimited":
            checks["wall <= 1.2x bound"] = r.ratio <= 1.2
            checks["429s < 1%"] = r.share_429 < 0.01
        targets[r.case] = checks
        print(r.case, ", ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in checks.items()))
    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "subagents_bench",
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.monotonic() - started, 1),
                "machine": info,
                "workload": {
                    "children": args.children,
                    "calls_per_child": args.steps,
                    "child": "list_files between each two model calls, then an answer",
                    "window_seconds": args.window,
                    "provider_limits_per_minute": {"requests": RPM, "input_tokens": TPM},
                    "daily_cap_usd": CAP_USD,
                    "store": "SQLiteStore, WAL, synchronous=FULL; the runner serving as "
                    "errands up does (claims, wake-ups)",
                },
                "targets": targets,
                "rows": [asdict(r) for r in rows],
                "crash": crash,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
