"""Issue 17, item 2: ``errands up`` runs errands in one worker per core by default, and
what only a worker knows reaches the server through its relay.

- The default: one worker per core this process may use (its affinity mask), at most
  ``DEFAULT_CAP``; with one core (``taskset -c 0``: the control) errands run in the
  server itself, as ``--workers 0`` does.
- A tool's live output and the model's streamed text reach an SSE viewer from a worker
  (``tests/test_shell_live.py`` runs its real SSE test with ``--workers 2``, redacted);
  here the controls: a worker whose live view does not redact leaks the secret through
  the relay (so the check there can fail on that path), and a worker started by hand
  (``errands worker``, no relay) shows none of it -- only the committed log.
- A person's decision wakes the worker that waits for it at once: the test plays the
  server's end of a worker's relay, approves, and sends the wake-up; the worker polls
  every 30 s, and the errand goes on within 6 s (the wake-up itself: milliseconds). The control sends no wake-up: the
  errand does not go on before the worker's poll.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from helpers.kit import call, write_script
from helpers.server import ServerProc, clean_env, wait_for, write_config
from sim.openai_server import OpenAIChatSim
from test_shell_live import SECRET, SPLIT, TICKS, follow, pieces, start
from test_workers import children, lease_pids, slow_script

from errands.server.relay import MAX_FRAME, WorkerRelay, frame
from errands.server.workers import DEFAULT_CAP, default_workers


def test_the_default_is_one_worker_per_core_up_to_the_cap() -> None:
    assert default_workers(1) == 0  # one core: errands run in the server
    assert [default_workers(n) for n in (2, 3, DEFAULT_CAP)] == [2, 3, DEFAULT_CAP]
    assert default_workers(4 * DEFAULT_CAP) == DEFAULT_CAP
    mine = len(os.sched_getaffinity(0))
    assert default_workers() == (0 if mine == 1 else min(mine, DEFAULT_CAP))


@pytest.mark.parametrize("one_core", [False, True], ids=["every-core", "CONTROL-one-core"])
def test_errands_up_starts_one_worker_per_core_by_default(tmp_path: Path, one_core: bool) -> None:
    home = tmp_path / "home"
    write_config(home)
    cores = 1 if one_core else len(os.sched_getaffinity(0))
    expected = default_workers(cores)
    prefix = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if one_core else []
    proc = ServerProc(home, prefix=prefix).start()  # (no --workers)
    try:
        assert proc.proc is not None
        server = proc.proc.pid
        spec = slow_script(tmp_path / "slow.json", turns=6, latency_ms=150)
        with proc.client() as api:
            eid = api.post("/api/errands", json={"text": "list", "model": spec}).json()["id"]
            holders = wait_for(lambda: lease_pids(home), timeout=60)
            pool = children(server)
            if expected:
                pool = wait_for(lambda: len(children(server)) >= expected and children(server))
            assert len(pool) == expected, pool
            assert holders == ({server} if expected == 0 else holders & pool)
            wait_for(lambda: api.get(f"/api/errands/{eid}").json()["status"] == "done", 60)
        if expected:  # (the start message says where errands run)
            assert f"errands run in {expected} worker process(es)" in proc.output()
        assert proc.stop() == 0
        assert children(server) == set()
    finally:
        proc.kill()
    if not one_core:
        assert expected >= 2, "this test needs a machine with two cores or more"


def test_control_a_worker_whose_live_view_does_not_redact_leaks_through_the_relay(
    tmp_path: Path, openai_sim: OpenAIChatSim
) -> None:
    """The check of test_shell_live's SSE test, on the workers' path, can fail."""
    server = start(
        tmp_path / "home", openai_sim, SPLIT, ("--workers", "2"), controls=("live_unredacted",)
    )
    try:
        seen = follow(server)
    finally:
        server.kill()
    shown = "".join(d["text"] for _, k, d in seen if k == "output")
    assert SECRET in shown  # the live view leaked it, through the relay
    result = next(d for _, k, d in seen if k == "event" and d["event"]["type"] == "tool_result")
    assert [p for p in pieces(SECRET) if p in json.dumps(result)] == []  # (the record: not)


def test_a_worker_started_by_hand_has_no_relay(tmp_path: Path, openai_sim: OpenAIChatSim) -> None:
    """``errands up --no-run`` and an ``errands worker`` beside it: the errand runs and
    its stream shows the committed log, but no live output or text (docs: no relay)."""
    home = tmp_path / "home"
    server = start(home, openai_sim, TICKS, ("--no-run",))
    worker = subprocess.Popen(
        [sys.executable, "-m", "errands", "worker"],
        env=clean_env(home, LIVE_SIM_KEY=openai_sim.api_key, LIVE_CANARY_VALUE=SECRET),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        seen = follow(server)
    finally:
        worker.terminate()
        worker.wait(30)
        server.kill()
    kinds = {k for _, k, _ in seen}
    assert "output" not in kinds and "text" not in kinds, kinds
    result = next(d for _, k, d in seen if k == "event" and d["event"]["type"] == "tool_result")
    assert "tick 3" in result["event"]["content"]["text"]


WORKER = (
    "import logging, sys\n"
    "from pathlib import Path\n"
    "from errands.config import load_settings\n"
    "from errands.server.workers import run_worker\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
    "run_worker(load_settings(Path(sys.argv[1])), relay=int(sys.argv[2]), poll=float(sys.argv[3]))\n"
)
SLOW_POLL = 30.0  # seconds between the worker's own looks at the store
WINDOW = 6.0  # seconds the errand has to go on after the decision (well under the poll)


def results(home: Path, errand_id: str) -> int:
    with closing(sqlite3.connect(home / "errands.sqlite", timeout=30)) as db:
        query = "SELECT count(*) FROM events WHERE errand_id = ? AND type = 'tool_result'"
        return int(db.execute(query, (errand_id,)).fetchone()[0])


@pytest.mark.parametrize("wake", [True, False], ids=["relay", "CONTROL-no-wake-up"])
def test_a_decision_wakes_the_worker_at_once(
    cli: CLI, home: Path, tmp_path: Path, wake: bool
) -> None:
    spec = write_script(
        tmp_path / "echo.json", {"tool_calls": [call("shell", command="echo hi")]}, {"text": "ok"}
    )
    assert cli("run", "echo", "--model", spec).returncode == 3  # (no terminal: it waits)
    (pending,) = json.loads(cli("approvals", "--json").stdout)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(home), str(theirs.fileno()), str(SLOW_POLL)],
        env=clean_env(home),
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    try:
        assert worker.stderr is not None
        for line in worker.stderr:  # (it has looked at the store once: nothing to run)
            if "serving" in line:
                break
        time.sleep(1.0)
        assert cli("approve", pending["id"]).returncode == 0
        asked = time.monotonic()
        if wake:
            ours.sendall(frame("w"))
        deadline = asked + WINDOW
        while results(home, pending["errand_id"]) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        took = time.monotonic() - asked
        if wake:
            assert took < WINDOW, f"the errand went on only after {took:.2f} s"
        else:  # the control: it waits for the worker's own poll
            assert results(home, pending["errand_id"]) == 0, f"went on after {took:.2f} s"
    finally:
        ours.close()  # (the server's end closed: the worker stops)
        try:
            assert worker.wait(30) == 0
        finally:
            worker.kill()


async def test_a_worker_never_queues_live_frames_without_bound_and_says_what_it_dropped() -> None:
    """A server that reads nothing: past MAX_PENDING bytes waiting, output is dropped (the
    call's exit still goes), and once the server reads again the drop is said. The
    control: model text for an errand no stream follows is never sent at all."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = WorkerRelay(theirs)
    await relay.open()
    try:
        relay.watched.add("e1")
        relay("e2", "nobody follows e2")  # (the control: not sent)
        big = "x" * 60_000
        sent = 0
        while relay._room():
            relay.output("e1", 7, "stdout", big)
            sent += 1
        relay.output("e1", 7, "stdout", "lost")  # past the cap: dropped
        relay.output("e1", 7, "stdout", "lost too")
        assert relay.dropped == {"e1": (7, len("lost") + len("lost too"))}
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_FRAME)
        frames: list[list[Any]] = []
        while len(frames) < sent:
            frames.append(json.loads(await reader.readline()))
        await asyncio.sleep(0.05)  # (the worker's buffer drains into the socket)
        relay.output("e1", 7, "stdout", "back\n")
        relay.output("e1", 7, "exit", "exit code 0")
        for _ in range(3):
            frames.append(json.loads(await reader.readline()))
        writer.close()
    finally:
        await relay.close()
    assert [f[0] for f in frames] == ["o"] * (sent + 3)
    assert frames[-3][3:] == ["dropped", "[12 characters not shown]"]
    assert frames[-2][3:] == ["stdout", "back\n"] and frames[-1][3] == "exit"
    assert not any(f[1] == "e2" for f in frames)
