"""Workers' relay benchmark: a person's decision -> the worker resumes the errand.

A real ``errands up --workers N`` (default 2) on SQLite; *decisions* errands each wait for
the approval of a POST to a local endpoint. Each is approved through the API, one at a
time (0.5 s apart), and the time from the decision's event (``approval_granted``, written
by the server) to the worker's next event for the errand is read from the store (both
are stamped there: no client-side polling in the figure). With ``--baseline SRC`` (a tree
without the relay, e.g. ``git archive REV src``) the same is measured run for run,
alternately. Also: the server's and its workers' CPU while idle (5 s, nothing to run).

    python bench/relay_bench.py --baseline /tmp/base/src --rounds 3

Prints a table; writes ``bench/results/relay_bench.json`` with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psutil
from probes import machine_info
from server_bench import endpoint, write_script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "relay_bench.json"


def start(home: Path, src: Path | None, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    env.update(ERRANDS_HOME=str(home), ERRANDS_NO_KEYRING="1")
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, "-m", "errands", "up", "--port", "0", "--workers", str(workers)]
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            info = json.loads((home / "server.json").read_text())
            if info.get("pid") == proc.pid:
                url = str(info["url"]).rstrip("/")
                if httpx.get(f"{url}/api/health").status_code == 200:
                    return proc, url
        except (OSError, ValueError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("errands up did not start")


def cpu(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds of the server and its workers so far."""
    total = 0.0
    parent = psutil.Process(proc.pid)
    for p in [parent, *parent.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def resumed(home: Path) -> list[float]:
    """Per errand: seconds from its approval_granted event to the next event."""
    with closing(sqlite3.connect(home / "errands.sqlite", timeout=30)) as db:
        rows = db.execute("SELECT errand_id, seq, type, at FROM events ORDER BY errand_id, seq")
        by: dict[str, list[tuple[str, float]]] = {}
        for errand_id, _, kind, at in rows:
            by.setdefault(errand_id, []).append((kind, at))
    gaps = []
    for events in by.values():
        kinds = [k for k, _ in events]
        if "approval_granted" in kinds:
            i = kinds.index("approval_granted")
            if i + 1 < len(events):
                gaps.append(events[i + 1][1] - events[i][1])
    return gaps


def run_once(args: argparse.Namespace, sink: str, src: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        (home / "errands.toml").write_text('[network]\nallow_private = ["127.0.0.1"]\n')
        post = {"name": "http_request", "arguments": {"method": "POST", "url": f"{sink}/p"}}
        spec = write_script(Path(tmp) / "post.json", [{"tool_calls": [post]}, {"text": "ok"}], 0)
        proc, url = start(home, src, args.workers)
        try:
            with httpx.Client(base_url=url, timeout=60) as api:
                time.sleep(3.0)  # (the workers start)
                before = cpu(proc)
                time.sleep(5.0)
                idle = (cpu(proc) - before) / 5.0
                for i in range(args.decisions):
                    api.post("/api/errands", json={"text": f"post {i}", "model": spec})
                deadline = time.monotonic() + 120
                pending: list[dict[str, Any]] = []
                while len(pending) < args.decisions and time.monotonic() < deadline:
                    pending = api.get("/api/approvals").json()
                    time.sleep(0.1)
                for approval in pending:
                    api.post(f"/api/approvals/{approval['id']}/approve", json={})
                    time.sleep(0.5)
                while time.monotonic() < deadline:
                    states = [e["status"] for e in api.get("/api/errands?limit=1000").json()]
                    if states.count("done") >= args.decisions:
                        break
                    time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        gaps = sorted(resumed(home))
    ms = [g * 1000 for g in gaps]
    return {
        "tree": str(src) if src else "this checkout",
        "decisions": len(ms),
        "resume_median_ms": round(statistics.median(ms), 1) if ms else None,
        "resume_p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1) if ms else None,
        "resume_max_ms": round(ms[-1], 1) if ms else None,
        "idle_cpu_percent": round(100 * idle, 1),
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--decisions", type=int, default=8)
    parser.add_argument("--baseline", type=Path, help="another tree's src folder")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sink_server, sink = endpoint()
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(args.rounds):
            for src in ([args.baseline.resolve()] if args.baseline else []) + [None]:
                runs.append(run_once(args, sink, src))
                print(runs[-1], flush=True)
    finally:
        sink_server.shutdown()
    print(f"\n{'tree':<40} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {'idle CPU %':>11}")
    for r in runs:
        print(
            f"{r['tree'][-40:]:<40} {r['resume_median_ms']!s:>10} {r['resume_p90_ms']!s:>8} "
            f"{r['resume_max_ms']!s:>8} {r['idle_cpu_percent']!s:>11}"
        )
    out = {"runs": runs, "machine": machine_info(Path(tempfile.gettempdir()))}
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
