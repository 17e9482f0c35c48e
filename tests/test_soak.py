"""Memory that stays flat (issue 21, item 5): bench/soak_bench.py's day, shortened to 12
simulated hours, in this process -- the store, the runner serving (claiming, waking,
its scheduler), approvals and retention of ``errands up`` under the virtual clock --
with RSS, open file descriptors, threads and asyncio tasks sampled every hour after
``gc.collect()``.

The bounds, after a 2-hour warm-up: RSS grows by less than 6 MB (measured: under 2 MB
over the 22 hours after warm-up of a full day: the SQLite page cache following the
file's growth, and the dispatcher's bounded cache of workspace paths); threads stay within
the main thread, the store's two and asyncio's thread pool, and file descriptors grow only
with that pool (each pool thread that reads the store opens its connection once: at most
3 descriptors); asyncio tasks stay at most 16 (the serving loops and the errands in flight
when the sample is taken: 6-8 seen).

Negative control: the same soak (6 hours) with a ``lookup`` tool that keeps 256 KB and an
open file per call -- the kind of leak this is here to catch -- breaks both bounds.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import sys
from pathlib import Path

import pytest

from errands.core.events import EffectClass
from errands.tools.tool import ToolContext
from errands.tools.toolset import FunctionToolset

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import soak_bench  # noqa: E402  (bench/ is not a package)

RSS_MB = 6.0
# asyncio.to_thread's pool starts its threads as they are first needed, up to this many,
# and each that reads the store opens its own connection (the file, its WAL, its -shm)
POOL = min(32, (os.cpu_count() or 1) + 4)
TASKS = 16  # the serving loops and the errands in flight at the sample (seen: 6-8)


def leaking_tools(kept: list[object]) -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=EffectClass.read, idempotent=True)
    def lookup(term: str, ctx: ToolContext) -> str:
        """Look something up.

        Args:
            term: What to look up.
        """
        # new pages every call, written so that they are resident: an anonymous mapping
        # (a bytearray may reuse heap the first soak freed, and RSS would not move)
        block = mmap.mmap(-1, 256 * 1024)
        block.write(os.urandom(256 * 1024))
        kept.append(block)
        kept.append(open(os.devnull))  # noqa: SIM115  (the leak under test)
        return f"{term}: found"

    @reg.tool(effect=EffectClass.external, roles={"to": "recipient", "body": "body"})
    def send_message(to: str, body: str, ctx: ToolContext) -> str:
        """Send a message to someone.

        Args:
            to: The recipient.
            body: The message.
        """
        return f"sent to {to}"

    return reg


def flat(result: soak_bench.SoakResult) -> list[str]:
    """What grew past its bound after the warm-up."""
    growth = result.growth()
    problems = []
    if growth["rss_mb"] >= RSS_MB:
        problems.append(f"RSS +{growth['rss_mb']} MB")
    if growth["fds"] > 3 * max(0, growth["threads"]):
        problems.append(f"file descriptors +{growth['fds']} (threads +{growth['threads']})")
    if max(s.threads for s in result.samples) > 4 + POOL:
        problems.append(f"threads up to {max(s.threads for s in result.samples)}")
    if max(s.tasks for s in result.samples) > TASKS:
        problems.append(f"asyncio tasks up to {max(s.tasks for s in result.samples)}")
    return problems


@pytest.mark.slow  # (about 20 s, and 10 s for the control)
def test_a_day_of_errands_keeps_memory_descriptors_and_tasks_flat(tmp_path: Path) -> None:
    result = asyncio.run(soak_bench.soak(tmp_path / "ok", hours=12, warmup_hours=2))
    # (144 handed over; 252 approvals asked in all, a few still in flight at the end)
    assert result.errands >= 140 and result.approvals >= 200 and result.watch_runs >= 60
    assert flat(result) == [], soak_bench.table(result)

    kept: list[object] = []
    try:
        leaky = asyncio.run(
            soak_bench.soak(tmp_path / "leak", hours=6, warmup_hours=2, toolset=leaking_tools(kept))
        )
        problems = flat(leaky)
    finally:
        for thing in kept:
            if hasattr(thing, "close"):
                thing.close()
    assert any(p.startswith("RSS") for p in problems), (problems, soak_bench.table(leaky))
    assert any(p.startswith("file descriptors") for p in problems), problems
