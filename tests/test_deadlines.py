"""Every call has an end: total deadlines, wall-time limits during calls, cancels that
interrupt what is in flight, and provider outages waited out (issue 12, item 3).

The slow provider is the OpenAI wire simulator sending half a stream and then an SSE
keep-alive comment every 0.2 s -- the server that never trips a per-read timeout. Each
guarantee has its negative control, injected here: a deadline too long to matter, a
loop that ignores the wall-time limit during a call, a loop whose interrupt does
nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from helpers.kit import harness_for
from sim.core import Turn, call
from sim.openai_server import OpenAIChatSim

from errands.clock import FakeClock
from errands.config import ProviderSettings, Settings
from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.states import ErrandState, ErrandView
from errands.engine.loop import Loop
from errands.engine.operations import cancel_errand, create_errand
from errands.engine.runner import Runner
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.tools.toolset import FunctionToolset

KEY_ENV = "DEADLINE_SIM_KEY"


@pytest.fixture
def sim_key(openai_sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, openai_sim.api_key)
    return openai_sim.api_key


def provider(sim: OpenAIChatSim, settings: Settings, **kw: Any) -> Settings:
    kw.setdefault("outage_wait_seconds", 0)
    kw.setdefault("timeout_seconds", 1.0)  # per read: the keep-alives always beat it
    endpoint = ProviderSettings(kind="openai", base_url=sim.base_url, api_key_env=KEY_ENV, **kw)
    return settings.model_copy(update={"providers": {"sim": endpoint}})


def sleepy_tools() -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=ev.EffectClass.read, idempotent=True)
    async def wait_a_while(seconds: float) -> str:
        """Wait.

        Args:
            seconds: How long.
        """
        await asyncio.sleep(seconds)
        return "waited"

    return reg


def runner_for(
    store: Store, settings: Settings, loop_class: type[Loop] | None = None
) -> Runner:
    h = harness_for(store, settings, tools=sleepy_tools(), policy=AllowAll())
    return h.runner(loop_class=loop_class)


async def finishes_within(seconds: float, aw: Any) -> Any:
    """*aw*'s result, or AssertionError if it takes longer than *seconds*."""
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise AssertionError(f"still running after {seconds} s") from None


# -- a total deadline per model attempt ----------------------------------------------------


@pytest.mark.parametrize("deadline", [1.5, 3600.0], ids=["deadline", "control-no-deadline"])
async def test_a_trickling_provider_meets_the_attempt_deadline(
    store: Store,
    settings: Settings,
    openai_sim: OpenAIChatSim,
    sim_key: str,
    deadline: float,
) -> None:
    openai_sim.script(Turn(text="a reply that never finishes arriving"))
    openai_sim.fault("trickle", seconds=60, interval=0.2, times=10)
    s = provider(openai_sim, settings, call_deadline_seconds=deadline, max_attempts=1)
    eid = await create_errand(store, s, "x", model="sim:gpt-sim")
    run = runner_for(store, s).run_errand(eid)
    if deadline > 60:  # the control: only the per-read timeout, which keep-alives beat
        with pytest.raises(AssertionError, match="still running"):
            await finishes_within(4.0, run)
        return
    view: ErrandView = await finishes_within(10.0, run)
    assert view.state is ErrandState.failed
    assert f"no complete reply within {deadline:g} s" in view.reason
    assert len([r for r in openai_sim.requests if r.method == "POST"]) == 1


# -- the wall-time limit holds during a call -----------------------------------------------


class LimitOnlyBetweenCalls(Loop):
    """The control: the wall-time limit is checked before a call, never during one."""

    def _time_left(self, p: Progress) -> float | None:
        return None


@pytest.mark.parametrize("loop_class", [None, LimitOnlyBetweenCalls], ids=["guard", "control"])
async def test_the_wall_time_limit_ends_a_model_call_in_flight(
    store: Store,
    settings: Settings,
    openai_sim: OpenAIChatSim,
    sim_key: str,
    loop_class: type[Loop] | None,
) -> None:
    openai_sim.script(Turn(text="slow"))
    openai_sim.fault("trickle", seconds=60, interval=0.2)
    s = provider(openai_sim, settings)
    eid = await create_errand(
        store, s, "x", model="sim:gpt-sim", limits=ev.Limits(max_wall_seconds=1.0)
    )
    run = runner_for(store, s, loop_class).run_errand(eid)
    if loop_class is not None:
        with pytest.raises(AssertionError, match="still running"):
            await finishes_within(4.0, run)
        return
    view: ErrandView = await finishes_within(5.0, run)
    assert view.state is ErrandState.failed
    assert "wall-time limit reached (1 s) during a model call" in view.reason


async def test_the_wall_time_limit_ends_a_tool_call_in_flight(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(tool_calls=(call("wait_a_while", '{"seconds": 60}'),)))
    s = provider(openai_sim, settings)
    eid = await create_errand(
        store, s, "x", model="sim:gpt-sim", limits=ev.Limits(max_wall_seconds=1.5)
    )
    view: ErrandView = await finishes_within(6.0, runner_for(store, s).run_errand(eid))
    assert view.state is ErrandState.failed and "wall-time limit" in view.reason
    results = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ToolResult)]
    assert [r.error_kind for r in results] == ["timed_out"]  # a result: nothing in doubt


