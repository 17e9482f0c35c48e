"""Server benchmark: the API of a real `errands up` under load.

The workload (defaults): 1,000 errands waiting for approval, and 200 errands running
against a scripted model with 200 ms latency (a ``list_files`` call every turn, for
the whole measurement). The store is seeded first, in this process, through the same
Runner the server uses; then ``errands up`` starts as a subprocess, claims the 200
runnable errands, and serves the API while they run. Measured, from one sequential
client (a person at the inbox):

- start-up: from spawning ``errands up`` to the first HTTP 200 (``/api/health``);
- latency (p50/p95/p99/max) of ``GET /api/errands`` (the list), ``GET /api/approvals``
  (the whole queue), ``GET /api/errands/{id}``, and ``POST .../approve`` (500 of the
  waiting approvals; each approved errand then runs its POST to a local endpoint);
- the server's RSS after start-up and at the end, and how many model turns the
  running errands made while the API was measured.

    python bench/server_bench.py             # the full workload
    python bench/server_bench.py --quick     # 200 waiting, 50 running (< 1 min)

Prints a table; writes ``bench/results/server_bench.json`` with a machine description.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
from probes import machine_info

from errands.config import load_settings
from errands.harness import build

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "server_bench.json"
TARGET_P99_MS = 50.0


class _Quiet(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def endpoint() -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def write_script(path: Path, turns: list[dict[str, Any]], latency_ms: float) -> str:
    path.write_text(json.dumps({"name": path.stem, "latency_ms": latency_ms, "turns": turns}))
    return f"scripted:{path}"


async def seed(home: Path, sink: str, waiting: int, running: int, turns: int) -> None:
    """*waiting* errands run until they wait for approval; *running* errands queued."""
    settings = load_settings(home)
    post = {"name": "http_request", "arguments": {"method": "POST", "url": f"{sink}/done"}}
    wait_spec = write_script(
        home.parent / "wait.json",
        [{"text": "Posting it.", "tool_calls": [post]}, {"text": "Posted."}],
        0,
    )
    work = {"text": "Looking.", "tool_calls": [{"name": "list_files", "arguments": {"path": "."}}]}
    run_spec = write_script(home.parent / "run.json", [work] * turns, 200)
    harness = build(settings)  # as errands up wires it
    store = harness.store
    try:
        batch = 100
        for start in range(0, waiting, batch):
            await asyncio.gather(
                *(
                    harness.create(f"waiting errand {i}", model=wait_spec)
                    for i in range(start, min(start + batch, waiting))
                )
            )
        runner = harness.runner()
        await runner.claim()
        await runner.wait_idle()
        pending = len(await store.pending_approvals())
        assert pending == waiting, f"{pending} of {waiting} errands wait for approval"
        for start in range(0, running, batch):
            await asyncio.gather(
                *(
                    harness.create(f"running errand {i}", model=run_spec)
                    for i in range(start, min(start + batch, running))
                )
            )
    finally:
        await harness.close()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "n": len(ordered),
        "p50_ms": round(at(0.50), 2),
        "p95_ms": round(at(0.95), 2),
        "p99_ms": round(at(0.99), 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def timed(client: httpx.Client, method: str, path: str, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    r = client.request(method, path, **kwargs)
    elapsed = time.perf_counter() - t0
    if r.status_code >= 300:
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")
    return elapsed


def model_turns(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(
            conn.execute("SELECT count(*) FROM events WHERE type = 'model_responded'").fetchone()[0]
        )
    finally:
        conn.close()


def cpu_seconds(server: Any) -> float:
    """CPU time of the server and its workers (user + system)."""
    total = 0.0
    for proc in [server, *server.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def run_once(args: argparse.Namespace, sink: str, src: Path | None) -> dict[str, Any]:
    """Seed a new home, start ``errands up`` (from *src*, a tree's ``src`` folder, if
    given: a baseline), measure it; the figures."""
    with tempfile.TemporaryDirectory(prefix="errands-server-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        (home / "errands.toml").write_text('[network]\nallow_private = ["127.0.0.1"]\n')
        t0 = time.perf_counter()
        asyncio.run(seed(home, sink, args.waiting, args.running, turns=2000))
        seeded_s = time.perf_counter() - t0
        print(f"seeded {args.waiting} waiting + {args.running} queued errands in {seeded_s:.1f}s")

        env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
        env["ERRANDS_HOME"] = str(home)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "errands", "up", "--port", "0", "--workers", str(args.workers)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=tmp,
        )
        try:
            url = ""
            while not url:
                with contextlib.suppress(OSError, ValueError):
                    info = json.loads((home / "server.json").read_text())
                    if info.get("pid") == proc.pid:
                        url = info["url"].rstrip("/")
                if proc.poll() is not None:
                    raise RuntimeError((Path(tmp) / "server.log").read_text())
                time.sleep(0.005)
            with httpx.Client(base_url=url, timeout=60) as client:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get("/api/health").status_code == 200:
                            break
                    time.sleep(0.005)
                startup_s = time.perf_counter() - t0
                server = psutil.Process(proc.pid)
                rss_start = server.memory_info().rss
                # let the runner claim and get going
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    running = client.get(
                        "/api/errands", params={"state": "running", "limit": 1000}
                    ).json()
                    if len(running) >= args.running:
                        break
                    time.sleep(0.2)
                time.sleep(2.0)
                turns0, c0, w0 = (
                    model_turns(home / "errands.sqlite"),
                    cpu_seconds(server),
                    time.time(),
                )
                results: dict[str, dict[str, float]] = {}
                results["GET /api/errands"] = percentiles(
                    [timed(client, "GET", "/api/errands") for _ in range(args.requests)]
                )
                results["GET /api/approvals"] = percentiles(  # the whole queue, ~1 KB each
                    [timed(client, "GET", "/api/approvals") for _ in range(args.requests // 10)]
                )
                pending = client.get("/api/approvals").json()
                some = [a["errand_id"] for a in pending[: args.requests]]
                results["GET /api/errands/{id}"] = percentiles(
                    [timed(client, "GET", f"/api/errands/{e}") for e in some]
                )
                results["POST /api/approvals/{id}/approve"] = percentiles(
                    [
                        timed(
                            client,
                            "POST",
                            f"/api/approvals/{a['id']}/approve",
                            json={"args_hash": a["args_hash"]},
                        )
                        for a in pending[: args.approve]
                    ]
                )
                window = time.time() - w0
                c1 = cpu_seconds(server)
                turns = model_turns(home / "errands.sqlite") - turns0
                rss_end = server.memory_info().rss
                still_running = len(
                    client.get("/api/errands", params={"state": "running", "limit": 1000}).json()
                )
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
            log.close()
    worst = max(r["p99_ms"] for k, r in results.items() if k != "GET /api/approvals")
    summary = {
        "workload": {
            "waiting_for_approval": args.waiting,
            "running": args.running,
            "model_latency_ms": 200,
            "approved_during_run": args.approve,
        },
        "startup_to_first_200_s": round(startup_s, 3),
        "seed_s": round(seeded_s, 1),
        "rss_mb_after_startup": round(rss_start / 2**20, 1),
        "rss_mb_at_end": round(rss_end / 2**20, 1),
        "server_cpu_s_during_measurement": round(c1 - c0, 2),
        "workers": args.workers,
        "measurement_window_s": round(window, 1),
        "model_turns_during_measurement": turns,
        "model_turns_per_s": round(turns / window, 1),
        "errands_running_at_end": still_running,
        "latency": results,
        "target_p99_ms": TARGET_P99_MS,
        "list_and_approve_p99_ok": worst < TARGET_P99_MS
        and results["GET /api/errands"]["p99_ms"] < TARGET_P99_MS,
        "tree": str(src) if src is not None else "this checkout",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print()
    print(f"{'request':36} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, r in results.items():
        print(
            f"{name:36} {r['n']:>5} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f}"
        )
    print()
    print(f"start-up (spawn -> first HTTP 200): {summary['startup_to_first_200_s']:.2f} s")
    print(
        f"server RSS: {summary['rss_mb_after_startup']} MB after start-up, "
        f"{summary['rss_mb_at_end']} MB at the end"
    )
    print(
        f"while measuring ({summary['measurement_window_s']} s): "
        f"{turns} model turns by the running errands ({summary['model_turns_per_s']}/s), "
        f"server CPU {summary['server_cpu_s_during_measurement']} s"
    )
    verdict = "met" if summary["list_and_approve_p99_ok"] else "NOT met"
    print(f"target p99 < {TARGET_P99_MS:.0f} ms for list and approve: {verdict}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--running", type=int, default=200)
    parser.add_argument("--approve", type=int, default=500)
    parser.add_argument("--requests", type=int, default=300, help="per read endpoint")
    parser.add_argument("--quick", action="store_true", help="200 waiting, 50 running")
    parser.add_argument(
        "--workers", type=int, default=0, help="errands up --workers N (0: errands run in it)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another tree's src folder (git archive REV src): its errands up is measured "
        "too, run for run alternately with this checkout's (it must know the store's "
        "migrations)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --baseline: pairs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.waiting, args.running, args.approve, args.requests = 200, 50, 100, 100
    sink_server, sink = endpoint()
    info = machine_info(
        Path(tempfile.gettempdir()),
        ("fastapi", "starlette", "uvicorn", "pydantic", "httptools", "uvloop"),
    )
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(args.rounds if args.baseline else 1):
            for src in ([args.baseline.resolve()] if args.baseline else []) + [None]:
                print(f"\n== errands up from {src or 'this checkout'}")
                runs.append(run_once(args, sink, src))
    finally:
        sink_server.shutdown()
    summary = dict(runs[-1])
    summary["machine"] = info
    if args.baseline:
        summary["runs"] = runs  # baseline and this checkout, alternately
        print("\np99 ms, baseline / this checkout, run by run:")
        for name in runs[0]["latency"]:
            pairs = [
                f"{b['latency'][name]['p99_ms']:.1f} / {a['latency'][name]['p99_ms']:.1f}"
                for b, a in zip(runs[::2], runs[1::2], strict=True)
            ]
            print(f"  {name:36} {', '.join(pairs)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
