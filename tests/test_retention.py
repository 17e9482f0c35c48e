"""Retention (issue 21, item 3): finished errands compacted to their request, result, cost
and a summary; schedule runs and watch items trimmed; the file given back its pages --
through the real CLI and the real SQLite store on disk.

The guarantee that matters most -- an errand that is running, waiting for a person or
sleeping is never compacted -- is checked by a hypothesis test that drives errands
through every state under a clock it moves, running retention in between; its negative
controls inject a retention that ignores the state (a subclass) and a compaction guard
that accepts anything (a parameter), and the same check catches each.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from errands.clock import FakeClock
from errands.config import RetentionSettings
from errands.core import events as ev
from errands.core.labels import Provenance
from errands.core.states import TERMINAL
from errands.engine.retention import Retention
from errands.errors import StoreError
from errands.store.protocol import AppendCheck
from errands.store.retention import RetentionPlan
from errands.store.sqlite import SQLiteStore

DAY = 86400.0
RULES = RetentionSettings(keep_days=1.0, schedule_runs=3)


def file_bytes(home: Path) -> dict[str, bytes]:
    """The store's files, byte for byte (the -shm is SQLite's scratch: left out)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(home.glob("errands.sqlite*"))
        if not p.name.endswith("-shm")
    }


# --- through the CLI --------------------------------------------------------------------


