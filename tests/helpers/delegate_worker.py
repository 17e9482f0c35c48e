"""A worker process for the sub-errand crash test (:mod:`tests.test_delegate_crash`).

``python delegate_worker.py HOME ERRAND_ID [--random-ids] [--writes] [--naive-worktrees]``
serves the store in
``HOME/s.sqlite`` (claiming, wake-ups, as ``errands up``) with :class:`FanModel` (a
parent delegating 20 tasks) until ERRAND_ID has ended, then exits 0 -- unless
``ERRANDS_FAULT`` (armed by ``seams.child_env``) kills it first. ``--random-ids`` is the
negative control: children get random ids instead of ids derived from the call.
``--writes``: each child writes ``CHILD_ID.txt`` before it answers (a git workspace: its
worktree). ``--naive-worktrees`` is the worktrees' control: a worktree is always added
anew (``git worktree add -b``), never looked for.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: helpers

from errands.config import Settings
from errands.core.ids import new_errand_id
from errands.core.progress import CallState, Progress
from errands.core.states import ErrandState, ErrandView
from errands.engine import worktrees
from errands.engine.delegate import Delegation
from errands.engine.loop import Loop
from errands.store.sqlite import SQLiteStore
from helpers.fanout import FanModel, ended, serving, until, with_subagents
from helpers.kit import harness_for

N = 20


class RandomIds(Delegation):
    """The control: a child's id is not derived from the call -- random, made when the
    call is first carried out and kept in memory (so a crash forgets it)."""

    made: ClassVar[dict[tuple[str, int, int], list[str]]] = {}

    def ids_for(self, p: Progress, call: CallState, n: int) -> list[str]:
        key = (p.errand_id, call.request_seq, call.index)
        return self.made.setdefault(key, [new_errand_id() for _ in range(n)])


class RandomIdsLoop(Loop):
    delegation_class = RandomIds


def stuck_or_ended(view: ErrandView) -> bool:
    return ended(view) or view.state is ErrandState.needs_attention


class NaiveWorktrees(Delegation):
    """The control: every pass adds the child's worktree anew."""

    async def worktree(self, parent: Path, child: Path, child_id: str) -> bool:
        branch = worktrees.branch_for(child_id)
        cmd = ["git", "-C", str(parent), "worktree", "add", "-q", "-b", branch, str(child)]
        await asyncio.to_thread(subprocess.run, cmd, check=True, capture_output=True)
        return True


class NaiveWorktreesLoop(Loop):
    delegation_class = NaiveWorktrees


async def main(home: Path, errand_id: str, random_ids: bool, writes: bool, naive: bool) -> None:
    settings = with_subagents(Settings(home=home), max_parallel=N)
    store = SQLiteStore(home / "s.sqlite")
    tool = ("write_file", {"path": "out.txt", "content": "work"}) if writes else ("list_files", {})
    model = FanModel(N, latency=0.02, child_calls=2 if writes else 1, child_tool=tool)
    h = harness_for(store, settings, model=model)
    loop = RandomIdsLoop if random_ids else NaiveWorktreesLoop if naive else None
    try:
        # (short leases: the killed worker's are taken over in seconds)
        runner = h.runner(loop_class=loop, lease_ttl=2.0)
        runner.failure_pauses = (0.1,)  # (a step that keeps failing: needs_attention soon)
        async with serving(runner):
            await until(store, errand_id, stuck_or_ended, timeout=60)
            await asyncio.wait_for(runner.wait_idle(), 30)  # (the parent's end: its worktrees)
    finally:
        await store.close()


if __name__ == "__main__":
    args = argparse.ArgumentParser()
    args.add_argument("home", type=Path)
    args.add_argument("errand_id")
    args.add_argument("--random-ids", action="store_true")
    args.add_argument("--writes", action="store_true")
    args.add_argument("--naive-worktrees", action="store_true")
    a = args.parse_args()
    asyncio.run(main(a.home, a.errand_id, a.random_ids, a.writes, a.naive_worktrees))
