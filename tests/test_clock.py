"""Clock steps change nothing that is timed (issue 12, item 6).

A lease, a budget hold and an errand's wall-time limit are durations; they are measured
on the steady clock (:mod:`errands.clock`), which a step of the wall clock -- NTP, a
person fixing the date, a VM resumed -- does not move. The fake clock steps the wall
clock alone, in both directions. The controls measure the same durations on the wall
clock (a store subclass, a loop subclass) and fail.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from helpers.kit import call, harness_for, script

from errands.clock import FakeClock
from errands.config import Settings
from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.states import ErrandState
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.policy.hook import AllowAll
from errands.server.idempotency import KEEP_SECONDS, IdempotencyStore
from errands.store.sqlite import SQLiteStore, leaseclock
from errands.tools.toolset import FunctionToolset

HOUR = 3600.0


class WallLeaseStore(SQLiteStore):
    """The control: leases (and holds) expire on the wall clock, as before."""

    def _lease_now(self) -> float:
        return self.time.wall()


@pytest.fixture(params=[SQLiteStore, WallLeaseStore], ids=["steady", "control-wall"])
def store_class(request: pytest.FixtureRequest) -> type[SQLiteStore]:
    return request.param  # type: ignore[no-any-return]


async def test_a_forward_step_does_not_expire_a_lease(
    tmp_path: Path, settings: Settings, store_class: type[SQLiteStore]
) -> None:
    clock = FakeClock()
    store = store_class(tmp_path / "s.sqlite", clock=clock)
    try:
        eid = await create_errand(store, settings, "x")
        assert await store.acquire(eid, "node-a", 30)
        clock.step_wall(+HOUR)  # NTP jumps: an hour "passes" in an instant
        taken = await store.acquire(eid, "node-b", 30)
        claimed = await store.claim_runnable("node-b", 30, 10)
        if store_class is WallLeaseStore:
            assert taken  # the bug: node-b takes an errand whose calls node-a is running
            return
        assert not taken and claimed == []
        assert (await store.lease_holder(eid) or ("",))[0] == "node-a"
    finally:
        await store.close()


async def test_a_backward_step_does_not_stall_takeover(
    tmp_path: Path, settings: Settings, store_class: type[SQLiteStore]
) -> None:
    clock = FakeClock()
    store = store_class(tmp_path / "s.sqlite", clock=clock)
    try:
        eid = await create_errand(store, settings, "x")
        assert await store.acquire(eid, "node-a", 30)  # and node-a dies
        clock.step_wall(-HOUR)
        clock.advance(31)  # the lease's 30 s have passed
        taken = await store.acquire(eid, "node-b", 30)
        if store_class is WallLeaseStore:
            assert not taken  # the bug: an hour more before anyone may take over
            return
        assert taken
    finally:
        await store.close()


async def test_a_forward_step_does_not_expire_a_budget_hold(
    tmp_path: Path, settings: Settings, store_class: type[SQLiteStore]
) -> None:
    clock = FakeClock()
    store = store_class(tmp_path / "s.sqlite", clock=clock)
    try:
        a = await create_errand(store, settings, "a")
        ra = (await store.append(a, [ev.ModelRequested(model="m", tools_hash="")]))[0]
        assert await store.reserve(a, ra, 0.9, daily_usd=1.0, ttl=60) is None  # a call in flight
        clock.step_wall(+HOUR)
        held = await store.budget(daily_usd=1.0)
        if store_class is WallLeaseStore:
            assert held.reserved_usd == 0  # the bug: the call's hold vanished with the step
            return
        assert held.reserved_usd == pytest.approx(0.9)
    finally:
        await store.close()


async def test_a_new_boot_forgets_the_old_boots_leases(tmp_path: Path, settings: Settings) -> None:
    clock = FakeClock(steady=100_000.0)
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path, clock=clock)
    eid = await create_errand(store, settings, "x")
    assert await store.acquire(eid, "node-a", 30)
    await store.close()
    clock.reboot()  # the steady clock starts again near zero
    store = SQLiteStore(path, clock=clock)
    try:
        assert await store.lease_holder(eid) is None
        assert await store.acquire(eid, "node-b", 30)
    finally:
        await store.close()


async def test_control_without_the_boot_check_the_old_lease_outlives_the_reboot(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leaseclock, "forget_other_boots", lambda conn, clock: False)
    clock = FakeClock(steady=100_000.0)
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path, clock=clock)
    eid = await create_errand(store, settings, "x")
    assert await store.acquire(eid, "node-a", 30)
    await store.close()
    clock.reboot()
    store = SQLiteStore(path, clock=clock)
    try:
        assert not await store.acquire(eid, "node-b", 30)  # held for another ~28 hours
    finally:
        await store.close()


def test_migration_0004_keeps_each_lease_its_time_left(tmp_path: Path) -> None:
    clock = FakeClock(wall=1_800_000_000.0, steady=5_000.0)
    conn = sqlite3.connect(tmp_path / "old.sqlite", isolation_level=None)
    conn.executescript(
        "CREATE TABLE leases (errand_id TEXT PRIMARY KEY, owner TEXT, expires_at REAL);"
        "CREATE TABLE budget_holds (hold TEXT, scope TEXT, nanos INTEGER, expires_at REAL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    )
    conn.execute("INSERT INTO leases VALUES ('e1', 'a', ?)", (clock.wall() + 20,))
    conn.execute("INSERT INTO budget_holds VALUES ('e1#2', 'day', 5, ?)", (clock.wall() + 50,))
    leaseclock.to_lease_clock(conn, clock)
    assert conn.execute("SELECT expires_at FROM leases").fetchone()[0] == pytest.approx(5_020.0)
    held = conn.execute("SELECT expires_at FROM budget_holds").fetchone()[0]
    assert held == pytest.approx(5_050.0)
    assert conn.execute("SELECT value FROM meta").fetchone()[0] == clock.boot_id()


# -- the wall-time limit -------------------------------------------------------------------


class WallElapsedLoop(Loop):
    """The control: an errand's age read off the wall clock."""

    def _elapsed(self, p: Progress) -> float:
        return self.clock.wall() - p.view.created_at


