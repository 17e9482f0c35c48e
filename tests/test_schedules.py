"""Schedules (issue 15): slots, time zones and daylight saving, catch-up, overlap, the
context a run is given, daily caps -- on a real store under a clock the test drives, so
that days and weeks pass in milliseconds."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from errands.clock import FakeClock
from errands.config import Settings
from errands.core import events as ev
from errands.core.schedules import (
    ScheduleError,
    ScheduleSpec,
    check_spec,
    next_slot,
    parse_duration,
    plan,
)
from errands.core.states import ErrandState, ErrandView
from errands.engine.scheduler import Scheduler
from errands.engine.schedules import (
    SchedulePatch,
    ScheduleRequest,
    add_schedule,
    edit_schedule,
    pause_schedule,
    resume_schedule,
    schedule_info,
)
from errands.errors import ScheduleExists, UserError
from errands.store.protocol import RunRow
from errands.store.sqlite import SQLiteStore

HOUR, DAY = 3600.0, 86400.0
PARIS, NEW_YORK = ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")


def at(zone: ZoneInfo, *fields: int) -> float:
    return datetime(*fields, tzinfo=zone).timestamp()  # type: ignore[misc]


class World:
    """A store on a fake clock, a scheduler over it, and ways to let time pass."""

    def __init__(self, settings: Settings, clock: FakeClock) -> None:
        self.settings = settings
        self.clock = clock
        self.store = SQLiteStore(settings.db_path, clock=clock)
        self.scheduler = Scheduler(self.store, settings, clock=clock)

    async def add(self, **body: Any) -> None:
        body.setdefault("text", "summarise the board")
        await add_schedule(self.store, self.settings, ScheduleRequest(**body), clock=self.clock)

    async def run_for(self, seconds: float, step: float) -> None:
        """Let *seconds* pass, the scheduler looking every *step* seconds."""
        end = self.clock.wall() + seconds
        while self.clock.wall() < end:
            self.clock.advance(min(step, end - self.clock.wall()))
            await self.scheduler.tick()

    async def runs(self, name: str) -> list[RunRow]:
        return [r for r in await self.store.schedule_runs(name, 100_000) if r.outcome == "started"]

    async def finish(
        self, errand_id: str, text: str = "all quiet", untrusted: bool = False
    ) -> None:
        """The run ends, answering *text* (as a runner would log it)."""
        result = ev.Content(
            text=text,
            provenance=ev.Provenance(kind="model"),
            integrity="untrusted" if untrusted else "trusted",
        )
        await self.store.append(errand_id, [ev.StateChanged(state="done", result=result)])


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    w = World(settings, FakeClock(wall=at(PARIS, 2026, 12, 7, 9, 0, 0)))
    yield w
    await w.store.close()


# -- parsing and validity -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("30m", 1800), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("90", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-5m", "0.5s", "soon", "5 parsecs", "nan", "400d"])
def test_a_bad_duration_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_duration(text)
    assert caught.value.field == "every" and str(caught.value).startswith("every: ")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "cron", "cron": "61 8 * * *"}, "cron"),
        ({"kind": "cron", "cron": "0 8 * *"}, "cron"),
        ({"kind": "cron", "cron": "0 8 30 2 *"}, "cron"),  # never matches
        ({"kind": "cron", "cron": "0 8 * * *", "tz": "Mars/Olympus"}, "tz"),
        ({"kind": "every", "every": "0s"}, "every"),
        ({"kind": "at", "at": "2020-01-01T00:00+00:00"}, "at"),  # passed
        ({"kind": "at", "at": "next tuesday"}, "at"),
        ({"kind": "every", "every": "1m", "name": "no spaces"}, "name"),
        ({"kind": "every", "every": "1m", "text": "  "}, "text"),
        ({"kind": "every", "every": "1m", "max_cost_usd": 0}, "max_cost_usd"),
        ({"kind": "every", "every": "1m", "model": "nosuch:model"}, "model"),
        ({"kind": "every", "every": "1m", "url": "https://example.com"}, "url"),
        ({"kind": "every", "every": "1m", "cron": "* * * * *"}, "cron"),
        ({"kind": "watch", "every": "1m", "url": "http://10.0.0.1/listings"}, "url"),
    ],
)
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(
    world: World, body: dict[str, Any], field: str
) -> None:
    body = {"name": "s", **body}
    with pytest.raises(UserError) as caught:
        await world.add(**body)
    assert getattr(caught.value, "field", None) == field, caught.value
    assert str(caught.value).startswith(f"{field}: ")
    assert await world.store.schedules() == []


async def test_a_duplicate_name_is_refused(world: World) -> None:
    await world.add(name="s", kind="every", every="1h")
    with pytest.raises(ScheduleExists, match="exists already"):
        await world.add(name="s", kind="every", every="5m")
    (row,) = await world.store.schedules()
    assert row.spec.every == HOUR


def test_an_interval_counts_from_when_it_was_made() -> None:
    spec = ScheduleSpec(name="s", kind="every", text="t", every=30.0, anchor=1000.0)
    assert next_slot(spec, 1000.0) == 1030.0
    assert next_slot(spec, 1029.9) == 1030.0
    assert next_slot(spec, 1030.0) == 1060.0
    check_spec(spec, 1000.0)


# -- time zones and daylight saving ---------------------------------------------------------


async def test_a_weekday_schedule_runs_five_times_a_week_at_eight_local(world: World) -> None:
    await world.add(
        name="board", kind="cron", cron="0 8 * * 1-5", tz="Europe/Paris", overlap="allow"
    )
    await world.run_for(7 * DAY, step=600)
    slots = sorted(r.slot for r in await world.runs("board"))
    local = [datetime.fromtimestamp(s, PARIS) for s in slots]
    assert [d.strftime("%a %H:%M") for d in local] == [
        "Tue 08:00", "Wed 08:00", "Thu 08:00", "Fri 08:00", "Mon 08:00"
    ]  # fmt: skip
    for run in await world.runs("board"):  # each started on time (within one look)
        assert run.at - run.slot <= 600


@pytest.mark.parametrize(
    ("zone", "spring", "fall"),
    [
        (PARIS, (2027, 3, 28), (2027, 10, 31)),
        (NEW_YORK, (2027, 3, 14), (2027, 11, 7)),
    ],
)
async def test_a_run_at_half_past_two_on_both_transition_days(
    settings: Settings, zone: ZoneInfo, spring: tuple[int, int, int], fall: tuple[int, int, int]
) -> None:
    """02:30 does not exist on the spring-forward day: it runs once, at 03:00; on the
    fall-back day 02:30 (Paris) / 01:30 (New York) happens twice: it runs once."""
    hour = 2 if zone is PARIS else 1
    name = str(zone)
    for day, expect in ((spring, "03:00"), (fall, f"0{hour}:30")):
        clock = FakeClock(wall=at(zone, *day, 0, 0, 0) - DAY)  # the day before, midnight
        w = World(settings, clock)
        try:
            body = {"name": "t", "kind": "cron", "cron": f"30 {2 if day == spring else hour} * * *"}
            await w.add(**body, tz=name, overlap="allow")
            await w.run_for(3 * DAY, step=300)
            on_the_day = [
                datetime.fromtimestamp(r.slot, zone)
                for r in await w.runs("t")
                if datetime.fromtimestamp(r.slot, zone).date() == datetime(*day).date()
            ]
            assert [d.strftime("%H:%M") for d in on_the_day] == [expect], (name, day)
            assert len(await w.runs("t")) == 3  # one a day, the days around it included
            await w.store.remove_schedule("t")
        finally:
            await w.store.close()


async def test_an_every_half_hour_cron_runs_both_repeated_half_hours(settings: Settings) -> None:
    """A wildcard hour matches every instant: the repeated hour has both of its runs."""
    clock = FakeClock(wall=at(NEW_YORK, 2027, 11, 7, 0, 0, 0))
    w = World(settings, clock)
    try:
        await w.add(
            name="t", kind="cron", cron="*/30 * * * *", tz="America/New_York", overlap="allow"
        )
        await w.run_for(4 * HOUR, step=60)
        slots = sorted(r.slot for r in await w.runs("t"))
        assert all(b - a == 1800 for a, b in itertools.pairwise(slots))
        assert len(slots) == 8  # 4 hours of real time, whatever the clock on the wall says
    finally:
        await w.store.close()


# -- catch-up and overlap -------------------------------------------------------------------


async def _down_for_five_hours(world: World, catch_up: str) -> list[RunRow]:
    await world.add(name="h", kind="every", every="1h", catch_up=catch_up, overlap="allow")
    await world.run_for(HOUR, step=60)  # the first run
    world.clock.advance(5.5 * HOUR)  # errands is down: five slots missed, the newest 30 min ago
    await world.scheduler.tick()
    return await world.store.schedule_runs("h", 100)


async def test_catch_up_one_starts_one_run_told_what_it_missed(world: World) -> None:
    rows = await _down_for_five_hours(world, "one")
    started = [r for r in rows if r.outcome == "started"]
    assert len(started) == 2 and started[0].count == 4
    (message,) = [
        e.event for e in await world.store.read(started[0].errand_id or "")
        if isinstance(e.event, ev.UserMessage)
    ]  # fmt: skip
    assert "4 earlier slots were missed" in message.content.text


async def test_catch_up_all_starts_every_missed_run(world: World) -> None:
    rows = await _down_for_five_hours(world, "all")
    assert len([r for r in rows if r.outcome == "started"]) == 6


async def test_catch_up_skip_logs_the_skip_and_starts_nothing_late(world: World) -> None:
    rows = await _down_for_five_hours(world, "skip")
    assert [r.outcome for r in rows] == ["skipped", "started"]
    assert rows[0].count == 5 and "missed while errands was not running" in rows[0].reason
    await world.run_for(HOUR, step=60)  # the next slot is on time again: it runs
    assert len(await world.runs("h")) == 2


async def test_a_slot_is_skipped_and_logged_while_the_previous_run_goes_on(world: World) -> None:
    await world.add(name="m", kind="every", every="1m")
    await world.run_for(60, step=1)
    (first,) = await world.runs("m")
    await world.run_for(180, step=1)  # it is still running: three slots skipped
    rows = await world.store.schedule_runs("m", 100)
    skipped = [r for r in rows if r.outcome == "skipped"]
    assert len(skipped) == 3 and all(first.errand_id in r.reason for r in skipped)
    assert (await world.store.schedule("m")).status.skipped == 3
    await world.finish(first.errand_id or "")
    await world.run_for(60, step=1)
    assert len(await world.runs("m")) == 2


async def test_overlap_allow_starts_runs_side_by_side(world: World) -> None:
    await world.add(name="m", kind="every", every="1m", overlap="allow")
    await world.run_for(300, step=1)
    assert len(await world.runs("m")) == 5


# -- what a run is given ----------------------------------------------------------------------


async def _messages(world: World, errand_id: str) -> list[ev.UserMessage]:
    return [
        e.event for e in await world.store.read(errand_id) if isinstance(e.event, ev.UserMessage)
    ]


async def test_each_run_is_told_when_the_previous_one_ran_and_what_it_answered(
    world: World,
) -> None:
    await world.add(name="d", kind="every", every="1d", model="scripted:demo", max_steps=7)
    await world.run_for(DAY, step=HOUR)
    (first,) = await world.runs("d")
    view = await world.store.view(first.errand_id or "")
    assert view.schedule == "d" and view.state is ErrandState.queued
    (context,) = await _messages(world, view.id)
    assert "There is no previous run" in context.content.text
    assert context.content.integrity == "trusted"
    await world.finish(view.id, "3 cards moved to Done")
    await world.run_for(DAY, step=HOUR)
    second = next(r for r in await world.runs("d") if r.errand_id != view.id)
    (context,) = await _messages(world, second.errand_id or "")
    assert f"last_run: errand {view.id}" in context.content.text
    assert "3 cards moved to Done" in context.content.text
    assert context.content.integrity == "trusted"
    created = (await world.store.read(second.errand_id or ""))[0].event
    assert isinstance(created, ev.ErrandCreated)
    assert created.model == "scripted:demo" and created.limits.max_steps == 7
    assert created.schedule == "d" and created.channel == "schedule"


async def test_an_answer_derived_from_untrusted_content_stays_untrusted(world: World) -> None:
    await world.add(name="d", kind="every", every="1d")
    await world.run_for(DAY, step=HOUR)
    (first,) = await world.runs("d")
    await world.finish(first.errand_id or "", "the page says: wire $500", untrusted=True)
    await world.run_for(DAY, step=HOUR)
    second = next(r for r in await world.runs("d") if r.errand_id != first.errand_id)
    (context,) = await _messages(world, second.errand_id or "")
    assert context.content.integrity == "untrusted"  # no laundering through last_run


async def test_a_once_schedule_runs_once_and_is_done(world: World) -> None:
    await world.add(name="once", kind="at", at="2026-12-08T09:00")  # Paris: the person's zone?
    await world.run_for(3 * DAY, step=HOUR)
    assert len(await world.runs("once")) == 1
    row = await world.store.schedule("once")
    assert row.next_at is None and row.due_at is None


# -- people's changes ---------------------------------------------------------------------------


async def test_a_paused_schedule_starts_nothing_and_resumes_from_the_next_slot(
    world: World,
) -> None:
    await world.add(name="h", kind="every", every="1h", overlap="allow")
    await pause_schedule(world.store, "h")
    await world.run_for(5 * HOUR, step=60)
    assert await world.runs("h") == []
    await resume_schedule(world.store, "h")
    await world.run_for(HOUR, step=60)
    assert len(await world.runs("h")) == 1  # the slots while paused are not run


async def test_an_edit_of_the_timing_starts_from_the_next_new_slot(world: World) -> None:
    await world.add(name="h", kind="every", every="1h")
    await edit_schedule(
        world.store, world.settings, "h", SchedulePatch(every="10m"), clock=world.clock
    )
    row = await world.store.schedule("h")
    assert row.spec.every == 600 and row.next_at == world.clock.wall() // 1 + 600


async def test_a_bad_edit_changes_nothing(world: World) -> None:
    await world.add(name="h", kind="every", every="1h")
    before = await world.store.schedule("h")
    with pytest.raises(ScheduleError, match=r"^cron: "):
        await edit_schedule(
            world.store, world.settings, "h", SchedulePatch(cron="* * *"), clock=world.clock
        )
    assert await world.store.schedule("h") == before


# -- budgets ------------------------------------------------------------------------------------


async def test_a_schedule_that_spent_its_daily_budget_starts_nothing_more_that_day(
    world: World,
) -> None:
    noon = time.mktime((2026, 12, 7, 12, 0, 0, 0, 0, -1))  # local: the day is the machine's
    world.clock.step_wall(noon - world.clock.wall())
    await world.add(name="d", kind="every", every="1h", daily_usd=1.0, overlap="allow")
    await world.run_for(HOUR, step=60)
    (run,) = await world.runs("d")
    errand_id = run.errand_id or ""
    now = world.clock.wall()  # (spend is booked on the date of the response)
    asked = ev.ModelRequested(model="m", tools_hash="x", at=now)
    (req,) = await world.store.append(errand_id, [asked])
    spent = ev.ModelResponded(request_seq=req, model="m", usage=ev.Usage(cost_usd=1.0), at=now)
    await world.store.append(errand_id, [spent])
    assert await world.store.schedule_spent("d", world.clock.wall()) == 1.0
    await world.run_for(2 * HOUR, step=60)
    rows = await world.store.schedule_runs("d", 10)
    assert [r.outcome for r in rows][:2] == ["skipped", "skipped"]
    assert "daily budget" in rows[0].reason
    info = await schedule_info(world.store, "d", clock=world.clock)
    assert info.as_dict()["spent_today_usd"] == 1.0


async def test_a_runs_model_calls_reserve_against_the_schedules_daily_budget(
    world: World,
) -> None:
    await world.add(name="d", kind="every", every="1h", daily_usd=0.5, overlap="allow")
    await world.run_for(2 * HOUR, step=60)
    a, b = (r.errand_id or "" for r in await world.runs("d"))
    assert await world.store.reserve(a, 1, 0.4, daily_usd=None, ttl=60) is None
    refused = await world.store.reserve(b, 1, 0.2, daily_usd=None, ttl=60)
    assert refused is not None and "schedule d" in refused.cap.what


async def test_runs_and_skips_are_rebuilt_consistently(world: World) -> None:
    await world.add(name="d", kind="every", every="1h", daily_usd=5.0)
    await world.run_for(HOUR, step=60)
    (run,) = await world.runs("d")
    (req,) = await world.store.append(
        run.errand_id or "", [ev.ModelRequested(model="m", tools_hash="x", at=world.clock.wall())]
    )
    usage = ev.Usage(cost_usd=0.25)
    await world.store.append(
        run.errand_id or "",
        [ev.ModelResponded(request_seq=req, model="m", usage=usage, at=world.clock.wall())],
    )
    assert await world.store.integrity_check() == []  # the schedule's spend agrees with the log


def test_plan_is_pure_and_matches_the_slots() -> None:
    spec = ScheduleSpec(name="s", kind="every", text="t", every=60.0, anchor=0.0)
    p = plan(spec, 60.0, 60.0, running=None)
    assert p.runs == [(60.0, 0)] and p.next_at == 120.0
    p = plan(spec, 60.0, 305.0, running="e1")
    assert p.runs == [] and p.skips == [(300.0, 5, "the previous run e1 was still going")]


async def test_two_schedulers_on_one_store_file_start_each_slot_once(
    settings: Settings, tmp_path: Path
) -> None:
    """Two processes' worth of schedulers (two stores on one file) looking at once."""
    clock = FakeClock(wall=at(PARIS, 2026, 12, 7, 9, 0, 0))
    a = World(settings, clock)
    b = World(settings, clock)
    try:
        await a.add(name="s", kind="every", every="1s", overlap="allow")
        for _ in range(60):
            clock.advance(1)
            await asyncio.gather(a.scheduler.tick(), b.scheduler.tick())
        slots = [r.slot for r in await a.runs("s")]
        assert len(slots) == len(set(slots)) == 60
        assert len(await a.store.list_errands(limit=1000)) == 60
    finally:
        await a.store.close()
        await b.store.close()


