"""Nothing a model sends, and nothing a step did not expect, stops an errand without a
logged end -- or makes errands call the model again and again unbilled (issue 12,
item 1).

- replies are tamed before they are logged (lone surrogates; arguments nested too
  deep, too large, NaN, integers of thousands of digits; a NUL in a path);
- routing fails closed: a call nothing could judge does not run;
- an exception no one foresaw is logged in the errand; after three identical ones in a
  row the errand needs attention, and the model was asked at most once per step;
- a property: arbitrary replies and arguments always end in a logged state, with
  every model call booked, and never more calls than ``max_steps``.

The controls are injected here: the loop without taming (a monkeypatched ``tame``),
a dispatcher that does not fail closed, a runner that lets an exception through.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import harness_for
from helpers.server import clean_env, running, write_config
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from seams import child_env
from sim.core import Turn, call
from sim.openai_server import OpenAIChatSim

from errands.config import Price, ProviderSettings, Settings, load_settings
from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView
from errands.engine import loop as loop_module
from errands.engine.dispatch import Dispatcher
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.engine.runner import Runner
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.store.sqlite import SQLiteStore
from errands.tools.toolset import FunctionToolset

KEY_ENV = "STEP_FAILURE_SIM_KEY"
ENDED = {ErrandState.done, ErrandState.failed, ErrandState.needs_attention}


def tools() -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=ev.EffectClass.read, idempotent=True, roles={"path": "path"})
    def read_note(path: str) -> str:
        """Read a note in the workspace.

        Args:
            path: Which note.
        """
        return f"the note {path!r} says hello"

    @reg.tool(effect=ev.EffectClass.read, idempotent=True)
    def lookup(term: str, options: dict[str, Any] | None = None) -> str:
        """Look something up.

        Args:
            term: What.
            options: How.
        """
        return f"{term}: found"

    return reg


class Replies:
    """A model that answers with the given replies in turn, then plain text; it counts
    its calls and prices each one the same (1,000 tokens in, 100 out)."""

    name = "fuzz:model"

    def __init__(self, replies: list[ModelReply]) -> None:
        self.replies = list(replies)
        self.calls = 0

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self.calls += 1
        reply = self.replies.pop(0) if self.replies else ModelReply(text="that is all")
        reply.usage = ev.Usage(input_tokens=1000, output_tokens=100)
        return reply


PRICED = {"fuzz:model": Price(input=1.0, output=10.0)}  # $0.002 a call
PER_CALL = 1000 / 1e6 * 1.0 + 100 / 1e6 * 10.0


class Huge(int):
    """An integer of 5,001 digits that hypothesis can still print when reporting."""

    def __new__(cls) -> Huge:
        return super().__new__(cls, 10**5000)

    def __repr__(self) -> str:
        return "10**5000"


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"term": "x"}
    for _ in range(levels):
        value = {"options": value}
    return value


def tool_call(name: str, arguments: dict[str, Any], i: int = 0) -> ev.ToolCall:
    return ev.ToolCall.model_construct(call_id=f"c{i}", name=name, arguments=arguments)


class QuickRunner(Runner):
    failure_pauses = (0.01, 0.01)  # (1 s and 5 s in production)


async def run(
    store: Store,
    settings: Settings,
    model: Replies,
    *,
    runner_class: type[Runner] = QuickRunner,
    loop_class: type[Loop] | None = None,
    max_steps: int = 10,
) -> tuple[str, ErrandView]:
    s = settings.model_copy(update={"prices": PRICED})
    h = harness_for(store, s, tools=tools(), model=model, policy=AllowAll())
    runner = runner_class(h.store, s, h.toolset, h.policy, models=h.models, loop_class=loop_class)
    eid = await create_errand(
        store, s, "x", model="scripted:demo", limits=ev.Limits(max_steps=max_steps)
    )
    return eid, await asyncio.wait_for(runner.run_errand(eid), 60)


async def tool_errors(store: Store, eid: str) -> list[str]:
    return [
        f"{e.event.error_kind}: {e.event.content.text}"
        for e in await store.read(eid)
        if isinstance(e.event, ev.ToolResult) and not e.event.ok
    ]


# -- replies the log could not take, tamed --------------------------------------------------


BAD_ARGUMENTS = {
    "nested 900 deep": deep(900),
    "nested 100,000 deep": deep(100_000),
    "a NaN": {"term": "x", "options": {"n": math.nan}},
    "an infinity": {"term": "x", "options": {"n": -math.inf}},
    "a 5,000-digit integer": {"term": "x", "options": {"n": 10**5000}},
    "3 MB of text": {"term": "x" * 3_000_000},
}


@pytest.mark.parametrize("arguments", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
async def test_arguments_the_log_cannot_take_are_a_tool_error_the_model_reads(
    store: Store, settings: Settings, arguments: dict[str, Any]
) -> None:
    model = Replies([ModelReply(tool_calls=[tool_call("lookup", arguments)])])
    eid, view = await run(store, settings, model)
    assert view.state is ErrandState.done and view.result == "that is all"
    (error,) = await tool_errors(store, eid)
    assert error.startswith("bad_arguments: the arguments for lookup were refused")
    assert model.calls == 2
    assert view.usage.cost_usd == pytest.approx(2 * PER_CALL)  # both calls booked


async def test_control_without_taming_the_step_fails_and_the_model_is_asked_again(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_module, "tame", lambda reply: reply)
    reply = ModelReply(tool_calls=[tool_call("lookup", deep(900))])
    model = Replies([reply, reply, reply])
    _eid, view = await run(store, settings, model)
    assert view.state is ErrandState.needs_attention  # the runner's guard still held
    assert model.calls == 3  # each failed step asked (and paid) again: what taming prevents


async def test_lone_surrogates_are_replaced_not_fatal(store: Store, settings: Settings) -> None:
    model = Replies(
        [
            ModelReply(
                text="half a pair: \ud83d",
                tool_calls=[tool_call("read_note", {"path": "notes/\udcff.md"})],
            ),
            ModelReply(text="done \udfff"),
        ]
    )
    eid, view = await run(store, settings, model)
    assert view.state is ErrandState.done and view.result == "done \ufffd"
    events = [e.event for e in await store.read(eid)]
    first = next(e for e in events if isinstance(e, ev.ModelResponded))
    assert first.content is not None and first.content.text == "half a pair: \ufffd"
    assert first.tool_calls[0].arguments == {"path": "notes/\ufffd.md"}


async def test_a_nul_in_a_path_is_a_bad_argument(store: Store, settings: Settings) -> None:
    model = Replies([ModelReply(tool_calls=[tool_call("read_note", {"path": "a\x00b"})])])
    eid, view = await run(store, settings, model)
    assert view.state is ErrandState.done
    (error,) = await tool_errors(store, eid)
    assert "path cannot hold a NUL character" in error


# -- routing fails closed --------------------------------------------------------------------


class ChokingPolicy(AllowAll):
    def check(self, call: Any) -> Any:
        Path(call.arguments.get("path", "")).resolve()  # "embedded null byte" and the like
        raise ValueError("the policy could not judge this")


class OpenDispatcher(Dispatcher):
    """The control: routing without its fail-closed wrapper."""

    def route(self, p: Any, call: ev.ToolCall, index: int, request_seq: int) -> Any:
        return self._route(p, call, index, request_seq)


class OpenLoop(Loop):
    dispatcher_class = OpenDispatcher


@pytest.mark.parametrize("loop_class", [None, OpenLoop], ids=["guard", "control"])
async def test_a_call_the_policy_chokes_on_is_refused_not_run(
    store: Store, settings: Settings, loop_class: type[Loop] | None
) -> None:
    ran: list[str] = []
    reg = tools()

    @reg.tool(effect=ev.EffectClass.external)
    def send(to: str) -> str:
        """Send.

        Args:
            to: Whom.
        """
        ran.append(to)
        return "sent"

    model = Replies([ModelReply(tool_calls=[tool_call("send", {"to": "x"})]) for _ in range(3)])
    s = settings.model_copy(update={"prices": PRICED})
    h = harness_for(store, s, tools=reg, model=model, policy=ChokingPolicy())
    runner = QuickRunner(h.store, s, h.toolset, h.policy, models=h.models, loop_class=loop_class)
    eid = await create_errand(store, s, "x", model="scripted:demo")
    view = await asyncio.wait_for(runner.run_errand(eid), 60)
    assert ran == []
    if loop_class is None:
        assert view.state is ErrandState.done
        errors = await tool_errors(store, eid)
        assert len(errors) == 3  # the model tried three times; each call was refused
        assert all("refused: errands could not check this call's arguments" in e for e in errors)
    else:
        assert view.state is ErrandState.needs_attention  # the exception reached the runner


# -- the runner: an unexpected failure is logged, three in a row need attention --------------


class Flaky(Loop):
    """Fails its first *fails* steps with the same unexpected error, then works."""

    fails = 2

    async def _step(self, p: Any) -> bool:
        if Flaky.fails > 0:
            Flaky.fails -= 1
            raise RuntimeError("something nobody foresaw")
        return await super()._step(p)


class PassThroughRunner(QuickRunner):
    """The control: the runner as it was -- an exception leaves the errand running."""

    async def _guarded(self, errand_id: str) -> ErrandView | None:
        return await self.loop.run(errand_id)


async def test_a_failure_that_passes_is_logged_and_the_errand_goes_on(
    store: Store, settings: Settings
) -> None:
    Flaky.fails = 2
    eid, view = await run(store, settings, Replies([]), loop_class=Flaky)
    assert view.state is ErrandState.done
    errors = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ErrorRaised)]
    assert [e.kind for e in errors] == ["internal", "internal"]
    assert errors[0].message == "RuntimeError: something nobody foresaw"


async def test_three_identical_failures_need_attention(store: Store, settings: Settings) -> None:
    Flaky.fails = 100
    _eid, view = await run(store, settings, Replies([]), loop_class=Flaky)
    assert view.state is ErrandState.needs_attention
    assert "failed 3 times in a row" in view.reason and "nobody foresaw" in view.reason
    assert Flaky.fails == 97  # no more tries after the third


async def test_control_a_runner_that_lets_the_failure_through_leaves_it_running(
    store: Store, settings: Settings
) -> None:
    Flaky.fails = 100
    with pytest.raises(RuntimeError):
        await run(store, settings, Replies([]), loop_class=Flaky, runner_class=PassThroughRunner)
    (view,) = await store.list_errands()
    assert view.state not in ENDED  # the bug this issue found: left as it was, no reason
    assert not [e for e in await store.read(view.id) if isinstance(e.event, ev.ErrorRaised)]


# -- the wire: 100,000 levels of arguments from a real provider protocol ------------------


async def test_deep_arguments_from_the_wire_are_told_to_the_model(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, openai_sim.api_key)
    arguments = '{"term": ' + "[" * 100_000 + "]" * 100_000 + "}"
    openai_sim.script(
        Turn(tool_calls=(call("lookup", arguments),)),
        Turn(text="I will send plainer arguments", when="not a JSON object"),
    )
    endpoint = ProviderSettings(
        kind="openai", base_url=openai_sim.base_url, api_key_env=KEY_ENV, outage_wait_seconds=0
    )
    s = settings.model_copy(update={"providers": {"sim": endpoint}})
    h = harness_for(store, s, tools=tools(), policy=AllowAll())
    eid = await create_errand(store, s, "x", model="sim:gpt-sim")
    view = await asyncio.wait_for(h.runner().run_errand(eid), 60)
    assert view.state is ErrandState.done and view.result == "I will send plainer arguments"
    assert len([r for r in openai_sim.requests if r.method == "POST"]) == 2


# -- the property ----------------------------------------------------------------------------

SPECIAL_TEXT = ["\ud800", "a\x00b", "../../etc/passwd", "\udfff/x", "", " " * 3, "é" * 50]
text = st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL_TEXT))
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.builds(Huge),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_values = st.recursive(
    leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=20,
)
arguments = st.one_of(
    st.dictionaries(text, json_values, max_size=4),
    st.fixed_dictionaries({"term": text}),
    st.fixed_dictionaries({"path": text}),
    st.integers(0, 3000).map(deep),
)
calls = st.builds(
    tool_call,
    name=st.one_of(st.sampled_from(["lookup", "read_note", "send", ""]), text),
    arguments=arguments,
)
replies = st.builds(
    lambda t, cs, model: ModelReply(
        text=t,
        tool_calls=[c.model_copy(update={"call_id": f"c{i}"}) for i, c in enumerate(cs)],
        model=model,
    ),
    text,
    st.lists(calls, max_size=3),
    st.one_of(st.just(""), text),
)


@hyp_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(replies, max_size=6), st.integers(1, 5))
def test_any_replies_end_in_a_logged_state_with_every_call_booked(
    script: list[ModelReply], max_steps: int
) -> None:
    home = Path(tempfile.mkdtemp(prefix="errands-fuzz-"))
    try:

        async def go() -> tuple[Replies, ErrandView, list[ev.ModelResponded]]:
            store = SQLiteStore(home / "errands.sqlite")
            try:
                model = Replies(script)
                eid, view = await run(store, load_settings(home), model, max_steps=max_steps)
                logged = [
                    e.event for e in await store.read(eid) if isinstance(e.event, ev.ModelResponded)
                ]
                assert await store.integrity_check() == []
                return model, view, logged
            finally:
                await store.close()

        model, view, logged = asyncio.run(go())
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert view.state in ENDED, (view.state, view.reason)
    assert model.calls <= max_steps  # (max_attempts is 1: this model has no retries)
    assert len(logged) == model.calls  # every call that was made is in the log ...
    assert view.usage.cost_usd == pytest.approx(model.calls * PER_CALL)  # ... and paid for


# -- the server: one process, a bug after every reply -----------------------------------------


@pytest.mark.parametrize("controls", [(), ("no_step_guard",)], ids=["guard", "control"])
def test_in_the_server_a_bug_after_every_reply_costs_three_calls_not_a_loop(
    tmp_path: Path, openai_sim: OpenAIChatSim, controls: tuple[str, ...]
) -> None:
    """The issue's report: the server re-claimed the errand every 0.5 s and paid the
    model each time (39 requests in 10 s). Now three tries, then needs_attention, and
    the same server process goes on."""
    home = tmp_path / "home"
    write_config(home, "[providers.openai]\noutage_wait_seconds = 0")
    openai_sim.script(default="hello")
    env = child_env(clean_env(home, **openai_sim.env), controls=("bug_after_reply", *controls))
    with running(home, env=env) as server, server.client() as api:
        assert server.proc is not None
        pid = server.proc.pid
        r = api.post("/api/errands", json={"text": "x", "model": "openai:gpt-sim"})
        assert r.status_code in (200, 201), r.text
        eid = r.json()["id"]
        deadline = time.monotonic() + 20
        state = ""
        while time.monotonic() < deadline:
            state = api.get(f"/api/errands/{eid}").json()["status"]
            if state == "needs_attention" or len(openai_sim.requests) > 6:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # (would a loop go on?)
        paid = len([q for q in openai_sim.requests if q.method == "POST"])
        if controls:
            assert paid > 6, paid  # the paid loop
            return
        assert state == "needs_attention" and paid == 3
        shown = api.get(f"/api/errands/{eid}").json()
        assert "a bug met after the reply" in shown["reason"]
        assert server.proc.poll() is None and server.proc.pid == pid
        # and it still serves: another errand is taken and answered (here: also buggy)
        assert api.get("/api/errands").status_code == 200