def stepping_tools(clock: FakeClock, seconds: float) -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=ev.EffectClass.read, idempotent=True)
    def lookup(term: str) -> str:
        """Look something up (while it runs, the wall clock is stepped).

        Args:
            term: What.
        """
        clock.step_wall(seconds)
        return "found"

    return reg


@pytest.mark.parametrize("loop_class", [None, WallElapsedLoop], ids=["steady", "control-wall"])
async def test_a_clock_step_during_a_run_does_not_end_it(
    tmp_path: Path, settings: Settings, loop_class: type[Loop] | None
) -> None:
    clock = FakeClock(wall=time.time())  # (the errand's creation is stamped by the host)
    store = SQLiteStore(tmp_path / "s.sqlite", clock=clock)
    try:
        model = script({"tool_calls": [call("lookup", term="x")]}, {"text": "done"})
        tools = stepping_tools(clock, HOUR)
        h = harness_for(store, settings, tools=tools, model=model, policy=AllowAll())
        runner = h.runner(loop_class=loop_class)
        runner.loop.clock = clock
        eid = await create_errand(
            store, settings, "x", model="scripted:demo", limits=ev.Limits(max_wall_seconds=60)
        )
        view = await asyncio.wait_for(runner.run_errand(eid), 30)
        if loop_class is not None:
            assert view.state is ErrandState.failed and "wall-time limit" in view.reason
            return
        assert view.state is ErrandState.done
    finally:
        await store.close()


# -- idempotency keys ------------------------------------------------------------------------


class WallRetention(IdempotencyStore):
    """The control: keys dropped by their age on the wall clock alone."""

    def _purge(self) -> None:
        self._conn.execute(
            "DELETE FROM idempotency WHERE created_at < ?", (self.clock.wall() - KEEP_SECONDS,)
        )


@pytest.mark.parametrize("cls", [IdempotencyStore, WallRetention], ids=["guard", "control"])
async def test_a_forward_step_at_restart_keeps_the_idempotency_keys(
    tmp_path: Path, cls: type[IdempotencyStore]
) -> None:
    clock = FakeClock()
    keys = cls(tmp_path / "server.sqlite", clock=clock)
    await keys.begin("create", "k1", {"text": "x"}, reserve="e1")
    keys.close()
    clock.step_wall(+3 * 24 * HOUR)  # the server restarts with its clock three days ahead
    keys = cls(tmp_path / "server.sqlite", clock=clock)
    try:
        found = await keys.begin("create", "k1", {"text": "x"}, reserve="e2")
        if cls is WallRetention:
            assert found.reserved is None  # forgotten: the retry would create a second errand
            return
        assert found.reserved == "e1"
    finally:
        keys.close()


async def test_idempotency_keys_still_expire_after_a_day(tmp_path: Path) -> None:
    clock = FakeClock()
    keys = IdempotencyStore(tmp_path / "server.sqlite", clock=clock)
    await keys.begin("create", "old", {"text": "x"}, reserve="e1")
    clock.advance(KEEP_SECONDS + 60)
    await keys.begin("create", "new", {"text": "y"}, reserve="e2")
    keys.close()
    keys = IdempotencyStore(tmp_path / "server.sqlite", clock=clock)
    try:
        assert (await keys.begin("create", "old", {"text": "x"}, reserve="e3")).reserved is None
        assert (await keys.begin("create", "new", {"text": "y"}, reserve="e4")).reserved == "e2"
    finally:
        keys.close()