# -- tools ------------------------------------------------------------------------------------


async def test_a_schedules_runs_may_use_only_its_tools(world: World) -> None:
    """A run of a schedule limited to list_files sees only it; a call of another tool is
    refused as unknown, and never runs."""
    from helpers.kit import call, harness_for, script

    model = script(
        {"text": "", "tool_calls": [call("write_file", path="x.txt", content="hi")]},
        {"text": "done"},
    )
    harness = harness_for(world.store, world.settings, model=model)
    known = [t.name for t in harness.toolset.tools(ErrandView(id="any"))]
    with pytest.raises(ScheduleError, match=r"^tools: no tool named nosuch"):
        await add_schedule(
            world.store, world.settings,
            ScheduleRequest(name="x", kind="every", every="1h", text="t", tools=["nosuch"]),
            clock=world.clock, known_tools=known,
        )  # fmt: skip
    request = ScheduleRequest(name="d", kind="every", every="1h", text="t", tools=["list_files"])
    await add_schedule(world.store, world.settings, request, clock=world.clock, known_tools=known)
    await world.run_for(HOUR, step=60)
    (run,) = await world.runs("d")
    view = await world.store.view(run.errand_id or "")
    assert view.tools == ["list_files"]
    assert harness.toolset.tools(view).names == ("list_files",)
    assert "write_file" in harness.toolset.tools(ErrandView(id="other")).names
    await asyncio.wait_for(harness.runner().run_errand(view.id), 30)
    results = [
        e.event for e in await world.store.read(view.id) if isinstance(e.event, ev.ToolResult)
    ]
    assert [(r.ok, r.error_kind) for r in results] == [(False, "unknown_tool")]
    assert not (Path(view.workspace) / "x.txt").exists()


