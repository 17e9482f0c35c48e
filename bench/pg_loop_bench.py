"""Full-loop benchmark on PostgreSQL: errands with 1, 2 and 4 ``errands worker``
processes, DBOS Transact on the same server, a bare psycopg batched-insert baseline,
and the SQLite full loop (bench/loop_bench.py) for reference -- side by side, one run.

The workload is loop_bench's: each errand takes 10 steps (a scripted model turn with a
tool call to ``note``, then the tool) and one closing answer; every model turn sleeps
200 ms, so the ideal wall time is 11 x 200 ms = 2.2 s whatever N is.

- **errands on PostgreSQL**: a throw-away server (tests/helpers/postgres.py: Debian's
  binaries, ``initdb`` in a temporary directory, a Unix socket), a fresh database per case.
  K real ``errands worker`` processes (``ERRANDS_STORE_URL``; this module is their
  ``[tools] modules``, for ``note``) are started and serving first; then the bench creates
  the N errands (the workers are woken by NOTIFY) and waits until all are ``done``.
  Wall time: from the first create to the last errand's ``updated_at``. CPU: every worker
  process (psutil), and the PostgreSQL server's processes. Commits and rows:
  ``pg_stat_database`` (``xact_commit``, ``tup_inserted + tup_updated + tup_deleted``) of the
  case's database, creation included.
- **DBOS Transact** (the ``bench`` extra) in a process of its own on a database of the same
  server: a workflow of 10 ``@DBOS.step``s (async, each ``asyncio.sleep(0.2)``) and a
  closing step (the same 200 ms), N started at once with ``DBOS.start_workflow_async``.
- **bare psycopg**: one connection ``executemany``-ing rows of the errands run's event
  sizes, N rows a transaction, for a few seconds; steps/s = rows/s / events per step.
- **SQLite**: ``loop_bench.run_case("errands", "throughput", N)`` in a child process.

    python bench/pg_loop_bench.py            # N=1,000, 3 rounds (alternating)
    python bench/pg_loop_bench.py --quick    # N=200, 1 round

Results: a table, and ``bench/results/pg_loop_bench.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "pg_loop_bench.json"
STEPS = 10
LATENCY_MS = 200.0


def _tools() -> Any:
    from loop_bench import bench_registry

    return bench_registry()


if __name__ != "__main__" and os.environ.get("PG_LOOP_BENCH_WORKER"):
    errands_tools = _tools()  # a worker's ``[tools] modules``: the bench's ``note``


# ------------------------------------------------------------------------ helpers


def _pg_stat(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted"
            " FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return {"commits": row[0], "inserted": row[1], "updated": row[2], "deleted": row[3]}


def _pg_cpu(data: Path) -> float:
    """CPU seconds of the PostgreSQL server's processes (the postmaster and its children,
    the ended ones included as far as the kernel counts them: children's times)."""
    import psutil

    pid = int((data / "postmaster.pid").read_text().split()[0])
    master = psutil.Process(pid)
    total = sum(master.cpu_times()[:4])  # user, system, children_user, children_system
    for child in master.children():
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def _proc_cpu(pids: list[int]) -> list[float]:
    import psutil

    out = []
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(float("nan"))
    return out


def _worker_home(root: Path, name: str, tools: bool = True) -> Path:
    home = root / f"home-{name}"
    home.mkdir(mode=0o700, parents=True)
    modules = '["pg_loop_bench"]' if tools else "[]"
    (home / "errands.toml").write_text(f"[tools]\nmodules = {modules}\nsearch_budget_tokens = 0\n")
    return home


def _env(home: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "ERRANDS_HOME": str(home),
        "ERRANDS_STORE_URL": url,
        "PYTHONPATH": str(HERE),
        "PG_LOOP_BENCH_WORKER": "1",
    }


# ------------------------------------------------------------ errands on PostgreSQL


