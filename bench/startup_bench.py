"""Start-up (issue 17, item 5): how long a person waits for the command line and the server.

Measured from outside, as a person (or a service manager) meets it, each a fresh process:

- ``errands --help`` through the installed entry point (``.venv/bin/errands``), and
  ``python -m errands --help``: wall time to exit;
- ``errands version``: a command that opens nothing;
- ``errands up``: wall time from spawning ``errands --home NEW up --port PORT`` (a new,
  empty home each run; a port found free just before) to the first HTTP 200 from
  ``GET /api/health``, polled every 2 ms over a raw socket (connection refused until the
  server listens); with ``--workers N``, also ``errands up --workers N`` (0: the errands
  run in the server's process);
- how many modules ``errands --help`` imports (``-X importtime``), and the heaviest;
- two anchors, the floors of those figures on this machine in the same run: a bare
  ``python -c pass``, and a bare FastAPI app (one route) under uvicorn to its first 200;
  each errands figure is also given as a ratio to its anchor (the machine is shared: the
  ratios drift less than the seconds).

Each figure is the median of ``--runs`` runs (default 9), with min and max; each also
as CPU seconds (``[CPU]``: user + system, every thread, to the exit or to the first 200;
``[CPU main]``: the main thread's alone, the path to the first answer), which another
program's work on the same cores inflates far less than the wall time.
``--baseline SRC`` measures another source tree too (``git archive REV src | tar -x -C
DIR``, then ``--baseline DIR/src``: put first on ``PYTHONPATH``), run for run
alternately with this checkout, so that both see the same machine: on a shared VM the
figures drift by tens of percent within minutes.

    python bench/startup_bench.py                          # 9 runs of each
    python bench/startup_bench.py --runs 5 --baseline /tmp/before/src
    cp -r src /tmp/after/ && python bench/startup_bench.py --baseline /tmp/before/src \
        --tree /tmp/after/src    # both trees from PYTHONPATH: like with like

A tree given is compiled first (``compileall``): where ``PYTHONDONTWRITEBYTECODE`` is set,
a tree without its ``__pycache__`` compiles every module at every start (~25 ms for
``--help``, ~0.1 s for ``errands up`` on the shared VM). ``--tree`` measures a copy of this
checkout the same way as the baseline.

Prints a table; writes ``bench/results/startup.json`` with a machine description.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probes import machine_info

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "startup.json"
TARGETS_S = {"errands --help": 0.3, "errands up -> first 200": 0.5}


def entry_point() -> str:
    """The installed ``errands`` script beside this interpreter (else the one on PATH)."""
    beside = Path(sys.executable).parent / "errands"
    found = str(beside) if beside.exists() else shutil.which("errands")
    if found is None:
        raise SystemExit("no errands entry point: pip install -e . first")
    return found


def environment(src: str | None) -> dict[str, str]:
    """This environment without ERRANDS_*; *src* (a source tree) first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    env.pop("PYTHONPATH", None)
    if src is not None:
        env["PYTHONPATH"] = src
    return env