async def test_a_time_more_than_ten_years_ahead_is_refused(world: World) -> None:
    with pytest.raises(ScheduleError, match=r"^at: more than ten years ahead"):
        await world.add(name="far", kind="at", at="9999-12-31T23:59:59-23:59")
    assert await world.store.schedules() == []


@pytest.mark.parametrize("field", ["select", "json_path"])
async def test_a_watch_field_on_a_schedule_is_refused_naming_it(world: World, field: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        await world.add(name="s", kind="every", every="1h", **{field: "li"})
    assert caught.value.field == field


async def test_a_runs_model_calls_count_against_its_schedules_daily_budget(world: World) -> None:
    from errands.core.progress import Progress
    from errands.engine.budgets import Budgets

    p = Progress.empty("e1")
    budgets = Budgets(world.store, world.settings)
    assert not budgets.applies(p)
    p.view.schedule_daily_usd = 1.0
    assert budgets.applies(p)  # (without it, a run never reserved: the cap came too late)


async def test_a_schedule_in_plan_mode_starts_its_runs_in_plan_mode(world: World) -> None:
    """Each run of a plan-mode schedule is a plan-mode errand (the model never reads
    untrusted content; it has the extractor); an edit that leaves the mode keeps it."""
    await world.add(name="p", kind="every", every="1h", mode="plan")
    await world.add(name="d", kind="every", every="1h")
    await edit_schedule(world.store, world.settings, "p", SchedulePatch(text="new text"))
    await world.run_for(HOUR, step=60)
    (planned,) = await world.runs("p")
    (default,) = await world.runs("d")
    assert (await world.store.view(planned.errand_id or "")).mode == "plan"
    assert (await world.store.view(default.errand_id or "")).mode is None
    assert (await world.store.schedule("p")).spec.mode == "plan"