# -- cancel interrupts the call in flight --------------------------------------------------


class DeafLoop(Loop):
    """The control: a cancel is written, but nothing interrupts the call in flight."""

    def interrupt(self, errand_id: str) -> bool:
        self.dirty.add(errand_id)
        return False


@pytest.mark.parametrize("loop_class", [None, DeafLoop], ids=["guard", "control"])
async def test_cancel_interrupts_a_model_call_within_a_second(
    store: Store,
    settings: Settings,
    openai_sim: OpenAIChatSim,
    sim_key: str,
    loop_class: type[Loop] | None,
) -> None:
    openai_sim.script(Turn(text="slow"))
    openai_sim.fault("trickle", seconds=60, interval=0.2)
    s = provider(openai_sim, settings)
    eid = await create_errand(store, s, "x", model="sim:gpt-sim")
    run = asyncio.create_task(runner_for(store, s, loop_class).run_errand(eid))
    while not [r for r in openai_sim.requests if r.method == "POST"]:
        await asyncio.sleep(0.05)
    await cancel_errand(store, eid)
    if loop_class is not None:
        with pytest.raises(AssertionError, match="still running"):
            await finishes_within(3.0, asyncio.shield(run))
        run.cancel()
        return
    view: ErrandView = await finishes_within(1.0, run)
    assert view.state is ErrandState.cancelled


async def test_cancel_interrupts_a_tool_call_and_logs_its_result(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(tool_calls=(call("wait_a_while", '{"seconds": 60}'),)))
    s = provider(openai_sim, settings)
    eid = await create_errand(store, s, "x", model="sim:gpt-sim")
    run = asyncio.create_task(runner_for(store, s).run_errand(eid))
    while not any(isinstance(e.event, ev.ToolIntent) for e in await store.read(eid)):
        await asyncio.sleep(0.05)
    await cancel_errand(store, eid)
    view: ErrandView = await finishes_within(1.0, run)
    assert view.state is ErrandState.cancelled
    results = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ToolResult)]
    assert [r.error_kind for r in results] == ["cancelled"]


def test_errands_cancel_stops_errands_run_in_another_process(
    cli: CLI, openai_sim: OpenAIChatSim
) -> None:
    """Real processes: ``errands run`` waits on a trickling provider; ``errands cancel``
    from a second process stops it within a second or so."""
    openai_sim.script(Turn(text="slow"))
    openai_sim.fault("trickle", seconds=120, interval=0.2)
    env = cli.env(**openai_sim.env)
    run = subprocess.Popen(
        [sys.executable, "-m", "errands", "run", "x", "-m", "openai:gpt-sim", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not [r for r in openai_sim.requests if r.method == "POST"]:
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(0.05)
        listed = json.loads(cli("ls", "--json", **openai_sim.env).stdout)
        assert cli("cancel", listed[0]["id"], **openai_sim.env).returncode == 0
        cancelled_at = time.monotonic()
        out, err = run.communicate(timeout=15)
        took = time.monotonic() - cancelled_at
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
            run.wait()
    assert took < 2.5, took  # ~0.25 s to notice, then the interrupt
    assert json.loads(out)["status"] == "cancelled", err


# -- a provider outage is waited out -------------------------------------------------------


async def test_an_outage_shorter_than_the_window_is_waited_out(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(text="back again"))
    openai_sim.fault("server_error", status=503, times=6)  # three rounds of two attempts
    s = provider(openai_sim, settings, max_attempts=2, outage_wait_seconds=900)
    eid = await create_errand(store, s, "x", model="sim:gpt-sim")
    runner = runner_for(store, s)
    clock = FakeClock(wall=time.time())
    runner.loop.clock = clock  # the waits between rounds pass at once
    view = await finishes_within(20.0, runner.run_errand(eid))
    assert view.state is ErrandState.done and view.result == "back again"
    waits = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ErrorRaised)]
    assert len(waits) == 3 and all(w.retryable for w in waits)
    assert "the provider looks down: trying again in" in waits[0].message


async def test_while_it_waits_the_errand_says_so(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(text="back"))
    openai_sim.fault("server_error", status=503, times=2)
    s = provider(openai_sim, settings, max_attempts=2, outage_wait_seconds=900)
    eid = await create_errand(store, s, "x", model="sim:gpt-sim")
    run = asyncio.create_task(runner_for(store, s).run_errand(eid))  # a real 2 s pause
    for _ in range(100):
        view = await store.view(eid)
        if view.reason:
            break
        await asyncio.sleep(0.05)
    assert view.state is ErrandState.running and "the provider looks down" in view.reason
    done = await finishes_within(10.0, run)
    assert done.state is ErrandState.done and done.reason == ""


