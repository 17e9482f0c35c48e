"""A worker process for the sub-errand crash test (:mod:`tests.test_delegate_crash`).

``python delegate_worker.py HOME ERRAND_ID [--random-ids]`` serves the store in
``HOME/s.sqlite`` (claiming, wake-ups, as ``errands up``) with :class:`FanModel` (a
parent delegating 20 tasks) until ERRAND_ID has ended, then exits 0 -- unless
``ERRANDS_FAULT`` (armed by ``seams.child_env``) kills it first. ``--random-ids`` is the
negative control: children get random ids instead of ids derived from the call.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: helpers

from errands.config import Settings
from errands.core.ids import new_errand_id
from errands.core.progress import CallState, Progress
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


async def main(home: Path, errand_id: str, random_ids: bool) -> None:
    settings = with_subagents(Settings(home=home), max_parallel=N)
    store = SQLiteStore(home / "s.sqlite")
    h = harness_for(store, settings, model=FanModel(N, latency=0.02))
    try:
        # (short leases: the killed worker's are taken over in seconds)
        runner = h.runner(loop_class=RandomIdsLoop if random_ids else None, lease_ttl=2.0)
        async with serving(runner):
            await until(store, errand_id, ended, timeout=60)
    finally:
        await store.close()


if __name__ == "__main__":
    args = argparse.ArgumentParser()
    args.add_argument("home", type=Path)
    args.add_argument("errand_id")
    args.add_argument("--random-ids", action="store_true")
    a = args.parse_args()
    asyncio.run(main(a.home, a.errand_id, a.random_ids))