def errands_pg(server: Any, workers: int, n: int, root: Path) -> dict[str, Any]:
    from loop_bench import TASK, write_script

    url = server.url(server.new_database())
    case = Path(tempfile.mkdtemp(prefix=f"pg{workers}-", dir=root))
    script = write_script(case / "bench-script.json", STEPS, LATENCY_MS)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for k in range(workers):
            home = _worker_home(case, f"w{k}")
            log = open(home / "worker.log", "wb")  # noqa: SIM115 (closed below)
            logs.append((home / "worker.log", log))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "errands", "worker", "--name", f"w{k}"],
                    env=_env(home, url),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 120
        while not all(b"serving" in p.read_bytes() for p, _ in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("a worker did not start:\n" + logs[0][0].read_text()[-3000:])
            time.sleep(0.05)
        pids = [p.pid for p in procs]
        cpu0, pg0, stat0 = _proc_cpu(pids), _pg_cpu(server.data), _pg_stat(url)
        admin = _worker_home(case, "admin", tools=False)
        t0, created = asyncio.run(_create(admin, url, n, f"scripted:{script}", TASK))
        done_at = _wait_done(url, n, timeout=600)
        cpu1, pg1 = _proc_cpu(pids), _pg_cpu(server.data)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for _, log in logs:
            log.close()
    time.sleep(1.2)  # (the server's statistics are flushed at most once a second)
    stat1 = _pg_stat(url)
    sizes = _event_sizes(url)
    wall = done_at - t0
    total = n * STEPS
    cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    commits = stat1["commits"] - stat0["commits"]
    rows = sum(stat1[k] - stat0[k] for k in ("inserted", "updated", "deleted"))
    return {
        "system": f"errands pg x{workers}",
        "workers": workers,
        "n": n,
        "wall_s": wall,
        "create_s": created,
        "steps_per_s": total / wall,
        "cpu_us_per_step": sum(cpu) / total * 1e6,
        "cpu_us_per_step_by_process": [c / total * 1e6 for c in cpu],
        "pg_cpu_us_per_step": (pg1 - pg0) / total * 1e6,
        "commits_per_s": commits / wall,
        "rows_per_step": rows / total,
        "inserts_per_step": (stat1["inserted"] - stat0["inserted"]) / total,
        "events_per_step": sizes["events"] / total,
        "event_bytes": sizes["bytes"],
        "done": _count_done(url),
    }


async def _create(home: Path, url: str, n: int, model: str, task: str) -> tuple[float, float]:
    """Create *n* errands (concurrently: the store's group commit); (start, seconds)."""
    os.environ["ERRANDS_STORE_URL"] = url
    from errands.config import load_settings
    from errands.harness import build

    harness = build(load_settings(home), builtins=False)
    harness.store.share_writes()
    try:
        t0 = time.time()
        await asyncio.gather(*(harness.create(task, model=model) for _ in range(n)))
        return t0, time.time() - t0
    finally:
        await harness.close()
        del os.environ["ERRANDS_STORE_URL"]


def _wait_done(url: str, n: int, timeout: float) -> float:
    """Wait until *n* errands are done; the last one's ``updated_at`` (wall clock)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'done'), count(*)"
                " FILTER (WHERE state IN ('failed', 'cancelled')), max(updated_at) FROM errands"
            ).fetchone()
            assert row is not None
            if row[0] + row[1] >= n:
                return float(row[2])
            if time.monotonic() > deadline:
                raise SystemExit(f"only {row[0]} of {n} errands done after {timeout} s")
            time.sleep(0.2)


def _count_done(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM errands WHERE state = 'done'").fetchone()
    return int(row[0]) if row else 0


def _event_sizes(url: str) -> dict[str, Any]:
    """The events the run wrote: how many, and their body sizes (for the baseline)."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT type, length(body) FROM events").fetchall()
    return {"events": len(rows), "bytes": [int(r[1]) for r in rows[:2000]]}


# ----------------------------------------------------------------- the bare baseline


