"""Approvals across real SIGKILLs: they survive, and the approved action runs once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.kit import Ledger, ledger_registry
from seams import child_env

from errands.config import load_settings
from errands.policy.approvals import Approvals
from errands.store.sqlite import SQLiteStore

WORKER = Path(__file__).parent / "helpers" / "approval_worker.py"


def worker(home: Path, ledger: Path, *args: str, fault: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(home), str(ledger), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(env, fault=fault),
    )


def start(
    home: Path, ledger: Path, control: str = ""
) -> tuple[subprocess.Popen[str], str, list[str]]:
    """A worker whose errand waits for a person: (process, errand, what waits, as it says)."""
    proc = worker(home, ledger, "start", *([control] if control else []))
    assert proc.stdout is not None
    eid, state, *pending = proc.stdout.readline().split()
    assert state == "waiting_approval" if not control else state == "running"
    return proc, eid, pending


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    proc.communicate()


def pending_ids(home: Path) -> list[str]:
    async def go() -> list[str]:
        store = SQLiteStore(load_settings(home).db_path)
        try:
            return [p.id for p in await store.pending_approvals()]
        finally:
            await store.close()

    return asyncio.run(go())


def run_to_end(
    home: Path, ledger: Path, errand_id: str, fault: str | None = None
) -> tuple[int, str]:
    proc = worker(home, ledger, "resume", errand_id, fault=fault)
    out, _err = proc.communicate(timeout=60)
    return proc.returncode, out.strip()


def grant(home: Path, ledger: Path, approval_id: str) -> None:
    async def go() -> None:
        store = SQLiteStore(load_settings(home).db_path)
        try:
            await Approvals(store, ledger_registry(Ledger(ledger))).approve(
                approval_id, by="t", channel="cli"
            )
        finally:
            await store.close()

    asyncio.run(go())


def test_pending_approvals_survive_sigkill(tmp_path: Path) -> None:
    proc, eid, before = start(tmp_path, tmp_path / "ledger")
    assert [i.split(".")[0] for i in before] == [eid]  # a person could decide it now
    kill(proc)
    assert pending_ids(tmp_path) == before  # and still can, after the SIGKILL


def test_negative_control_approvals_held_in_memory_die_with_the_process(tmp_path: Path) -> None:
    # alive, an in-memory queue is a working approval queue: it shows the request, and a
    # yes runs the action ...
    ledger = tmp_path / "ledger"
    proc, eid, before = start(tmp_path / "a", ledger, "memory_approvals")
    assert [i.split(".")[0] for i in before] == [eid]
    out, _ = proc.communicate("approve\n", timeout=60)
    assert out.strip() == f"{eid} done"
    assert len(Ledger(ledger).entries()) == 1
    # ... but what it holds dies with the process: the survival check above fails
    proc, eid, before = start(tmp_path / "b", ledger, "memory_approvals")
    assert [i.split(".")[0] for i in before] == [eid]
    kill(proc)
    assert pending_ids(tmp_path / "b") == []


def test_an_approval_granted_while_the_worker_lives_runs_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    proc, eid, _ = start(tmp_path, ledger)
    out, _ = proc.communicate("approve\n", timeout=60)
    assert out.strip() == f"{eid} done"
    assert len(Ledger(ledger).entries()) == 1


@pytest.mark.parametrize(
    ("point", "outcome", "sends"),
    [
        # the grant is durable, the intent is not: the action simply runs, once
        ("after_approval", "done", 1),
        # the intent (outbox record) is durable: a crash now cannot tell "not yet run"
        # from "ran", so a non-idempotent send is never retried -- the person is asked
        ("after_intent", "needs_attention", 0),
    ],
)
def test_crash_between_approval_and_action_never_runs_it_twice(
    tmp_path: Path, point: str, outcome: str, sends: int
) -> None:
    ledger = tmp_path / "ledger"
    proc, eid, _ = start(tmp_path, ledger)
    kill(proc)
    (aid,) = pending_ids(tmp_path)
    grant(tmp_path, ledger, aid)
    code, _ = run_to_end(tmp_path, ledger, eid, fault=f"{point}:1")
    assert code == -signal.SIGKILL
    assert Ledger(ledger).entries() == []
    code, out = run_to_end(tmp_path, ledger, eid)
    assert out.endswith(outcome)
    assert len(Ledger(ledger).entries()) == sends


def _crash_during_the_action(tmp_path: Path, control: str = "") -> tuple[str, int]:
    ledger = tmp_path / "ledger"
    proc, eid, _ = start(tmp_path, ledger)
    kill(proc)
    (aid,) = pending_ids(tmp_path)
    grant(tmp_path, ledger, aid)
    extra = [control] if control else []
    proc = worker(tmp_path, ledger, "resume", eid, *extra, fault="after_effect:1")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(Ledger(ledger).entries()) == 1  # the send happened, its result is not logged
    proc = worker(tmp_path, ledger, "resume", eid, *extra)
    out, _ = proc.communicate(timeout=60)
    return out.strip(), len(Ledger(ledger).entries())


def test_crash_during_the_approved_action_never_runs_it_twice(tmp_path: Path) -> None:
    out, sends = _crash_during_the_action(tmp_path)
    assert sends == 1
    assert out.endswith("needs_attention")  # in doubt: the person is asked, nothing repeats


def test_negative_control_without_the_outbox_the_action_runs_twice(tmp_path: Path) -> None:
    _, sends = _crash_during_the_action(tmp_path, "no_intent")
    assert sends == 2  # the exactly-once check above would fail
