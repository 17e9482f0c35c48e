"""Waiting costs nothing: errands waiting for approval hold no task, thread or loop state."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

import psutil
import pytest
from helpers.kit import Ledger, call, ledger_registry, script

from errands.config import Settings
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.engine.runner import Runner
from errands.policy.rules import Policy
from errands.store import Store


async def _wait_many(store: Store, settings: Settings, tmp_path: Path, n: int) -> None:
    model = script({"text": "sending", "tool_calls": [call("send_message", to="bob", body="hi")]})
    runner = Runner(
        store, settings, ledger_registry(Ledger(tmp_path / "l")), Policy(), models=lambda s: model
    )
    proc = psutil.Process()
    gc.collect()
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    rss_before = proc.memory_info().rss
    ids = []
    for start in range(0, n, 1000):  # create in chunks: bounded concurrency
        ids += await asyncio.gather(
            *(
                create_errand(store, settings, f"tell bob {i}", model="scripted:demo")
                for i in range(start, min(n, start + 1000))
            )
        )
    claimed = await runner.claim(limit=n)
    assert len(claimed) == n
    await runner.wait_idle()
    gc.collect()
    assert len(runner.tasks) == 0
    # no task per waiting errand (tasks other tests left behind may finish meanwhile)
    assert len(asyncio.all_tasks()) <= tasks_before
    assert threading.active_count() <= threads_before + 8  # the store's reader pool at most
    pending = await store.pending_approvals()
    assert len(pending) == n
    views = await store.list_errands(states=[ErrandState.waiting_approval], limit=n)
    assert len(views) == n
    rss_after = proc.memory_info().rss
    print(
        f"\n{n} errands waiting: tasks {tasks_before}->{len(asyncio.all_tasks())}, "
        f"threads {threads_before}->{threading.active_count()}, "
        f"RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB"
    )


async def test_a_thousand_waiting_errands_hold_no_tasks(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    await _wait_many(store, settings, tmp_path, 1000)


@pytest.mark.slow
async def test_ten_thousand_waiting_errands_hold_no_tasks(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    await _wait_many(store, settings, tmp_path, 10_000)
