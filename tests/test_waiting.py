"""Waiting costs nothing: errands waiting for approval hold no task, thread or loop state.

Memory is checked two ways, after a warm-up batch has filled what is filled once
(imports, pydantic's validators, SQLite's statement caches):

- the Python objects still allocated (``sys.getallocatedblocks``) per waiting errand:
  what a waiting errand keeps alive. Measured at 7-10 blocks per errand on the 2-core
  CI runner (what the store's bounded caches keep of it); the loop keeping each
  errand's Progress (its view and folded log) measured 80, a suspended task or a copy
  of the log more, so the bound of 50 leaves 5x headroom and still catches them;
- the process's RSS growth per errand. RSS is a high-water mark: it holds the peak of
  running all *n* loops at once (``claim`` starts them together) and SQLite's page
  caches, not just what waiting keeps, so it is the loose check -- measured at 18-21
  KiB per errand for 1,000 and 10,000 errands alike (it does not grow with *n*); the
  bound of 64 KiB is three times that, and catches a per-errand resource (a connection,
  a client, a thread's stack) that the block count cannot see.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from pathlib import Path

import psutil
import pytest
from helpers.kit import Ledger, call, harness_for, ledger_registry, script

from errands.config import Settings
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.engine.runner import Runner
from errands.policy.rules import Policy
from errands.store import Store

WARM_UP = 200  # errands run to waiting before anything is measured
BLOCKS_PER_ERRAND = 50  # measured 7-10 (see above)
RSS_PER_ERRAND = 64 * 1024  # measured 18-21 KiB (see above)


async def _settle() -> None:
    """Let finished tasks' callbacks run (gather holds them a loop turn), then collect."""
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()


async def _to_waiting(store: Store, settings: Settings, runner: Runner, n: int) -> None:
    """Create *n* errands and run them all, at once, until they wait for approval."""
    for start in range(0, n, 1000):  # create in chunks: bounded concurrency
        await asyncio.gather(
            *(
                create_errand(store, settings, f"tell bob {i}", model="scripted:demo")
                for i in range(start, min(n, start + 1000))
            )
        )
    claimed = await runner.claim(limit=n)
    assert len(claimed) == n
    await runner.wait_idle()
    await _settle()


async def _wait_many(store: Store, settings: Settings, tmp_path: Path, n: int) -> None:
    model = script({"text": "sending", "tool_calls": [call("send_message", to="bob", body="hi")]})
    tools = ledger_registry(Ledger(tmp_path / "l"))
    runner = harness_for(store, settings, tools=tools, model=model, policy=Policy()).runner()
    proc = psutil.Process()
    await _to_waiting(store, settings, runner, WARM_UP)
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    rss_before = proc.memory_info().rss
    blocks_before = sys.getallocatedblocks()

    await _to_waiting(store, settings, runner, n)

    blocks = (sys.getallocatedblocks() - blocks_before) / n
    rss = (proc.memory_info().rss - rss_before) / n
    tasks_after, threads_after = len(asyncio.all_tasks()), threading.active_count()
    print(
        f"\n{n} errands waiting: tasks {tasks_before}->{tasks_after}, "
        f"threads {threads_before}->{threads_after}, "
        f"{blocks:.1f} Python blocks and {rss / 1024:.1f} KiB of RSS per errand"
    )
    assert len(runner.tasks) == 0
    # no task per waiting errand (tasks other tests left behind may finish meanwhile)
    assert tasks_after <= tasks_before
    assert threads_after <= threads_before + 8  # the store's reader pool at most
    assert blocks < BLOCKS_PER_ERRAND, f"each waiting errand keeps {blocks:.0f} objects alive"
    assert rss < RSS_PER_ERRAND, f"RSS grew by {rss / 1024:.0f} KiB per waiting errand"
    pending = await store.pending_approvals()
    assert len(pending) == n + WARM_UP
    views = await store.list_errands(states=[ErrandState.waiting_approval], limit=2 * n)
    assert len(views) == n + WARM_UP


async def test_a_thousand_waiting_errands_hold_no_tasks(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    await _wait_many(store, settings, tmp_path, 1000)


@pytest.mark.slow
async def test_ten_thousand_waiting_errands_hold_no_tasks(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    await _wait_many(store, settings, tmp_path, 10_000)