@pytest.mark.parametrize("window", [60.0, 0.0], ids=["window", "no-window"])
async def test_an_outage_longer_than_the_window_fails_the_errand(
    store: Store,
    settings: Settings,
    openai_sim: OpenAIChatSim,
    sim_key: str,
    window: float,
) -> None:
    openai_sim.script(Turn(text="never"))
    openai_sim.fault("server_error", status=503, times=1000)
    s = provider(openai_sim, settings, max_attempts=2, outage_wait_seconds=window)
    eid = await create_errand(store, s, "x", model="sim:gpt-sim")
    runner = runner_for(store, s)
    runner.loop.clock = FakeClock(wall=time.time())
    view = await finishes_within(30.0, runner.run_errand(eid))
    assert view.state is ErrandState.failed and "HTTP 503" in view.reason
    waits = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ErrorRaised)]
    if window:
        assert "after waiting 1 min for it" in view.reason
        assert len(waits) > 2
    else:
        assert len(waits) == 1


async def test_resume_asks_the_model_again_after_it_failed_the_errand(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(text="I am back"))
    openai_sim.fault("server_error", status=503, times=2)
    s = provider(openai_sim, settings, max_attempts=2)
    h = harness_for(store, s, tools=sleepy_tools(), policy=AllowAll())
    eid = await create_errand(store, s, "x", model="sim:gpt-sim")
    assert (await h.runner().run_errand(eid)).state is ErrandState.failed
    assert await h.retry_model(eid)
    view = await h.runner().run_errand(eid)
    assert view.state is ErrandState.done and view.result == "I am back"
    assert not await h.retry_model(eid)  # done: nothing to retry


async def test_resume_does_not_reopen_an_errand_that_failed_otherwise(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    s = provider(openai_sim, settings)
    h = harness_for(store, s, tools=sleepy_tools(), policy=AllowAll())
    eid = await create_errand(store, s, "x", model="sim:gpt-sim", limits=ev.Limits(max_steps=0))
    assert (await h.runner().run_errand(eid)).state is ErrandState.failed  # a step limit
    before = len(await store.read(eid))
    assert not await h.retry_model(eid)
    assert len(await store.read(eid)) == before


def test_errands_resume_retries_a_provider_failure(cli: CLI, openai_sim: OpenAIChatSim) -> None:
    openai_sim.script(Turn(text="answered at last"))
    openai_sim.fault("server_error", status=503, times=8)  # the CLI's 4 attempts, twice
    (cli.home / "errands.toml").write_text("[providers.openai]\noutage_wait_seconds = 0\n")
    first = cli("run", "x", "-m", "openai:gpt-sim", "--json", **openai_sim.env)
    failed = json.loads(first.stdout)
    assert failed["status"] == "failed", first.stderr
    again = cli("resume", failed["id"], "--json", **openai_sim.env)
    assert json.loads(again.stdout)["status"] == "failed"  # still down: the 8 faults
    third = cli("resume", failed["id"], "--json", **openai_sim.env)
    out = json.loads(third.stdout)
    assert out["status"] == "done" and out["result"] == "answered at last", third.stderr


def test_provider_settings_name_the_new_knobs(tmp_path: Path) -> None:
    from errands.config import load_settings

    (tmp_path / "errands.toml").write_text(
        "tool_timeout_seconds = 30\n[providers.openai]\n"
        "outage_wait_seconds = 60\ncall_deadline_seconds = 120\n"
    )
    s = load_settings(tmp_path)
    assert s.tool_timeout_seconds == 30
    assert s.providers["openai"].outage_wait_seconds == 60
    assert s.providers["openai"].call_deadline_seconds == 120


class MarkOnlyRunner(Runner):
    """The control: a wake-up only marks the errand to be read at its next step."""

    async def _woken(self, errand_id: str) -> None:
        self.loop.dirty.add(errand_id)


@pytest.mark.parametrize("runner_class", [Runner, MarkOnlyRunner], ids=["guard", "control"])
async def test_in_the_server_loop_cancel_interrupts_a_model_call_within_a_second(
    store: Store,
    settings: Settings,
    openai_sim: OpenAIChatSim,
    sim_key: str,
    runner_class: type[Runner],
) -> None:
    """The server's path: Runner.serve claims the errand; a cancel from outside (the
    API, another process) reaches it through the wake-ups and interrupts the call."""
    openai_sim.script(Turn(text="slow"))
    openai_sim.fault("trickle", seconds=60, interval=0.2)
    s = provider(openai_sim, settings)
    h = harness_for(store, s, tools=sleepy_tools(), policy=AllowAll())
    runner = runner_class(h.store, s, h.toolset, h.policy, models=h.models)
    stop = asyncio.Event()
    serving = asyncio.create_task(runner.serve(stop, poll=0.1))
    try:
        eid = await create_errand(store, s, "x", model="sim:gpt-sim")
        while not [r for r in openai_sim.requests if r.method == "POST"]:
            await asyncio.sleep(0.05)
        task = runner.tasks[eid]
        await cancel_errand(store, eid)
        if runner_class is MarkOnlyRunner:
            with pytest.raises(AssertionError, match="still running"):
                await finishes_within(2.0, asyncio.shield(task))
            return
        view = await finishes_within(1.0, asyncio.shield(task))
        assert view is not None and view.state is ErrandState.cancelled
    finally:
        stop.set()
        await serving