def test_gc_compacts_finished_errands_and_every_cost_figure_stays(cli: CLI, home: Path) -> None:
    (home / "errands.toml").write_text(
        '[prices."scripted:demo"]\ninput = 2.0\noutput = 10.0\n'
        "[retention]\nkeep_days = 0.000001\n"  # (0.09 s)
    )
    ran = json.loads(cli("demo", "--json").stdout)
    ids = [ran["id"]]
    before = {i: json.loads(cli("show", i, "--json").stdout) for i in ids}
    cost_before = json.loads(cli("cost", "--json").stdout)

    snapshot = file_bytes(home)
    dry = cli("gc", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and plan["errands"] == 1 and plan["events"] > 10
    assert file_bytes(home) == snapshot, "a dry run changed the store"

    done = json.loads(cli("gc", "--json").stdout)
    assert done["errands"] == 1 and done["events"] > 0 and done["bytes"] > 0
    assert done["auto_vacuum"] == "incremental"
    assert done["file_bytes_after"] <= done["file_bytes_before"]
    assert json.loads(cli("cost", "--json").stdout) == cost_before  # to the last digit
    for errand_id in ids:
        after = json.loads(cli("show", errand_id, "--json").stdout)
        for key in ("status", "result", "usage", "cost_usd", "steps", "title", "created_at"):
            assert after[key] == before[errand_id][key], key
        (compacted,) = [e for e in after["events"] if e["type"] == "errand_compacted"]
        assert compacted["events"] == len(before[errand_id]["events"])
        assert "4 model turns" in compacted["summary"]
        shown = cli("show", errand_id).stdout
        assert "compacted by retention" in shown and "model turns" in shown
        assert before[errand_id]["result"].split()[0] in shown
    again = json.loads(cli("gc", "--json").stdout)
    assert again["errands"] == 0  # compacted once
    refused = cli("tell", ids[0], "and another list, please")
    assert refused.returncode != 0 and "compacted by retention" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_gc_text_output_and_a_store_from_before_retention(cli: CLI, home: Path) -> None:
    # a store file made before retention: auto_vacuum off -- gc says how to switch it
    home.mkdir(exist_ok=True)
    with closing(sqlite3.connect(home / "errands.sqlite")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE placeholder (x)")  # (not empty: the mode stays NONE)
    result = cli("gc", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would compact 0 finished errands" in result.stdout
    assert "errands gc --vacuum" in result.stdout
    switched = cli("gc", "--vacuum", "--json")
    assert switched.returncode == 0, switched.stderr
    assert json.loads(switched.stdout)["auto_vacuum"] == "incremental"


# --- in the store -----------------------------------------------------------------------


def _content(text: str) -> ev.Content:
    return ev.Content(text=text, provenance=Provenance(kind="user"))


def _created(clock: FakeClock, text: str = "find a flat") -> ev.ErrandCreated:
    return ev.ErrandCreated(
        title=text, content=_content(text), model="sim/m", workspace="/tmp/w", at=clock.wall()
    )


def _step(action: str, clock: FakeClock, n: int) -> list[ev.Event]:
    """Events that put an errand in a state (appended by an outsider: no lease)."""
    at = clock.wall()
    usage = ev.Usage(input_tokens=100 + n, output_tokens=10, cost_usd=0.001 * (n % 7 + 1))
    match action:
        case "run":
            return [ev.ModelRequested(model="sim/m", tools_hash="h", at=at)]
        case "answer":
            call = ev.ToolCall(call_id=f"c{n}", name="lookup", arguments={"q": "x" * 500})
            return [
                ev.ModelResponded(
                    request_seq=1, model="sim/m", tool_calls=[call], usage=usage, at=at
                ),
                ev.ToolResult(
                    call_id=f"c{n}", tool="lookup", ok=True, content=_content("y" * 3000), at=at
                ),
            ]
        case "ask":
            return [
                ev.ApprovalRequested(
                    call_id=f"a{n}",
                    tool="send",
                    arguments={"to": "bob"},
                    args_hash="h",
                    effect=ev.EffectClass.external,
                    reason="ask",
                    rule="r",
                    at=at,
                )
            ]
        case "sleep":
            return [ev.Sleeping(call_id=f"s{n}", tool="wait", wake_at=at + 30 * DAY, at=at)]
        case "done" | "failed" | "needs_attention":
            return [ev.StateChanged(state=action, result=_content(f"result {n}"), at=at)]
        case "cancel":
            return [ev.CancelRequested(reason="no longer needed", at=at)]
        case "message":
            return [ev.UserMessage(content=_content(f"also {n}"), at=at)]
    raise AssertionError(action)


ACTIONS = (
    "run",
    "answer",
    "ask",
    "sleep",
    "done",
    "failed",
    "cancel",
    "message",
    "needs_attention",
)


class IgnoresState(Retention):
    """The control: a retention that compacts every errand, whatever its state."""

    async def plan(self) -> tuple[RetentionPlan, float]:
        plan, cutoff = await super().plan()
        every = tuple(v.id for v in await self.store.list_errands(limit=1000))
        return RetentionPlan(
            every, every, 0, 0, 0, 0, 0, plan.file_bytes, plan.free_bytes, plan.auto_vacuum
        ), cutoff

    def guard(self, plan: RetentionPlan, cutoff: float) -> AppendCheck:
        return lambda view: None


class Model:
    """What the test expects of each errand: its log (built from what it appended), its
    state before each retention run."""

    def __init__(self) -> None:
        self.logs: dict[str, list[str]] = {}
        self.compacted: set[str] = set()


async def _world(
    path: Path, script: list[tuple[int, str, float]], retention: type[Retention]
) -> list[str]:
    """Run *script* -- (errand, action, hours to advance) -- with retention after every
    step; return the errands it compacted while they were not finished (the violations)."""
    clock = FakeClock()
    store = SQLiteStore(path, clock=clock)
    model = Model()
    violations: list[str] = []
    try:
        for i in range(4):
            await store.create(f"e{i}", _created(clock))
            model.logs[f"e{i}"] = ["errand_created"]
        for n, (which, action, hours) in enumerate(script):
            errand_id = f"e{which}"
            if errand_id not in model.compacted:
                events = _step(action, clock, n)
                try:
                    await store.append(errand_id, events)
                except StoreError:
                    pass
                else:
                    model.logs[errand_id] += [e.type for e in events]
            clock.advance(hours * 3600)
            states = {i: (await store.view(i)).state for i in model.logs}
            await retention(store, RULES, clock=clock).run()
            for errand_id, expected in model.logs.items():
                view = await store.view(errand_id)
                log = [s.event.type for s in await store.read(errand_id)]
                if errand_id in model.compacted:
                    continue
                if view.compacted:
                    if states[errand_id] not in TERMINAL:
                        violations.append(f"{errand_id} compacted while {states[errand_id]}")
                    assert view.state is states[errand_id] or states[errand_id] not in TERMINAL
                    model.compacted.add(errand_id)
                    continue
                assert log == expected, f"{errand_id}: its log changed without compaction"
        assert await store.integrity_check() == []
    finally:
        await store.close()
    return violations


steps = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(ACTIONS), st.sampled_from([0, 1, 30])),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=steps)
def test_a_running_waiting_or_sleeping_errand_is_never_compacted(
    tmp_path_factory: pytest.TempPathFactory, script: list[tuple[int, str, float]]
) -> None:
    path = tmp_path_factory.mktemp("r") / "errands.sqlite"
    assert asyncio.run(_world(path, script, Retention)) == []


# every unfinished state, a day and more after its last event (e1-e3 stay queued)
UNFINISHED = {
    "running": [(0, "run", 30)],
    "waiting_approval": [(0, "ask", 30)],
    "sleeping": [(0, "sleep", 30)],
    "needs_attention": [(0, "needs_attention", 30)],
}


@pytest.mark.parametrize("state", list(UNFINISHED))
def test_negative_control_a_retention_that_ignores_state_is_caught(
    tmp_path: Path, state: str
) -> None:
    script = UNFINISHED[state]
    assert asyncio.run(_world(tmp_path / "ok.sqlite", script, Retention)) == []
    caught = asyncio.run(_world(tmp_path / "control.sqlite", script, IgnoresState))
    assert f"e0 compacted while {state}" in caught and "e1 compacted while queued" in caught


async def _reopened_meanwhile(
    path: Path, guard: Callable[[RetentionPlan, float], AppendCheck] | None
) -> Any:
    """An errand finished long ago is planned for compaction; a message reopens it
    before the compaction runs."""
    clock = FakeClock()
    store = SQLiteStore(path, clock=clock)
    try:
        await store.create("e0", _created(clock))
        await store.append("e0", _step("answer", clock, 1) + _step("done", clock, 1))
        clock.advance(3 * DAY)
        retention = Retention(store, RULES, clock=clock)
        plan, cutoff = await retention.plan()
        assert plan.errands == ("e0",)
        await store.append("e0", _step("message", clock, 2))  # (queued again)
        check = (guard or retention.guard)(plan, cutoff)
        try:
            await store.compact("e0", check)
        except StoreError as exc:
            return str(exc)
        return await store.view("e0")
    finally:
        await store.close()


def test_the_guard_runs_in_the_compaction_transaction(tmp_path: Path) -> None:
    refused = asyncio.run(_reopened_meanwhile(tmp_path / "a.sqlite", None))
    assert refused == "errand e0 is queued: only a finished one"
    # the control: a guard that accepts anything compacts an errand a person just reopened
    view = asyncio.run(_reopened_meanwhile(tmp_path / "b.sqlite", lambda plan, cut: lambda v: None))
    assert not isinstance(view, str) and view.compacted


async def _schedules_and_items(path: Path) -> tuple[list[Any], list[int]]:
    clock = FakeClock()
    store = SQLiteStore(path, clock=clock)
    try:
        from errands.core.schedules import ScheduleSpec, ScheduleStatus
        from errands.store.protocol import Firing, NewRun, ScheduleRow

        spec = ScheduleSpec.model_validate(
            {"name": "daily", "kind": "every", "every": 86400.0, "text": "report"}
        )
        await store.add_schedule(
            ScheduleRow(spec, False, clock.wall(), clock.wall(), ScheduleStatus(), clock.wall())
        )
        for day in range(6):
            row = await store.schedule("daily")
            run = NewRun(
                slot=clock.wall(), missed=0, errand_id=f"run{day}", created=_created(clock)
            )
            later = clock.wall() + DAY
            fired = await store.fire(Firing("daily", row.version, later, later, row.status, [run]))
            row = await store.schedule("daily")
            new = [f"item{day}"] if row.status.baseline else None
            seen = Firing(
                "daily", row.version, later, later, row.status, items=[f"item{day}"], expect_new=new
            )
            assert not (await store.fire(seen)).stale
            assert fired.started == (f"run{day}",)
            await store.append(f"run{day}", _step("answer", clock, day) + _step("done", clock, day))
            clock.advance(DAY)
        clock.advance(3 * DAY)  # (the first items unseen for 8 days: past the 7-day window)
        report = await Retention(
            store, RetentionSettings(keep_days=365, schedule_runs=3), clock=clock
        ).run()
        runs = await store.schedule_runs("daily", 100)
        left = [i for i in range(6) if (await store.view(f"run{i}")).compacted]
        assert await store.integrity_check() == []
        return [report, runs], left
    finally:
        await store.close()


def test_schedules_keep_their_last_runs_and_watch_items_their_window(tmp_path: Path) -> None:
    (report, runs), compacted = asyncio.run(_schedules_and_items(tmp_path / "s.sqlite"))
    assert [r.errand_id for r in runs] == ["run5", "run4", "run3"]
    assert compacted == [0, 1, 2]  # the runs past the last 3, young as they are
    assert report.runs == 3 and report.errands == 3
    assert report.items == 2  # item0, item1: not seen for more than 7 days


def test_a_week_of_a_watch_and_daily_schedules_stays_under_its_bound(tmp_path: Path) -> None:
    """The small version of bench/retention_sim.py: half a day of a 10-second watch
    whose page changes every 20 minutes and 20 daily schedules, with retention keeping
    finished errands 2 hours and each schedule's last 3 runs."""
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    import retention_sim  # (bench/ is not a package)

    result = asyncio.run(
        retention_sim.simulate(
            tmp_path,
            days=0.5,
            watch_every=10.0,
            schedules=20,
            change_every=1200.0,
            rules=RetentionSettings(keep_days=2 / 24, schedule_runs=3),
        )
    )
    assert result.runs >= 36  # the watch's changes (and the schedules due in half a day)
    last = result.samples[-1]
    assert last.compacted >= last.errands - 8  # only the last 2 hours' runs kept in full
    # measured: 2.4 MB at most with the hour's WAL, 0.3 MB for the file, 0.3 MB at the end
    assert result.max_bytes < 4_000_000, result.max_bytes
    assert result.max_file_bytes < 600_000, result.max_file_bytes
    assert result.end_bytes < 600_000, result.end_bytes


# --- a kill in the middle -----------------------------------------------------------------


async def _finished_errands(path: Path, count: int) -> None:
    store = SQLiteStore(path)
    clock = FakeClock(wall=time.time() - 3 * DAY)
    try:
        for i in range(count):
            await store.create(f"e{i:03}", _created(clock, f"errand {i}"))
            await store.append(f"e{i:03}", _step("answer", clock, i) + _step("done", clock, i))
    finally:
        await store.close()


async def _after(path: Path) -> tuple[list[str], dict[str, Any], list[Any]]:
    store = SQLiteStore(path)
    try:
        views = {v.id: v for v in await store.list_errands(limit=1000)}
        usage = sorted((u.errand_id, u.at, u.usage.cost_usd) for u in await store.usage())
        return await store.integrity_check(), views, usage
    finally:
        await store.close()


def _compacted_so_far(path: Path) -> int:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(
            db.execute("SELECT count(*) FROM events WHERE type = 'errand_compacted'").fetchone()[0]
        )


def _whole(db: Path, full: dict[str, Any], usage: list[Any]) -> list[str]:
    """Check the store after a kill: every projection the fold of its log, every cost row
    there, each errand either as it was or compacted with the same outcome; the ids of
    the compacted ones."""
    problems, views, usage_after = asyncio.run(_after(db))
    assert problems == []  # every projection is the fold of its log, spend matches
    assert usage_after == usage  # not a cent lost
    assert views.keys() == full.keys()
    for errand_id, view in views.items():  # each one whole: full, or compacted
        before = full[errand_id]
        assert (view.state, view.result, view.usage) == (before.state, before.result, before.usage)
        if not view.compacted:
            assert view.last_seq == before.last_seq
    return [i for i, v in views.items() if v.compacted]


class Killed(BaseException):
    pass


class DeletesFirst(SQLiteStore):
    """The control: a compaction in two transactions -- the old log deleted, then (had
    the process lived) the new one written -- killed between the two."""

    async def compact(self, errand_id: str, guard: AppendCheck) -> Any:
        await self._submit(lambda tx: self._delete_log(tx, errand_id))
        raise Killed


def test_negative_control_a_compaction_in_two_steps_is_caught(tmp_path: Path) -> None:
    db = tmp_path / "errands.sqlite"
    asyncio.run(_finished_errands(db, 3))
    _, full, usage = asyncio.run(_after(db))

    async def gc_and_die() -> None:
        store = DeletesFirst(db)
        try:
            await Retention(store, RULES).run()
        finally:
            await store.close()

    with pytest.raises(Killed):
        asyncio.run(gc_and_die())
    with pytest.raises(AssertionError):
        _whole(db, full, usage)


def test_a_kill_in_the_middle_of_gc_loses_nothing(cli: CLI, home: Path) -> None:
    (home / "errands.toml").write_text("[retention]\nkeep_days = 1\n")
    db = home / "errands.sqlite"
    asyncio.run(_finished_errands(db, 120))
    _, full, usage = asyncio.run(_after(db))
    gc_run = cli.popen("gc")
    try:
        deadline = time.monotonic() + 30
        while _compacted_so_far(db) < 5 and time.monotonic() < deadline:
            time.sleep(0.002)
        gc_run.kill()  # SIGKILL, mid-way
    finally:
        gc_run.wait(30)
    compacted = _whole(db, full, usage)
    assert 5 <= len(compacted) < 120, "the kill did not land mid-way: make the store bigger"
    finished = json.loads(cli("gc", "--json").stdout)  # the next run does the rest
    assert finished["errands"] == 120 - len(compacted)


@pytest.mark.parametrize("applies", [True, False], ids=["on", "control-off"])
def test_errands_up_applies_retention_by_itself(cli: CLI, home: Path, applies: bool) -> None:
    """errands up compacts by itself; the control, a server that does not apply retention
    (enabled = false), fails the same wait."""
    from helpers.server import running, wait_for

    (home / "errands.toml").write_text(
        "[retention]\nkeep_days = 0.00001\nevery_minutes = 0.01\n"  # (0.9 s; every 0.6 s)
        + ("" if applies else "enabled = false\n")
    )
    ran = json.loads(cli("demo", "--json").stdout)
    time.sleep(1.0)  # (past keep_days before the server starts)
    with running(home) as server, server.client() as api:

        def compacted() -> bool:
            shown = json.loads(cli("show", ran["id"], "--json").stdout)["events"]
            return any(e["type"] == "errand_compacted" for e in shown)

        if applies:
            wait_for(compacted, timeout=30, interval=0.3)
            assert api.get(f"/api/errands/{ran['id']}").json()["result"] == ran["result"]
        else:
            with pytest.raises(AssertionError, match="timed out"):
                wait_for(compacted, timeout=2.4, interval=0.3)  # (4 periods)
        assert server.stop() == 0
