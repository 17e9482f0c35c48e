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

from errands.config import load_settings
from errands.policy.approvals import approve
from errands.store.sqlite import SQLiteStore

WORKER = Path(__file__).parent / "helpers" / "approval_worker.py"


def worker(home: Path, ledger: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")} | env
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(home), str(ledger), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )


def start_and_kill(home: Path, ledger: Path, **env: str) -> str:
    proc = worker(home, ledger, "start", **env)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    return line[0]


def pending_ids(home: Path) -> list[str]:
    store = SQLiteStore(load_settings(home).db_path)
    try:
        return [p.id for p in store.pending_approvals_sync()]
    finally:
        store.close_sync()


def run_to_end(home: Path, ledger: Path, errand_id: str, **env: str) -> tuple[int, str]:
    proc = worker(home, ledger, "resume", errand_id, **env)
    out, _err = proc.communicate(timeout=60)
    return proc.returncode, out.strip()


def grant(home: Path, ledger: Path, approval_id: str) -> None:
    async def go() -> None:
        store = SQLiteStore(load_settings(home).db_path)
        try:
            await approve(
                store, ledger_registry(Ledger(ledger)), approval_id, by="t", channel="cli"
            )
        finally:
            await store.close()

    asyncio.run(go())


def test_pending_approvals_survive_sigkill(tmp_path: Path) -> None:
    eid = start_and_kill(tmp_path, tmp_path / "ledger")
    assert [i.split(".")[0] for i in pending_ids(tmp_path)] == [eid]


def test_negative_control_approvals_held_in_memory_die_with_the_process(tmp_path: Path) -> None:
    start_and_kill(tmp_path, tmp_path / "ledger", ERRANDS_UNSAFE_TEST_SWITCHES="memory_approvals")
    assert pending_ids(tmp_path) == []  # the survival check above would fail


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
    eid = start_and_kill(tmp_path, ledger)
    (aid,) = pending_ids(tmp_path)
    grant(tmp_path, ledger, aid)
    code, _ = run_to_end(tmp_path, ledger, eid, ERRANDS_FAULT=f"{point}:1")
    assert code == -signal.SIGKILL
    assert Ledger(ledger).entries() == []
    code, out = run_to_end(tmp_path, ledger, eid)
    assert out.endswith(outcome)
    assert len(Ledger(ledger).entries()) == sends


def _crash_during_the_action(tmp_path: Path, **env: str) -> tuple[str, int]:
    ledger = tmp_path / "ledger"
    eid = start_and_kill(tmp_path, ledger)
    (aid,) = pending_ids(tmp_path)
    grant(tmp_path, ledger, aid)
    code, _ = run_to_end(tmp_path, ledger, eid, ERRANDS_FAULT="after_effect:1", **env)
    assert code == -signal.SIGKILL
    code, out = run_to_end(tmp_path, ledger, eid, **env)
    return out, len(Ledger(ledger).entries())


def test_crash_during_the_approved_action_never_runs_it_twice(tmp_path: Path) -> None:
    out, sends = _crash_during_the_action(tmp_path)
    assert sends == 1
    assert out.endswith("needs_attention")  # in doubt: the person is asked, nothing repeats


def test_negative_control_without_the_outbox_the_action_runs_twice(tmp_path: Path) -> None:
    _, sends = _crash_during_the_action(tmp_path, ERRANDS_UNSAFE_TEST_SWITCHES="no_intent")
    assert sends == 2  # the exactly-once check above would fail
