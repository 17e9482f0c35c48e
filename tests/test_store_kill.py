"""SIGKILL a real writer process and check that no acknowledged append was lost.

The writer (``WRITER`` below, run with ``python -c``) opens a :class:`SQLiteStore`, and
runs many concurrent appenders -- lease owners and outsiders, single events and several
at once, now and then a body big enough for a blob -- and prints ``ack <errand> <seq>
<marker> <count>`` the moment each ``append`` returns. The test kills it with SIGKILL at
random moments (and, through ``ERRANDS_FAULT=mid_batch:N``, between a batch's writes
and its COMMIT), re-opens the file, and checks:

- every acknowledged append is in the log, at the sequence numbers it was given, with
  the content it was given;
- nothing is half-written: every append is all there or not at all, its events
  contiguous and in order; the logs have no gaps; every row parses; the projections
  equal the fold (``integrity_check()``); SQLite's own ``integrity_check`` is ok;
- each appender's appends (it makes one at a time) are there exactly once each, in the
  order it made them, with no gap: every acknowledged one, and at most one more (the
  one whose acknowledgement the kill cut off).

The kill times come from a seeded generator: ``ERRANDS_KILL_SEED`` (default
:data:`DEFAULT_SEED`, so that CI runs are repeatable); a failing test prints its seed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from seams import child_env

from errands.core import events as ev
from errands.store.sqlite import SQLiteStore

DEFAULT_SEED = 2025  # the kill times CI uses; ERRANDS_KILL_SEED=N tries others

WRITER = r"""
import asyncio, sys
from errands.core import events as ev
from errands.core.labels import Provenance
from errands.errors import ErrandExists
from errands.store.sqlite import SQLiteStore

path, run, errands, appenders = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = sys.stdout


async def main() -> None:
    store = SQLiteStore(path)
    ids = [f"k{i:03d}" for i in range(errands)]
    created = ev.ErrandCreated(
        title="kill test", model="sim/m", workspace="/tmp/ws",
        content=ev.Content(text="append until killed", provenance=Provenance(kind="user")),
    )
    made = await asyncio.gather(
        *(store.create(e, created) for e in ids), return_exceptions=True
    )
    assert all(m is None or isinstance(m, ErrandExists) for m in made), made  # (earlier runs)
    # the same worker names as in every earlier run: the leases are theirs again
    held = await asyncio.gather(*(store.acquire(e, f"w{i}", 3600.0) for i, e in enumerate(ids)))
    assert all(held)
    out.write("ready\n")
    out.flush()

    async def appender(k: int) -> None:
        errand_id = ids[k % errands]
        owner = f"w{k % errands}" if k % 2 == 0 else None  # owners and outsiders
        n = 0
        while True:
            n += 1
            marker = f"{run}.{k}.{n}"
            count = 1 + (n % 3)
            pad = "z" * 20_000 if n % 40 == 0 else ""  # now and then a blob
            events = [
                ev.ToolResult(
                    call_id=f"c{k}", tool="t", ok=True,
                    content=ev.Content(
                        text=f"{marker}/{i}/{count} {pad}", provenance=Provenance(kind="tool")
                    ),
                )
                for i in range(count)
            ]
            seqs = await store.append(errand_id, events, owner=owner)
            out.write(f"ack {errand_id} {seqs[0]} {marker} {count}\n")
            out.flush()

    await asyncio.gather(*(appender(k) for k in range(appenders)))


