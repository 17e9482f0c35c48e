"""Issue 17, item 2: ``errands up --workers N`` runs errands in N worker processes.

A real server with two workers on one SQLite file: errands created through the API run
in the workers (their leases name a worker's pid, never the server's); an approval given
to the server is taken up by a worker; a worker killed with SIGKILL is started again and
its errands finish, each POST made once; the webhook hears of each errand once, whichever
process committed it; stopping the server stops the workers. The control: without
``--workers`` the server's own pid holds the leases -- what the first test tells apart.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from helpers.kit import call, write_script
from helpers.server import ServerProc, Sink, post_script, wait_for, write_config

from errands.policy.rules import load_policy
from errands.server.workers import WORKER_NICE


def children(pid: int) -> set[int]:
    """The processes whose parent is *pid*."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def lease_pids(home: Path) -> set[int]:
    with closing(sqlite3.connect(home / "errands.sqlite", timeout=30)) as db:
        owners = [r[0] for r in db.execute("SELECT owner FROM leases")]
    return {int(o.split(":")[1]) for o in owners}


def slow_script(path: Path, turns: int, latency_ms: float) -> str:
    """A scripted model listing files *turns* times, *latency_ms* a reply, then done."""
    steps = [{"tool_calls": [call("list_files", path=".")]} for _ in range(turns)]
    return write_script(path, *steps, {"text": "listed"}, latency_ms=latency_ms)


@pytest.mark.parametrize("workers", [2, 0], ids=["workers", "control"])
def test_errands_run_in_the_workers_never_in_the_server(tmp_path: Path, workers: int) -> None:
    home = tmp_path / "home"
    write_config(home)
    proc = ServerProc(home, args=["--workers", str(workers)]).start()
    try:
        assert proc.proc is not None
        server = proc.proc.pid
        spec = slow_script(tmp_path / "slow.json", turns=8, latency_ms=150)
        with proc.client() as api:
            ids = [
                api.post("/api/errands", json={"text": f"list {i}", "model": spec}).json()["id"]
                for i in range(6)
            ]
            holders = wait_for(lambda: lease_pids(home), timeout=30)
            if workers == 0:  # the control: the server runs them itself
                assert holders == {server}
            else:
                pool = children(server)
                assert len(pool) == workers, pool
                assert server not in holders and holders <= pool
                # a person's requests first: the workers run nicer than the server
                # (a worker lowers its own priority once it has started)
                base = os.getpriority(os.PRIO_PROCESS, server)
                niced = {w: base + WORKER_NICE for w in pool}
                wait_for(
                    lambda: {w: os.getpriority(os.PRIO_PROCESS, w) for w in pool} == niced,
                    timeout=30,
                )
            for eid in ids:
                wait_for(
                    lambda eid=eid: api.get(f"/api/errands/{eid}").json()["status"] == "done",
                    timeout=60,
                )
        assert proc.stop() == 0
        assert children(server) == set()  # (no worker outlives the server)
    finally:
        proc.kill()


def test_an_approval_given_to_the_server_is_taken_up_by_a_worker_and_told_once(
    tmp_path: Path,
) -> None:
    sink, hook = Sink(), Sink()
    home = tmp_path / "home"
    write_config(home, f'[notify]\nwebhook_url = "{hook.url}/hook"\n')
    proc = ServerProc(home, args=["--workers", "2"]).start()
    try:
        with proc.client() as api:
            spec = post_script(tmp_path / "s.json", f"{sink.url}/post")
            eid = api.post("/api/errands", json={"text": "post it", "model": spec}).json()["id"]
            pending = wait_for(lambda: api.get("/api/approvals").json(), timeout=30)
            assert (
                api.post(f"/api/approvals/{pending[0]['id']}/approve", json={}).status_code == 200
            )
            wait_for(lambda: api.get(f"/api/errands/{eid}").json()["status"] == "done", timeout=30)
            wait_for(lambda: len(hook.effects) >= 2, timeout=30)
        assert len(sink.effects) == 1  # the POST, once
        assert proc.stop() == 0
        told = [json.loads(e["body"])["event"] for e in hook.effects]
        assert told == ["approval_requested", "errand_done"]  # each once, in order
    finally:
        proc.kill()
        sink.close()
        hook.close()


def test_a_killed_worker_is_started_again_and_its_errands_finish_each_post_once(
    tmp_path: Path,
) -> None:
    sink = Sink()
    home = tmp_path / "home"
    write_config(home)
    load_policy(home)  # (written with its defaults)
    with (home / "policy.toml").open("a") as policy:
        policy.write('\n[[rules]]\nname = "posts"\ntool = "http_request"\ndecision = "allow"\n')
    steps = [{"tool_calls": [call("list_files", path=".")]} for _ in range(6)]
    posting = {"tool_calls": [call("http_request", method="POST", url=f"{sink.url}/p", body="x")]}
    spec = write_script(tmp_path / "k.json", *steps, posting, {"text": "posted"}, latency_ms=200)
    proc = ServerProc(home, args=["--workers", "2"]).start()
    try:
        assert proc.proc is not None
        server = proc.proc.pid
        with proc.client() as api:
            ids = [
                api.post(
                    "/api/errands", json={"text": f"{i}: post x to {sink.url}/p", "model": spec}
                ).json()["id"]
                for i in range(6)
            ]
            busy = wait_for(lambda: lease_pids(home) & children(server), timeout=30)
            victim = sorted(busy)[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(children(server) - {victim}) == 2, timeout=30)  # restarted

            def states() -> list[str]:
                return [api.get(f"/api/errands/{eid}").json()["status"] for eid in ids]

            try:
                wait_for(lambda: states() == ["done"] * 6, timeout=90)
            except AssertionError:
                raise AssertionError(f"{states()}\n{proc.stderr_tail()}") from None
        assert len(sink.effects) == 6  # one POST per errand: none lost, none repeated
        assert proc.stop() == 0
    finally:
        proc.kill()
        sink.close()


def test_workers_stop_when_their_server_is_killed(tmp_path: Path) -> None:
    """A SIGKILL of the server leaves no worker running errands on its own."""
    home = tmp_path / "home"
    write_config(home)
    proc = ServerProc(home, args=["--workers", "2"]).start()
    assert proc.proc is not None
    pool = wait_for(lambda: children(proc.proc.pid) if len(children(proc.proc.pid)) == 2 else None)
    proc.kill()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pool), timeout=15)