def baseline(
    url: str, n: int, sizes: list[int], events_per_step: float, seconds: float
) -> dict[str, Any]:
    """One connection appending rows of *sizes* in transactions of *n* rows."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bare (errand_id TEXT, seq BIGINT, type TEXT,"
            " at DOUBLE PRECISION, body TEXT, PRIMARY KEY (errand_id, seq))"
        )
        conn.commit()
        bodies = ["x" * s for s in sizes] or ["x" * 300]
        seq = rows = commits = 0
        t0 = time.monotonic()
        stop = t0 + seconds
        while time.monotonic() < stop:
            seq += 1
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO bare VALUES (%s, %s, %s, %s, %s)",
                    [
                        (f"e{i}", seq, "tool_result", time.time(), bodies[(seq + i) % len(bodies)])
                        for i in range(n)
                    ],
                )
            conn.commit()
            rows += n
            commits += 1
        wall = time.monotonic() - t0
        conn.execute("DROP TABLE bare")
        conn.commit()
    return {
        "system": "bare psycopg",
        "n": n,
        "wall_s": wall,
        "rows_per_s": rows / wall,
        "commits_per_s": commits / wall,
        "steps_per_s": rows / wall / events_per_step,
        "events_per_step": events_per_step,
    }


# ---------------------------------------------------------------------- DBOS Transact


def dbos_child(url: str, n: int) -> None:
    """(In a child process.) N workflows of 10 steps and a closing step, at once."""
    import psutil
    from dbos import DBOS

    latency = LATENCY_MS / 1000.0

    @DBOS.step()
    async def tool_step(k: int) -> str:
        await asyncio.sleep(latency)  # the model's turn
        return f"noted: {k}"  # the tool's result

    @DBOS.step()
    async def closing() -> str:
        await asyncio.sleep(latency)
        return "Done: noted the listings that match."

    @DBOS.workflow()
    async def errand() -> str:
        for k in range(STEPS):
            await tool_step(k)
        return await closing()

    DBOS(config={"name": "pgloopbench", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()

    async def go() -> tuple[float, float, int]:
        me = psutil.Process()
        c0 = sum(me.cpu_times()[:2])
        t0 = time.monotonic()
        handles = await asyncio.gather(*(DBOS.start_workflow_async(errand) for _ in range(n)))
        results = await asyncio.gather(*(h.get_result() for h in handles))
        wall = time.monotonic() - t0
        return wall, sum(me.cpu_times()[:2]) - c0, sum(1 for r in results if r.startswith("Done"))

    stat0 = _pg_stat(url)
    wall, cpu, done = asyncio.run(go())
    DBOS.destroy()
    time.sleep(1.2)
    stat1 = _pg_stat(url)
    total = n * STEPS
    print(
        json.dumps(
            {
                "system": "DBOS",
                "n": n,
                "wall_s": wall,
                "steps_per_s": total / wall,
                "cpu_us_per_step": cpu / total * 1e6,
                "commits_per_s": (stat1["commits"] - stat0["commits"]) / wall,
                "rows_per_step": sum(
                    stat1[k] - stat0[k] for k in ("inserted", "updated", "deleted")
                )
                / total,
                "inserts_per_step": (stat1["inserted"] - stat0["inserted"]) / total,
                "done": done,
            }
        )
    )


def dbos(server: Any, n: int) -> dict[str, Any]:
    import psycopg

    name = "dbos_" + os.urandom(6).hex()
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = server.url(name)
    pg0 = _pg_cpu(server.data)
    out = _child(["--dbos-child", url, str(n)])
    out["pg_cpu_us_per_step"] = (_pg_cpu(server.data) - pg0) / (n * STEPS) * 1e6
    return out


def sqlite_child(n: int) -> None:
    from loop_bench import run_case

    from errands.engine.runtime import tune_gc

    tune_gc()
    r = run_case("errands", "throughput", n, LATENCY_MS, Path(tempfile.gettempdir()))
    print(
        json.dumps(
            {
                "system": "errands sqlite",
                "n": n,
                "wall_s": r.wall_s,
                "steps_per_s": r.steps_per_s,
                "cpu_us_per_step": r.cpu_us_per_step,
                "commits_per_s": r.commits_per_s,
                "events_per_step": r.extra["events_per_step"],
                "done": r.done,
            }
        )
    )


def _child(args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------- reporting

COLUMNS = (
    ("system", "system", "{}"),
    ("N", "n", "{:,}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("steps/s", "steps_per_s", "{:,.0f}"),
    ("CPU µs/step (client procs)", "cpu_us_per_step", "{:,.0f}"),
    ("PG CPU µs/step", "pg_cpu_us_per_step", "{:,.0f}"),
    ("commits/s", "commits_per_s", "{:,.0f}"),
    ("rows/step", "rows_per_step", "{:.1f}"),
    ("done", "done", "{}"),
)


def _cells(r: dict[str, Any]) -> list[str]:
    out = []
    for _, key, fmt in COLUMNS:
        v = r.get(key)
        out.append("-" if v is None else fmt.format(v))
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|---|" + "---:|" * (len(COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median steps/s (its other figures with it), and every run's steps/s."""
    ordered = sorted(runs, key=lambda r: r["steps_per_s"])
    mid = dict(ordered[len(ordered) // 2])
    mid["steps_per_s_runs"] = [round(r["steps_per_s"], 1) for r in runs]
    return mid


def _round(
    server: Any,
    workers: list[int],
    n: int,
    dbos_n: int,
    root: Path,
    note: Any,
) -> None:
    """One round: errands with each worker count (the bare baseline after the first),
    then DBOS, then SQLite."""
    for k in workers:
        r = errands_pg(server, k, n, root)
        sizes = r.pop("event_bytes")
        note(r)
        if k == workers[0]:
            base_url = server.url(server.new_database())
            note(baseline(base_url, n, sizes, r["events_per_step"], 3.0))
    note(dbos(server, dbos_n))
    note(_child(["--sqlite-child", str(n)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=200, one round")
    parser.add_argument("--n", type=int, help="errands (default 1,000; quick 200)")
    parser.add_argument("--dbos-n", type=int, help="DBOS workflows (default: N)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3; quick 1)")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dbos-child", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--sqlite-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.dbos_child:
        dbos_child(args.dbos_child[0], int(args.dbos_child[1]))
        return
    if args.sqlite_child:
        sqlite_child(args.sqlite_child)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.postgres import server as pg_server

    n = args.n or (200 if args.quick else 1000)
    dbos_n = args.dbos_n or n
    rounds = args.rounds or (1 if args.quick else 3)
    started = time.perf_counter()
    load0 = os.getloadavg()
    server = pg_server()
    root = Path(tempfile.mkdtemp(prefix="pg-loop-bench-"))
    runs: dict[str, list[dict[str, Any]]] = {}

    def note(r: dict[str, Any]) -> None:
        runs.setdefault(r["system"], []).append(r)
        print(
            f"{r['system']:>16} N={r['n']:<5} {r['wall_s']:7.2f} s {r['steps_per_s']:8,.0f} steps/s"
            f"  CPU {r.get('cpu_us_per_step', 0):6,.0f} µs/step  load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )

    try:
        for _ in range(rounds):
            _round(server, args.workers, n, dbos_n, root, note)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the workers' homes (the server: at exit)
    rows = [_median(v) for v in runs.values()]
    by = {r["system"]: r for r in rows}
    one, two = by.get("errands pg x1"), by.get("errands pg x2")
    targets: dict[str, Any] = {}
    if one and two and "bare psycopg" in by:
        ceiling = min(2 * one["steps_per_s"], by["bare psycopg"]["steps_per_s"])
        targets["two_workers_over_min(2x one, baseline) (>= 0.85)"] = round(
            two["steps_per_s"] / ceiling, 3
        )
    if "DBOS" in by:
        best = max(
            (r for r in rows if r["system"].startswith("errands pg")),
            key=lambda r: r["steps_per_s"],
        )
        targets[f"{best['system']}_over_DBOS (>= 10)"] = round(
            best["steps_per_s"] / by["DBOS"]["steps_per_s"], 2
        )
        for r in rows:
            if r["system"].startswith("errands"):
                r["x_dbos"] = round(r["steps_per_s"] / by["DBOS"]["steps_per_s"], 2)
    print(markdown(rows))
    for key, value in targets.items():
        print(f"  {key}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "pg_loop_bench",
                "mode": "quick" if args.quick else "full",
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - started, 1),
                "rounds": rounds,
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_avg_start": load0,
                    "load_avg_end": os.getloadavg(),
                },
                "workload": f"{STEPS} tool steps + a closing answer, {LATENCY_MS:g} ms a model turn",
                "targets": targets,
                "rows": rows,
                "runs": runs,
                "markdown": markdown(rows),
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
