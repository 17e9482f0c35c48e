"""Errands that wait (issue 15, item 3): the built-in ``wait`` puts an errand to sleep on a
durable timer -- no task, thread or model call meanwhile -- and it wakes when the timer
fires or a message comes, whichever is first, the call's result saying which; after a
restart too, including a timer that fell due while errands was down."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import call, harness_for, script, write_script
from helpers.server import ServerProc, clean_env, wait_for, write_config

from errands.clock import FakeClock
from errands.config import Settings
from errands.core import events as ev
from errands.core.states import ErrandState
from errands.engine.operations import cancel_errand, create_errand, tell_errand
from errands.harness import Harness
from errands.store.base import Tx
from errands.store.sqlite import SQLiteStore

HOUR = 3600.0


class TimerBlindStore(SQLiteStore):
    """The control: claiming as before timers -- runnable errands only."""

    def _free_runnable(self, tx: Tx, limit: int) -> list[str]:
        rows = tx.conn.execute(
            "SELECT e.id FROM errands e LEFT JOIN leases l ON l.errand_id = e.id"
            " WHERE e.state IN ('queued', 'running')"
            " AND (l.owner IS NULL OR l.expires_at <= ?) LIMIT ?",
            (self._lease_now(), limit),
        ).fetchall()
        return [str(r[0]) for r in rows]


def waiting_model(**wait_args: Any) -> Any:
    return script(
        {"text": "I will wait.", "tool_calls": [call("wait", **wait_args)]},
        {"cases": [{"when_seen": "woken early", "text": "got your message"}, {"text": "done"}]},
    )


async def start(
    tmp_path: Path,
    settings: Settings,
    clock: FakeClock,
    store_class: type[SQLiteStore] = SQLiteStore,
    **wait_args: Any,
) -> tuple[SQLiteStore, Harness, str]:
    store = store_class(tmp_path / "s.sqlite", clock=clock)
    h = harness_for(store, settings, model=waiting_model(**wait_args))
    eid = await create_errand(store, settings, "chase the vendor", model="scripted:demo")
    return store, h, eid


async def run(h: Harness, clock: FakeClock, eid: str) -> Any:
    runner = h.runner()
    runner.loop.clock = clock
    return await asyncio.wait_for(runner.run_errand(eid), 30)


@pytest.mark.parametrize("store_class", [SQLiteStore, TimerBlindStore], ids=["timers", "control"])
async def test_it_sleeps_costs_nothing_and_wakes_when_the_timer_fires(
    tmp_path: Path, settings: Settings, store_class: type[SQLiteStore]
) -> None:
    clock = FakeClock(wall=time.time())
    store, h, eid = await start(
        tmp_path, settings, clock, store_class, seconds=2 * HOUR, reason="the reply"
    )
    try:
        view = await run(h, clock, eid)
        assert view.state is ErrandState.sleeping
        assert view.wake_at == pytest.approx(clock.wall() + 2 * HOUR, abs=5)
        assert await store.claim_runnable("node", 30, 10) == []  # not due: nothing to run
        clock.advance(2 * HOUR + 1)
        claimed = await store.claim_runnable("node", 30, 10)
        if store_class is TimerBlindStore:
            assert claimed == []  # the bug a store without timers has: it sleeps forever
            return
        assert claimed == [eid]
        await store.release(eid, "node")
        view = await run(h, clock, eid)
        assert view.state is ErrandState.done and view.result == "done"
        assert view.steps == 2  # one model call before the sleep, one after: none meanwhile
        results = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ToolResult)]
        assert "fired" in results[0].content.text
    finally:
        await store.close()


async def test_a_message_wakes_it_first_and_the_model_reads_it(
    tmp_path: Path, settings: Settings
) -> None:
    clock = FakeClock(wall=time.time())
    store, h, eid = await start(tmp_path, settings, clock, seconds=2 * 86400)
    try:
        assert (await run(h, clock, eid)).state is ErrandState.sleeping
        await tell_errand(store, eid, "they answered: yes")
        assert (await store.view(eid)).state is ErrandState.queued
        view = await run(h, clock, eid)
        assert view.state is ErrandState.done and view.result == "got your message"
        events = [e.event for e in await store.read(eid)]
        transcript = [m.text for m in (await h.runner().loop.load(eid)).messages]
        told = transcript.index("they answered: yes")
        assert "woken early" in transcript[told - 1]  # the model reads the result, then it
        result = next(e for e in events if isinstance(e, ev.ToolResult))
        assert "woken early: a message came" in result.content.text
    finally:
        await store.close()


async def test_a_cancel_ends_the_sleep(tmp_path: Path, settings: Settings) -> None:
    clock = FakeClock(wall=time.time())
    store, h, eid = await start(tmp_path, settings, clock, seconds=60)
    try:
        await run(h, clock, eid)
        await cancel_errand(store, eid)
        clock.advance(120)
        assert await store.claim_runnable("node", 30, 10) == []
        assert (await store.view(eid)).state is ErrandState.cancelled
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ({"seconds": 0}, "more than 0"),
        ({"until": "2026-12-09T09:00:00"}, "no UTC offset"),
        ({"seconds": 5, "until": "2026-12-09T09:00:00+01:00"}, "either seconds or until"),
        ({"until": "next tuesday"}, "not an ISO 8601 time"),
    ],
)
async def test_a_bad_wait_is_a_tool_error_the_model_reads(
    tmp_path: Path, settings: Settings, args: dict[str, Any], says: str
) -> None:
    clock = FakeClock(wall=time.time())
    store, h, eid = await start(tmp_path, settings, clock, **args)
    try:
        view = await run(h, clock, eid)
        assert view.state is ErrandState.done  # the model read the error and finished
        (result,) = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ToolResult)]
        assert not result.ok and says in result.content.text
    finally:
        await store.close()


def test_errands_up_wakes_it_after_a_restart_even_past_its_time(tmp_path: Path) -> None:
    """Real processes: the server puts the errand to sleep, is killed (SIGKILL) while it
    sleeps, stays down past the timer, and wakes it as soon as it is up again."""
    home = tmp_path / "home"
    write_config(home)
    spec = write_script(
        tmp_path / "s.json",
        {"tool_calls": [call("wait", seconds=3, reason="the vendor")]},
        {"text": "followed up"},
    )
    server = ServerProc(home, env=clean_env(home)).start()
    try:
        with server.client() as api:
            eid = api.post("/api/errands", json={"text": "chase", "model": spec}).json()["id"]
            wait_for(lambda: api.get(f"/api/errands/{eid}").json()["status"] == "sleeping")
        server.kill()
        time.sleep(4)  # the timer falls due while no errands runs
        server.start()
        with server.client() as api:
            wait_for(lambda: api.get(f"/api/errands/{eid}").json()["status"] == "done", timeout=15)
            assert api.get(f"/api/errands/{eid}").json()["result"] == "followed up"
    finally:
        server.kill()
    shown = (
        json.loads((home / "server.json").read_text()) if (home / "server.json").exists() else {}
    )
    assert shown.get("pid") != 0


def test_errands_run_says_when_it_wakes(tmp_path: Path) -> None:
    from conftest import CLI

    cli = CLI(tmp_path / "home")
    spec = write_script(
        tmp_path / "s.json",
        {"tool_calls": [call("wait", seconds=7200, reason="the vendor's answer")]},
        {"text": "done"},
    )
    r = cli("run", "chase the vendor", "-m", spec)
    assert r.returncode == 6, r.stdout + r.stderr  # sleeping
    assert "sleeps until" in r.stderr and "errands tell" in r.stderr
    (row,) = json.loads(cli("ls", "--json").stdout)
    assert row["status"] == "sleeping" and row["reason"] == "the vendor's answer"
    assert row["wake_at"] == pytest.approx(time.time() + 7200, abs=60)