asyncio.run(main())
"""


def _start(path: Path, run: str, env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    env = child_env(env, fault=env_extra.get("ERRANDS_FAULT"))  # arms the fault points
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), run, "24", "160"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "ready\n":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the writer did not start: {line!r}\n{err}")
    return proc


def _acks(stdout: str) -> list[tuple[str, int, str, int]]:
    """The complete ack lines (a line cut short by the kill is not an ack)."""
    acks = []
    for line in stdout.splitlines(keepends=True):
        parts = line.split()
        if line.endswith("\n") and len(parts) == 5 and parts[0] == "ack":
            acks.append((parts[1], int(parts[2]), parts[3], int(parts[4])))
    return acks


def _check(path: Path, acked: list[tuple[str, int, str, int]]) -> None:
    """Every acknowledged append is there, once; nothing is half-written."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()

    async def read_all() -> dict[str, list[tuple[int, ev.Event]]]:
        store = SQLiteStore(path)  # recovers the WAL as a restarted process would
        try:
            assert await store.integrity_check() == []  # projections equal the fold
            ids = [v.id for v in await store.list_errands(limit=10_000)]
            # read parses every row and asserts the log has no gaps
            return {e: [(s.seq, s.event) for s in await store.read(e)] for e in ids}
        finally:
            await store.close()

    logs = asyncio.run(read_all())
    # marker -> its parts as stored: (errand, seq, part number, part count)
    appends: dict[str, list[tuple[str, int, int, int]]] = defaultdict(list)
    for errand_id, log in logs.items():
        assert [seq for seq, _ in log] == list(range(1, len(log) + 1)), errand_id
        for seq, event in log[1:]:
            assert isinstance(event, ev.ToolResult), (errand_id, seq)
            marker, part, of = event.content.text.split(" ", 1)[0].split("/")
            appends[marker].append((errand_id, seq, int(part), int(of)))
    # atomic appends: all parts of an append, in order, at consecutive sequence numbers
    for marker, parts in appends.items():
        (errand_id, first, _, count), *_ = parts
        assert len(parts) == count, f"append {marker} is half there: {parts}"
        assert parts == [(errand_id, first + i, i, count) for i in range(count)], marker
    # durable acknowledgements: each one is there, where it was said to be
    for errand_id, seq, marker, count in acked:
        assert marker in appends, f"acknowledged append {marker} was lost"
        assert appends[marker][0][:2] == (errand_id, seq), marker
        assert len(appends[marker]) == count
    # each appender ("RUN.K"; its appends are RUN.K.1, RUN.K.2, ... one at a time, to one
    # errand): all there in the order made, no gap, no repeat -- every acknowledged one
    # and at most the one in flight when the kill came
    made: dict[str, list[tuple[str, int, int]]] = defaultdict(list)  # (errand, seq, n)
    for marker, ((errand_id, first, _, _), *_) in appends.items():
        appender, _, n = marker.rpartition(".")
        made[appender].append((errand_id, first, int(n)))
    last_acked: dict[str, int] = defaultdict(int)
    for _, _, marker, _ in acked:
        appender, _, n = marker.rpartition(".")
        last_acked[appender] = max(last_acked[appender], int(n))
    for appender in made.keys() | last_acked.keys():
        stored = sorted(made[appender], key=lambda part: part[1])
        assert len({errand_id for errand_id, _, _ in stored}) == 1, (appender, stored)
        numbers = [n for _, _, n in stored]
        assert numbers == list(range(1, len(numbers) + 1)), (
            f"appender {appender}: its appends are not all there once, in order: {numbers}"
        )
        acked_up_to = last_acked[appender]
        assert acked_up_to <= len(numbers) <= acked_up_to + 1, (appender, acked_up_to, numbers)


def _kill_at_random(path: Path, run: str, delay: float) -> list[tuple[str, int, str, int]]:
    proc = _start(path, run, {})
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the appends are under way (however busy the machine)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return _acks(first + out)


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("ERRANDS_KILL_SEED", DEFAULT_SEED))
    print(f"kill times from ERRANDS_KILL_SEED={seed}")  # (shown when the test fails)
    return random.Random(seed)


@pytest.mark.timeout(240)
def test_sigkill_at_random_times_loses_no_acknowledged_append(
    tmp_path: Path, rng: random.Random
) -> None:
    path = tmp_path / "kill.db"
    acked: list[tuple[str, int, str, int]] = []
    for run in range(4):
        delay = rng.uniform(0.2, 1.5)
        got = _kill_at_random(path, f"r{run}", delay)
        assert got, f"the writer acknowledged nothing in {delay:.2f}s"
        acked += got
        _check(path, acked)  # checked after each kill, on the accumulated log


@pytest.mark.timeout(240)
@pytest.mark.parametrize("nth_batch", [8, 40, 150])
def test_a_kill_between_a_batch_and_its_commit_loses_nothing_acknowledged(
    tmp_path: Path, nth_batch: int, rng: random.Random
) -> None:
    path = tmp_path / "fault.db"
    # a first run leaves committed work behind, then the faulted run dies mid-batch
    acked = _kill_at_random(path, "r0", rng.uniform(0.2, 0.8))
    proc = _start(path, "r1", {"ERRANDS_FAULT": f"mid_batch:{nth_batch}"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the fault point did not fire: {err}"
    acked += _acks(out)
    _check(path, acked)
