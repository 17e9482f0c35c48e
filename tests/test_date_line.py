"""The model knows the date, in the person's time zone, without breaking the prompt cache
(issue 14, item 3): the request that starts an errand is headed by the date it was made
on; when the local date changes during the errand, one line saying so is appended (the
transcript before it is byte-identical, so the provider's cached prefix still holds)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import harness_for

from errands.clock import FakeClock, date_line
from errands.config import ConfigError, Settings, load_settings
from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.states import ErrandState
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.tools.toolset import FunctionToolset

DAY = 86400.0
# one instant, two dates: 10:00 UTC is 00:00 the next day at UTC+14, 23:00 the day before at UTC-11
INSTANT = 1_796_292_000.0  # 2026-12-03 10:00 UTC


class Recorder:
    """A model that records what it was asked; it calls ``tick`` once, then answers."""

    name = "rec:model"

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self.requests.append(request)
        if len(self.requests) == 1:
            return ModelReply(tool_calls=[ev.ToolCall(call_id="c1", name="tick", arguments={})])
        return ModelReply(text="done")


def ticking(clock: FakeClock, seconds: float) -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=ev.EffectClass.read, idempotent=True)
    def tick() -> str:
        """Let time pass."""
        clock.advance(seconds)
        return "time passed"

    return reg


async def run(
    store: Store, settings: Settings, clock: FakeClock, seconds: float, **kw: Any
) -> tuple[Recorder, str]:
    model = Recorder()
    h = harness_for(store, settings, tools=ticking(clock, seconds), model=model, policy=AllowAll())
    runner = h.runner(**kw)
    runner.loop.clock = clock
    eid = await create_errand(store, settings, "what is due today?", model="scripted:demo")
    view = await runner.run_errand(eid)
    assert view.state is ErrandState.done
    return model, eid


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("Pacific/Kiritimati", "Friday 4 December 2026"),
        ("Pacific/Pago_Pago", "Wednesday 2 December 2026"),
    ],
)
def test_the_date_line_is_the_local_date_in_the_persons_zone(zone: str, expected: str) -> None:
    assert date_line(INSTANT, zone) == f"(Today is {expected}, time zone {zone}.)"


async def test_the_first_request_is_headed_by_the_date(store: Store, settings: Settings) -> None:
    s = settings.model_copy(update={"timezone": "Europe/Paris"})
    clock = FakeClock(wall=time.time())
    model, _ = await run(store, s, clock, 60)
    first = model.requests[0].messages[0].text
    assert first == date_line(time.time(), "Europe/Paris") + "\n\nwhat is due today?"
    assert "Today is" not in model.requests[0].system  # never in the system prompt


class ForgetfulProgress(Progress):
    """The control: forgets what date the model was told, so it is told at every call."""

    def apply(self, seq: int, event: ev.Event) -> None:
        super().apply(seq, event)
        self.dated = ""


class ForgetfulLoop(Loop):
    progress_class = ForgetfulProgress


@pytest.mark.parametrize("loop_class", [None, ForgetfulLoop], ids=["guard", "control"])
async def test_a_new_day_is_told_once_and_the_prefix_stays_the_same(
    store: Store, settings: Settings, loop_class: type[Loop] | None
) -> None:
    s = settings.model_copy(update={"timezone": "UTC"})
    clock = FakeClock(wall=time.time())
    model, eid = await run(store, s, clock, DAY, loop_class=loop_class)
    told = [
        e.event.content.text
        for e in await store.read(eid)
        if isinstance(e.event, ev.UserMessage) and e.event.channel == "clock"
    ]
    first, second = (r.messages for r in model.requests)
    assert second[: len(first)] == first  # the cached prefix holds
    if loop_class is not None:
        assert len(told) == 2  # told at both calls, the first one needlessly
        return
    assert told == [date_line(clock.wall(), "UTC")]  # only the new day, once
    assert second[-1].text == told[0]


async def test_the_same_day_adds_nothing(store: Store, settings: Settings) -> None:
    s = settings.model_copy(update={"timezone": "UTC"})
    clock = FakeClock(wall=(time.time() // DAY) * DAY + 3600)  # 01:00 UTC today
    _, eid = await run(store, s, clock, 60)
    assert not [e for e in await store.read(eid) if isinstance(e.event, ev.UserMessage)]


def test_an_unknown_time_zone_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "errands.toml").write_text('timezone = "Mars/Olympus_Mons"\n')
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus_Mons'"):
        load_settings(tmp_path)
