"""Full-loop benchmark: errands (harness.build: Runner/Loop/SQLiteStore) vs LangGraph + AsyncSqliteSaver.

A *step* is one model turn plus one tool call, through the same pieces ``errands run``
uses: :class:`~errands.engine.runner.Runner` (leases, ``claim()``), :class:`~errands.engine.loop.Loop`,
a :class:`~errands.tools.tool.FunctionToolset` tool, the policy hook, and
:class:`~errands.store.sqlite.SQLiteStore` on a disk file (WAL, ``synchronous=FULL``).
The model is the scripted model (:class:`~errands.models.scripted.ScriptedModel`,
loaded from a script file as ``scripted:/path/bench.json``) with a simulated latency.
Each errand takes ``steps`` steps (a tool call each) and then one closing answer, so it
makes ``steps + 1`` model calls; *ideal* wall time is ``(steps + 1) x latency`` -- every
errand's model calls back to back with zero harness overhead.

Side by side, the same workload on LangGraph 1.2 with its SQLite checkpointer: a model
node (``asyncio.sleep(latency)`` then an ``AIMessage`` with one tool call) and a tool
node (returns the same text), ``durability="sync"``, ``PRAGMA synchronous=FULL``, one
``graph.ainvoke`` per thread id, all concurrent.

    python bench/loop_bench.py            # full run (6-8 min; LangGraph at N=1,000 is most of it)
    python bench/loop_bench.py --quick    # a short run (< 90 s)
    python bench/loop_bench.py --only errands --n 1000 --latency-ms 0   # one case (profiling)
    python bench/loop_bench.py --gc-threshold 50000   # try a GC setting errands does not use yet

The db files go to ``--dir`` (default: the system temp dir); it must be a real disk,
not tmpfs, or fsync is free and the numbers are fake (the script warns).

Results are printed as a table and written to ``bench/results/loop_bench.json``.
Not part of the test suite (``tests/test_bench_replay.py`` replays its workload).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from probes import disk_bytes, machine_info

from errands.config import Settings, load_settings
from errands.core.events import EffectClass
from errands.core.states import ErrandState
from errands.harness import build
from errands.models.scripted import ScriptedModel, load_script
from errands.policy.hook import PolicyCall, PolicyHook
from errands.tools.toolset import FunctionToolset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "loop_bench.json"
STEPS = 10
LATENCY_MS = 200.0
TASK = "Watch the rental listings and note every two-bedroom under 2,000."
NOTE = "two-bedroom, Elm St 14, 1,850/month, available from June; balcony, no pets"
TOOL_TEXT = f"noted: {NOTE}"
FINAL = "Done: noted the listings that match."


# --------------------------------------------------------------------------- helpers


@dataclass
class Result:
    system: str  # errands | langgraph
    case: str  # throughput | cpu | latency
    errands: int
    steps_per_errand: int
    latency_ms: float
    wall_s: float
    ideal_s: float
    steps: int
    steps_per_s: float
    events_per_s: float  # durable events (errands) / checkpoint+write rows (langgraph)
    commits_per_s: float  # fsyncs
    body_bytes_per_step: float  # serialized event / checkpoint bytes written
    db_bytes_per_step: float  # growth of the database file (after a WAL checkpoint)
    cpu_s: float  # process CPU time, all threads
    cpu_us_per_step: float
    done: int  # errands / threads that finished correctly
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_over_ideal(self) -> float:
        return self.wall_s / self.ideal_s if self.ideal_s else 0.0


class CpuProbe:
    """CPU seconds per thread (main, store writer, the rest) and in the garbage collector
    over a run. Per-thread times need psutil (the ``bench`` extra); without it, only GC."""

    def __init__(self) -> None:
        self.gc_s = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)
        self._before = self._threads()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            self.gc_s += time.thread_time() - self._gc_started

    @staticmethod
    def _threads() -> dict[int, float]:
        try:
            import psutil
        except ImportError:
            return {}
        return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}

    def stop(self) -> dict[str, float]:
        gc.callbacks.remove(self._on_gc)
        after = self._threads()
        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = {"gc (all threads)": self.gc_s}
        for tid, spent in after.items():
            name = names.get(tid, "other")
            key = name if name in ("MainThread", "errands-store-writer") else "other threads"
            out[key] = out.get(key, 0.0) + spent - self._before.get(tid, 0.0)
        return out


def bench_registry() -> FunctionToolset:
    registry = FunctionToolset()

    @registry.tool(effect=EffectClass.write_local, idempotent=True)
    async def note(text: str) -> str:
        """Note a listing that matches.

        Args:
            text: The listing, in one line.
        """
        return f"noted: {text}"

    return registry


def write_script(path: Path, steps: int, latency_ms: float) -> Path:
    turns: list[dict[str, Any]] = [
        {"text": "", "tool_calls": [{"name": "note", "arguments": {"text": NOTE}}]}
        for _ in range(steps)
    ]
    turns.append({"text": FINAL})
    path.write_text(json.dumps({"name": "bench", "latency_ms": latency_ms, "turns": turns}))
    return path


# ------------------------------------------------------------------- errands workload


@dataclass
class Workload:
    """What one errands run left behind, for the replay test."""

    home: Path
    db_path: Path
    errand_ids: list[str]
    result: Result
    policy: str


async def errands_workload(
    home: Path,
    n: int,
    *,
    steps: int = STEPS,
    latency_ms: float = LATENCY_MS,
    case: str = "throughput",
) -> Workload:
    """Create *n* errands, then run them all concurrently through one Runner (timed)."""
    home.mkdir(parents=True, exist_ok=True)
    settings = load_settings(home)
    script = write_script(home / "bench-script.json", steps, latency_ms)
    spec = f"scripted:{script}"
    loaded = load_script(str(script))
    # wired as the CLI and the server wire it (errands.harness.build): the home's store with
    # the secret redactor, the default policy.toml; only the tools and the model are the bench's
    registry = bench_registry()
    harness = build(
        settings,
        toolsets=[registry],
        builtins=False,
        models=lambda s: ScriptedModel(loaded, name=s, latency_ms=latency_ms),
    )
    store = harness.store
    policy_name = "errands.policy.rules.load_policy (default policy.toml)"
    # OpenTelemetry, as errands up starts it: on only with OTEL_EXPORTER_OTLP_ENDPOINT set
    # (docs/observability.md measures the loop with it off and on)
    telemetry = harness.observe()
    try:
        ids = list(await asyncio.gather(*(harness.create(TASK, model=spec) for _ in range(n))))
        _check_policy_allows(harness.policy, registry, settings, ids[0])
        runner = harness.runner()
        size0 = await asyncio.to_thread(disk_bytes, settings.db_path)
        s0 = (store.stats.commits, store.stats.events, store.stats.bytes)
        gc.collect()
        probe = CpuProbe()
        c0, t0 = time.process_time(), time.perf_counter()
        if n == 1:
            await runner.run_errand(ids[0])  # the `errands run` path
        else:
            await runner.claim(limit=n)  # the `errands serve` path: claim all, run all
            await runner.wait_idle()
        if telemetry is not None:  # (what the run committed, read and exported: its cost too)
            await telemetry.flush()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        by_thread = probe.stop()
        commits = store.stats.commits - s0[0]
        events = store.stats.events - s0[1]
        body = store.stats.bytes - s0[2]
        states = [v.state for v in await store.list_errands(limit=n + 1)]
    finally:
        if telemetry is not None:
            await telemetry.close()
        await harness.close()
    size1 = await asyncio.to_thread(disk_bytes, settings.db_path)
    done = sum(1 for s in states if s is ErrandState.done)
    total = n * steps
    result = Result(
        system="errands",
        case=case,
        errands=n,
        steps_per_errand=steps,
        latency_ms=latency_ms,
        wall_s=wall,
        ideal_s=(steps + 1) * latency_ms / 1000.0,
        steps=total,
        steps_per_s=total / wall,
        events_per_s=events / wall,
        commits_per_s=commits / wall,
        body_bytes_per_step=body / total,
        db_bytes_per_step=(size1 - size0) / total,
        cpu_s=cpu,
        cpu_us_per_step=cpu / total * 1e6,
        done=done,
        extra={
            "policy": policy_name,
            "cpu_us_per_step_by_thread": {k: v / total * 1e6 for k, v in by_thread.items()},
            "events_per_step": events / total,
            "events_per_commit": events / max(commits, 1),
        },
    )
    return Workload(home, settings.db_path, ids, result, policy_name)


def _check_policy_allows(
    policy: PolicyHook, registry: FunctionToolset, settings: Settings, errand_id: str
) -> None:
    from errands.core.labels import BOTTOM

    tool = registry.get("note")
    args = tool.validate({"text": NOTE})
    verdict = policy.check(
        PolicyCall(
            errand_id=errand_id,
            tool="note",
            arguments=args,
            effect=tool.effect(args),
            workspace=settings.workspaces / errand_id,
            context=BOTTOM,
            roles=tool.arg_roles,
        )
    )
    if verdict.decision.value != "allow":
        raise SystemExit(f"the policy does not allow the bench tool: {verdict}")


# ----------------------------------------------------------------- LangGraph workload


async def langgraph_workload(
    directory: Path,
    n: int,
    *,
    steps: int = STEPS,
    latency_ms: float = LATENCY_MS,
    case: str = "throughput",
) -> Result:
    """The same workload on LangGraph + AsyncSqliteSaver, ``durability="sync"``."""
    import aiosqlite
    from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages
    from typing_extensions import TypedDict

    # functional form: the annotation is evaluated here, not from module globals
    State = TypedDict("State", {"messages": Annotated[list[AnyMessage], add_messages]})  # noqa: UP013

    latency = latency_ms / 1000.0

    async def model(state: Any) -> dict[str, Any]:
        if latency:
            await asyncio.sleep(latency)
        k = sum(1 for m in state["messages"] if isinstance(m, AIMessage))
        if k < steps:
            call = {"name": "note", "args": {"text": NOTE}, "id": f"call_{k}_0"}
            return {"messages": [AIMessage(content="", tool_calls=[call])]}
        return {"messages": [AIMessage(content=FINAL)]}

    async def tools(state: Any) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        return {
            "messages": [
                ToolMessage(
                    content=f"noted: {c['args']['text']}", tool_call_id=c["id"], name=c["name"]
                )
                for c in last.tool_calls
            ]
        }

    def route(state: Any) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    builder = StateGraph(State)
    builder.add_node("model", model)
    builder.add_node("tools", tools)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route, ["tools", END])
    builder.add_edge("tools", "model")

    path = directory / f"langgraph-{case}-{n}.db"
    commits = 0
    async with aiosqlite.connect(str(path)) as conn:
        await conn.execute("PRAGMA synchronous=FULL")
        saver = AsyncSqliteSaver(conn)
        await saver.setup()  # sets journal_mode=WAL
        sync_mode = (await (await conn.execute("PRAGMA synchronous")).fetchone() or [None])[0]
        journal = (await (await conn.execute("PRAGMA journal_mode")).fetchone() or [None])[0]
        real_commit = conn.commit

        async def counting_commit() -> None:
            nonlocal commits
            commits += 1
            await real_commit()

        conn.commit = counting_commit  # type: ignore[method-assign]
        graph = builder.compile(checkpointer=saver)
        size0 = await asyncio.to_thread(disk_bytes, path)

        async def one(i: int) -> bool:
            out = await graph.ainvoke(
                {"messages": [HumanMessage(content=TASK)]},
                config={"configurable": {"thread_id": f"thread-{i}"}, "recursion_limit": 1000},
                durability="sync",
            )
            msgs = out["messages"]
            tools_done = sum(1 for m in msgs if isinstance(m, ToolMessage))
            return tools_done == steps and msgs[-1].content == FINAL

        gc.collect()
        probe = CpuProbe()
        c0, t0 = time.process_time(), time.perf_counter()
        oks = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        by_thread = probe.stop()
        rows = 0
        body = 0
        for table, col in (("checkpoints", "checkpoint"), ("writes", "value")):
            cur = await conn.execute(
                f"SELECT count(*), coalesce(sum(length({col})), 0) FROM {table}"
            )
            r = await cur.fetchone()
            assert r is not None
            rows += int(r[0])
            body += int(r[1])
    size1 = await asyncio.to_thread(disk_bytes, path)
    total = n * steps
    return Result(
        system="langgraph",
        case=case,
        errands=n,
        steps_per_errand=steps,
        latency_ms=latency_ms,
        wall_s=wall,
        ideal_s=(steps + 1) * latency,
        steps=total,
        steps_per_s=total / wall,
        events_per_s=rows / wall,
        commits_per_s=commits / wall,
        body_bytes_per_step=body / total,
        db_bytes_per_step=(size1 - size0) / total,
        cpu_s=cpu,
        cpu_us_per_step=cpu / total * 1e6,
        done=sum(oks),
        extra={
            "cpu_us_per_step_by_thread": {k: v / total * 1e6 for k, v in by_thread.items()},
            "synchronous": sync_mode,
            "journal_mode": journal,
            "durability": "sync",
            "rows_per_step": rows / total,
            "commits_per_step": commits / total,
        },
    )


# ------------------------------------------------------------------------ reporting


HEADERS = (
    "system",
    "case",
    "N",
    "lat ms",
    "steps",
    "wall s",
    "ideal s",
    "wall/ideal",
    "steps/s",
    "events/s",
    "fsyncs/s",
    "body B/step",
    "db B/step",
    "CPU µs/step",
    "done",
)


def _cells(r: Result) -> tuple[str, ...]:
    return (
        r.system,
        r.case,
        f"{r.errands:,}",
        f"{r.latency_ms:g}",
        f"{r.steps:,}",
        f"{r.wall_s:.2f}",
        f"{r.ideal_s:.2f}" if r.ideal_s else "-",
        f"{r.wall_over_ideal:.2f}" if r.ideal_s else "-",
        f"{r.steps_per_s:,.0f}",
        f"{r.events_per_s:,.0f}",
        f"{r.commits_per_s:,.0f}",
        f"{r.body_bytes_per_step:,.0f}",
        f"{r.db_bytes_per_step:,.0f}",
        f"{r.cpu_us_per_step:,.0f}",
        f"{r.done}/{r.errands}",
    )


def print_table(rows: list[Result]) -> None:
    cells = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADERS)]
    print("  ".join(h.rjust(w) for h, w in zip(HEADERS, widths, strict=True)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))
    for r in rows:
        split = r.extra.get("cpu_us_per_step_by_thread")
        if split and r.case != "latency":
            parts = ", ".join(f"{k} {v:,.0f}" for k, v in split.items())
            print(
                f"{r.system} N={r.errands:,} lat={r.latency_ms:g}: CPU µs/step by thread: {parts}"
            )
    pairs = {(r.errands, r.latency_ms): r for r in rows if r.system == "langgraph"}
    for r in rows:
        lg = pairs.get((r.errands, r.latency_ms))
        if r.system == "errands" and lg is not None and r.case == lg.case:
            print(
                f"N={r.errands:,}: errands {r.steps_per_s:,.0f} steps/s vs LangGraph "
                f"{lg.steps_per_s:,.0f} -> {r.steps_per_s / lg.steps_per_s:.1f}x"
            )


def markdown_table(rows: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---:|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def targets(rows: list[Result]) -> dict[str, Any]:
    def find(system: str, case: str, n: int) -> Result | None:
        for r in rows:
            if (r.system, r.case, r.errands) == (system, case, n):
                return r
        return None

    out: dict[str, Any] = {}
    e1k, lg1k = find("errands", "throughput", 1000), find("langgraph", "throughput", 1000)
    if e1k:
        out["wall_over_ideal_1000 (<= 1.25)"] = round(e1k.wall_over_ideal, 3)
        out["wall_over_10_x_latency_1000 (<= 1.25)"] = round(
            e1k.wall_s / (e1k.steps_per_errand * e1k.latency_ms / 1000), 3
        )
        out["steps_per_s_1000 (>= 4000)"] = round(e1k.steps_per_s)
        if lg1k:
            out["x_langgraph_1000 (>= 15)"] = round(e1k.steps_per_s / lg1k.steps_per_s, 1)
    cpu = find("errands", "cpu", 1000)
    if cpu:
        out["cpu_us_per_step_1000 (<= 150)"] = round(cpu.cpu_us_per_step, 1)
    e5k = find("errands", "throughput", 5000)
    if e5k:
        out["steps_per_s_5000 (stretch >= 10000)"] = round(e5k.steps_per_s)
    return out


# ----------------------------------------------------------------------------- main


def run_case(system: str, case: str, n: int, latency_ms: float, base: Path) -> Result:
    directory = Path(tempfile.mkdtemp(prefix=f"{system}-{case}-{n}-", dir=base))
    try:
        if system == "errands":
            if case == "latency":
                return asyncio.run(_latency(directory, latency_ms))
            return asyncio.run(
                errands_workload(directory, n, latency_ms=latency_ms, case=case)
            ).result
        return asyncio.run(langgraph_workload(directory, n, latency_ms=latency_ms, case=case))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        gc.collect()


async def _latency(directory: Path, latency_ms: float, repeats: int = 5) -> Result:
    """One errand alone, run in the foreground (``errands run``), several times."""
    runs = [
        (
            await errands_workload(directory / f"r{i}", 1, latency_ms=latency_ms, case="latency")
        ).result
        for i in range(repeats)
    ]
    best = sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]  # the median run
    best.extra["per_step_ms_runs"] = [round(r.wall_s / r.steps * 1000, 3) for r in runs]
    best.extra["per_step_ms_median"] = statistics.median(best.extra["per_step_ms_runs"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N (< 90 s in all)")
    parser.add_argument("--dir", type=Path, help="where the db files go (a disk, not tmpfs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", choices=("errands", "langgraph"), help="run one case only")
    parser.add_argument("--n", type=int, default=1000, help="errands for --only")
    parser.add_argument("--latency-ms", type=float, default=LATENCY_MS, help="for --only")
    parser.add_argument("--no-langgraph", action="store_true")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        help="try gc.set_threshold(N, 20, 20) instead of errands' own runtime.tune_gc()",
    )
    parser.add_argument(
        "--default-gc", action="store_true", help="keep Python's default GC settings"
    )
    args = parser.parse_args()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, 20, 20)
    elif not args.default_gc:
        from errands.engine.runtime import tune_gc

        tune_gc()  # as the errands CLI and server run (both systems share this process)

    base = args.dir or Path(tempfile.gettempdir())
    info = machine_info(base, ("langgraph", "langgraph-checkpoint-sqlite", "aiosqlite"))
    if "tmpfs" in info["filesystem"]:
        print(
            f"warning: {base} is tmpfs; fsync is free there and the numbers are fake",
            file=sys.stderr,
        )
    plan: list[tuple[str, str, int, float]]
    if args.only:
        plan = [
            (args.only, "cpu" if args.latency_ms == 0 else "throughput", args.n, args.latency_ms)
        ]
    else:
        small = (50, 200) if args.quick else (100, 1000)
        large = () if args.quick else (5000,)
        plan = []
        for n in small:
            plan.append(("errands", "throughput", n, LATENCY_MS))
            if not args.no_langgraph:
                plan.append(("langgraph", "throughput", n, LATENCY_MS))
        plan += [("errands", "throughput", n, LATENCY_MS) for n in large]
        plan.append(("errands", "cpu", small[-1], 0.0))
        plan.append(("errands", "latency", 1, 0.0))
        if not args.no_langgraph:
            plan.append(("langgraph", "latency", 1, 0.0))

    rows: list[Result] = []
    started = time.perf_counter()
    for system, case, n, latency in plan:
        r = run_case(system, case, n, latency, base)
        rows.append(r)
        print(
            f"{system:>9} {case:>10} N={n:<5} {r.wall_s:7.2f} s  {r.steps_per_s:8,.0f} steps/s  "
            f"{r.cpu_us_per_step:6,.0f} µs CPU/step  done {r.done}/{n}",
            file=sys.stderr,
            flush=True,
        )
    print_table(rows)
    met = targets(rows)
    for key, value in met.items():
        print(f"  {key}: {value}")
    if args.only:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "loop_bench",
                "mode": "quick" if args.quick else "full",
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - started, 1),
                "machine": {**info, "load_avg_at_end": os.getloadavg()},
                "workload": {
                    "steps_per_errand": STEPS,
                    "model_calls_per_errand": STEPS + 1,
                    "ideal": "(steps + 1) x model latency: every model call back to back",
                    "errands": "Runner.claim() + wait_idle() (N=1: Runner.run_errand), "
                    "SQLiteStore WAL synchronous=FULL, scripted model, async tool 'note'",
                    "langgraph": "StateGraph(model, tools) + AsyncSqliteSaver, "
                    "durability='sync', PRAGMA synchronous=FULL, one ainvoke per thread",
                },
                "gc_threshold": gc.get_threshold(),
                "targets": met,
                "rows": [{**asdict(r), "wall_over_ideal": r.wall_over_ideal} for r in rows],
                "markdown": markdown_table(rows),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
