"""Memory that stays flat (issue 21, item 5): bench/soak_bench.py's day, shortened to 12
simulated hours, in this process -- the store, runner, scheduler, approvals and
retention of ``errands up`` under the virtual clock -- with RSS, open file descriptors,
threads and asyncio tasks sampled every hour after ``gc.collect()``.

The bounds, after a 2-hour warm-up: RSS grows by less than 6 MB (measured: +1.8 MB over
the 22 hours after warm-up of a full day: the SQLite page cache following the file's
growth, and the dispatcher's bounded cache of workspace paths); file descriptors,
threads and tasks do not grow at all (tasks: at most the one the sample catches in
flight).

Negative control: the same soak with a ``lookup`` tool that keeps 64 KB and an open file
per call -- the kind of leak this is here to catch -- breaks both bounds.
"""

from __future__ import annotations

import asyncio
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


def leaking_tools(kept: list[object]) -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=EffectClass.read, idempotent=True)
    def lookup(term: str, ctx: ToolContext) -> str:
        """Look something up.

        Args:
            term: What to look up.
        """
        kept.append(bytearray(os.urandom(64 * 1024)))  # (touched: really resident)
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
    if growth["fds"] > 0:
        problems.append(f"file descriptors +{growth['fds']}")
    if growth["threads"] > 0:
        problems.append(f"threads +{growth['threads']}")
    if max(s.tasks for s in result.samples) > 3:
        problems.append(f"asyncio tasks up to {max(s.tasks for s in result.samples)}")
    return problems


@pytest.mark.slow  # (about 10 s, twice)
def test_a_day_of_errands_keeps_memory_descriptors_and_tasks_flat(tmp_path: Path) -> None:
    result = asyncio.run(soak_bench.soak(tmp_path / "ok", hours=12, warmup_hours=2))
    assert result.errands >= 140 and result.approvals >= 240 and result.watch_runs >= 70
    print(soak_bench.table(result))
    assert flat(result) == []

    kept: list[object] = []
    try:
        leaky = asyncio.run(
            soak_bench.soak(
                tmp_path / "leak", hours=12, warmup_hours=2, toolset=leaking_tools(kept)
            )
        )
        problems = flat(leaky)
    finally:
        for thing in kept:
            if hasattr(thing, "close"):
                thing.close()
    assert any(p.startswith("RSS") for p in problems), problems
    assert any(p.startswith("file descriptors") for p in problems), problems