# (wall seconds, CPU seconds, the main thread's CPU seconds): the CPU time (user + system)
# drifts far less than the wall time when other work shares the machine's cores; the main
# thread's is the path to the first answer (the work errands up does beside it, on other
# threads -- the tools, the runner -- is in the CPU figure)
Timing = tuple[float, float, float]


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def process_cpu(pid: int, thread: int | None = None) -> float:
    """CPU seconds (user + system) process *pid* has used so far: every thread's, or one
    *thread*'s (its main thread: ``thread=pid``)."""
    where = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(where).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_exit(argv: list[str], src: str | None) -> Timing:
    """Seconds from spawning *argv* to its exit (it must succeed), and its CPU seconds."""
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=environment(src))
    cpu = children_cpu() - cpu0
    return time.perf_counter() - t0, cpu, cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_ok(port: int) -> bool:
    """One ``GET /api/health`` on a new connection: True on a 200; False when nothing
    listens yet, or the answer is not a 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
            s.sendall(
                f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


def timed_up(errands: str, src: str | None, extra: tuple[str, ...] = ()) -> Timing:
    """Seconds from spawning ``errands up`` (with *extra* arguments) on a new home to its
    first 200 on /api/health, and the CPU seconds it had used by then."""
    with tempfile.TemporaryDirectory(prefix="errands-startup-") as tmp:
        home = Path(tmp) / "home"
        port = free_port()
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [errands, "--home", str(home), "up", "--port", str(port), *extra],
            stdout=log,
            stderr=log,
            env=environment(src),
            cwd=tmp,
        )
        try:
            while not health_ok(port):
                if proc.poll() is not None:
                    log.close()
                    raise RuntimeError((Path(tmp) / "server.log").read_text())
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError("errands up did not answer within 60 s")
                time.sleep(0.002)
            elapsed = (
                time.perf_counter() - t0,
                process_cpu(proc.pid),
                process_cpu(proc.pid, proc.pid),
            )
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return elapsed


# the floor of the web stack errands serves with: one route, nothing else
BARE_APP = """
import sys
import uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/api/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
"""


def timed_bare_app(src: str | None) -> Timing:
    """Seconds from spawning a bare FastAPI app (one route) under uvicorn to its first
    200: the anchor for ``errands up`` (the same stack, without errands)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(None),
    )
    try:
        while not health_ok(port):
            if proc.poll() is not None or time.perf_counter() - t0 > 60:
                raise RuntimeError("the bare FastAPI app did not answer")
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        return wall, process_cpu(proc.pid), process_cpu(proc.pid, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def help_imports(src: str | None) -> dict[str, Any]:
    """The modules ``errands --help`` imports, and the ten that cost the most (with
    what they import)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "errands", "--help"],
        check=True,
        capture_output=True,
        text=True,
        env=environment(src),
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        rows.append((int(cumulative), name.strip()))
    heaviest = sorted(rows, reverse=True)[:10]
    return {
        "modules": len(rows),
        "heaviest_cumulative_ms": {name: round(us / 1000, 1) for us, name in heaviest},
    }


def summarise(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(samples), 3),
        "min_s": round(min(samples), 3),
        "max_s": round(max(samples), 3),
        "runs": len(samples),
        "samples_s": [round(x, 3) for x in samples],
    }


# each errands figure over the anchor that is its floor, both medians of the same run
RATIOS = {
    "errands --help / bare python": ("errands --help", "anchor: bare python (-c pass)"),
    "errands up / bare FastAPI app": (
        "errands up -> first 200",
        "anchor: bare FastAPI app -> first 200",
    ),
}


def anchor_ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {
        name: round(results[mine]["median_s"] / results[anchor]["median_s"], 2)
        for name, (mine, anchor) in RATIOS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--baseline", help="another source tree (its src), measured alongside")
    parser.add_argument(
        "--tree",
        help="this checkout's src copied elsewhere, to measure it as the baseline is measured "
        "(a tree on PYTHONPATH starts slower than the installed one: compare like with like)",
    )
    parser.add_argument("--out", default=str(RESULTS), help=f"where to write (default {RESULTS})")
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        default=[],
        help="also time `errands up --workers N` to its first 200 (repeatable; 0: errands "
        "run in the server's process, no worker spawned)",
    )
    args = parser.parse_args()
    errands = entry_point()
    info = machine_info(
        Path(tempfile.gettempdir()), ("typer", "rich", "fastapi", "starlette", "uvicorn")
    )
    trees: dict[str, str | None] = {
        "this checkout": str(Path(args.tree).resolve()) if args.tree else None
    }
    if args.baseline:
        trees["baseline"] = str(Path(args.baseline).resolve())
    measures: dict[str, Callable[[str | None], Timing]] = {
        "errands --help": lambda src: timed_exit([errands, "--help"], src),
        "python -m errands --help": lambda src: timed_exit(
            [sys.executable, "-m", "errands", "--help"], src
        ),
        "errands version": lambda src: timed_exit([errands, "version"], src),
        "errands up -> first 200": lambda src: timed_up(errands, src),
        **{
            f"errands up --workers {n} -> first 200": functools.partial(
                timed_up, errands, extra=("--workers", str(n))
            )
            for n in args.workers
        },
        "anchor: bare FastAPI app -> first 200": timed_bare_app,
        "anchor: bare python (-c pass)": lambda src: timed_exit(
            [sys.executable, "-c", "pass"], None
        ),
    }
    for src in trees.values():  # their bytecode, as the installed checkout has its own
        if src is not None:  # (PYTHONDONTWRITEBYTECODE may be set: a run would compile)
            subprocess.run([sys.executable, "-m", "compileall", "-q", src], check=True)
    samples: dict[str, dict[str, list[float]]] = {
        tree: {row: [] for m in measures for row in (m, f"{m} [CPU]", f"{m} [CPU main]")}
        for tree in trees
    }
    for measure in measures.values():  # warm the file cache and the bytecode
        for src in trees.values():
            measure(src)
    for name, measure in measures.items():
        for _ in range(args.runs):
            for tree, src in trees.items():  # (alternately: both see the same machine)
                wall, cpu, main_cpu = measure(src)
                samples[tree][name].append(wall)
                samples[tree][f"{name} [CPU]"].append(cpu)
                if "first 200" in name:  # (a command that exits: its CPU is one figure)
                    samples[tree][f"{name} [CPU main]"].append(main_cpu)
    results = {
        tree: {name: summarise(runs) for name, runs in by_measure.items() if runs}
        for tree, by_measure in samples.items()
    }
    imports = {tree: help_imports(src) for tree, src in trees.items()}

    for tree in trees:
        where = f" ({trees[tree]})" if trees[tree] else ""
        print(f"\n{tree}{where}")
        print(f"{'measure':46} {'median s':>9} {'min s':>7} {'max s':>7} {'target':>7}")
        for name, r in results[tree].items():
            target = TARGETS_S.get(name)
            shown = f"{target:.1f}" if target is not None else ""
            print(
                f"{name:46} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} {shown:>7}"
            )
        found = imports[tree]
        print(f"errands --help imports {found['modules']} modules; the heaviest (cumulative):")
        for module, ms in found["heaviest_cumulative_ms"].items():
            print(f"  {ms:>7.1f} ms  {module}")
    ratios = {tree: anchor_ratios(results[tree]) for tree in trees}
    for tree, found in ratios.items():
        print(f"{tree}: " + ", ".join(f"{k} {v:.2f}x" for k, v in found.items()))
    mine = results["this checkout"]
    met = {name: mine[name]["median_s"] <= t for name, t in TARGETS_S.items()}
    print()
    for name, ok in met.items():
        print(f"target {name} <= {TARGETS_S[name]} s: {'met' if ok else 'NOT met'}")
    summary = {
        "results": results,
        "ratios_to_anchors": ratios,
        "help_imports": imports,
        "baseline": trees.get("baseline"),
        "targets_s": TARGETS_S,
        "targets_met": met,
        "machine": info,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
