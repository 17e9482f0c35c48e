"""A retried or failed-over call takes its partial streamed text back.

The failures come from the wire simulators (a stream that breaks half-way, after some
text has streamed); the models are the real clients under the real wrappers. What the
person sees is replayed from what the listener got -- deltas appended, a reset clearing
-- and must be the answer, once. Each check has a negative control: with the
``no_text_reset`` control (``seams.controls``) the wrappers do not reset, and the same
check fails.

Through a real ``errands up``, the errand's stream carries ``event: text_reset``; through
the real CLI, the foreground render marks the discarded text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CLI
from helpers.kit import harness_for
from helpers.server import ServerProc, Sink, clean_env, write_config
from seams import child_env
from seams.controls import reset_nothing
from sim.core import Turn, call
from sim.gemini_server import GeminiSim
from sim.openai_server import OpenAIChatSim

from errands.config import ProviderSettings, Settings
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.models.protocol import Message, Model, ModelRequest
from errands.models.spec import resolve_model
from errands.models.streaming import AttemptText, ErrandText, TextStream
from errands.models.wrappers.fallback import CircuitBreaker, FallbackModel
from errands.models.wrappers.retry import RetryingModel, RetryPolicy
from errands.models.wrappers.router import innermost
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.tools.toolset import FunctionToolset

ANSWER = "The rent is 1,900 a month, paid on the first; the deposit is two months."
FAST = RetryPolicy(max_attempts=3, base_delay=0.02)
RESET = None  # in a Recorder's record: a reset


class Recorder:
    """A text sink that records deltas and resets, in order."""

    def __init__(self) -> None:
        self.record: list[str | None] = []

    def __call__(self, delta: str, /) -> None:
        self.record.append(delta)

    def reset(self) -> None:
        self.record.append(RESET)


def shown(record: list[str | None]) -> str:
    """What a person watching the stream sees at the end: deltas appended, resets clear."""
    text = ""
    for item in record:
        text = "" if item is RESET else text + item
    return text


def ask(text: str = "what is the rent?") -> ModelRequest:
    return ModelRequest(system="be brief", messages=(Message("user", text),), tools=())


def client(sim: OpenAIChatSim | GeminiSim, kind: str, settings: Settings, key_env: str) -> Model:
    """The real provider client for *sim* (without the wrappers resolve_model adds)."""
    endpoint = ProviderSettings(kind=kind, base_url=sim.base_url, api_key_env=key_env)
    s = settings.model_copy(update={"providers": {"sim": endpoint}})
    return innermost(
        resolve_model(f"sim:{'gpt-sim' if kind == 'openai' else 'gemini-2.5-flash'}", s)
    )


@pytest.fixture
def no_reset(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Parametrised: False runs the real wrappers; True is the negative control."""
    off = bool(request.param)
    if off:  # wrappers that never take the text back
        monkeypatch.setattr(AttemptText, "reset", reset_nothing)
    return off


def test_a_recorder_is_a_text_stream() -> None:
    assert isinstance(Recorder(), TextStream)
    assert not isinstance(print, TextStream)  # a plain function cannot be told


@pytest.mark.parametrize("no_reset", [False, True], indirect=True, ids=["reset", "control"])
async def test_a_retry_takes_back_the_partial_text(
    openai_sim: OpenAIChatSim,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    no_reset: bool,
) -> None:
    monkeypatch.setenv("TEXT_RESET_KEY", openai_sim.api_key)
    openai_sim.script(ANSWER)
    openai_sim.fault("stream_error", message="upstream overloaded")
    model = RetryingModel(client(openai_sim, "openai", settings, "TEXT_RESET_KEY"), FAST)
    sink = Recorder()
    reply = await model.complete(ask(), sink)
    assert reply.text == ANSWER and model.retries == 1
    if no_reset:  # the control: the person sees the fragment, then the whole answer
        assert RESET not in sink.record
        assert shown(sink.record) != ANSWER and shown(sink.record).endswith(ANSWER)
        return
    cut = sink.record.index(RESET)
    partial = "".join(d for d in sink.record[:cut] if d is not None)
    assert partial and ANSWER.startswith(partial) and partial != ANSWER  # it did stream
    assert sink.record.count(RESET) == 1
    assert "".join(d for d in sink.record[cut + 1 :] if d is not None) == ANSWER
    assert shown(sink.record) == ANSWER


async def test_a_retry_after_a_failure_that_streamed_nothing_does_not_reset(
    openai_sim: OpenAIChatSim, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEXT_RESET_KEY", openai_sim.api_key)
    openai_sim.script(ANSWER)
    openai_sim.fault("server_error", status=503)
    model = RetryingModel(client(openai_sim, "openai", settings, "TEXT_RESET_KEY"), FAST)
    sink = Recorder()
    await model.complete(ask(), sink)
    assert model.retries == 1 and RESET not in sink.record and shown(sink.record) == ANSWER


@pytest.mark.parametrize("no_reset", [False, True], indirect=True, ids=["reset", "control"])
async def test_a_fallback_takes_back_what_the_failed_member_streamed(
    openai_sim: OpenAIChatSim,
    gemini_sim: GeminiSim,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    no_reset: bool,
) -> None:
    monkeypatch.setenv("TEXT_RESET_KEY", openai_sim.api_key)
    monkeypatch.setenv("TEXT_RESET_BACKUP", gemini_sim.api_key)
    openai_sim.script(Turn(text="Let me check the lease for the rent and the deposit first."))
    openai_sim.fault("stream_error", times=2)  # both of its attempts break half-way
    gemini_sim.script(ANSWER)
    first = RetryingModel(
        client(openai_sim, "openai", settings, "TEXT_RESET_KEY"), RetryPolicy(2, base_delay=0.02)
    )
    backup = client(gemini_sim, "gemini", settings, "TEXT_RESET_BACKUP")
    chain = FallbackModel("chain", [(first, CircuitBreaker("a")), (backup, CircuitBreaker("b"))])
    sink = Recorder()
    reply = await chain.complete(ask(), sink)
    assert reply.text == ANSWER and reply.model == backup.name
    if no_reset:
        assert RESET not in sink.record and shown(sink.record) != ANSWER
        return
    # the first member's retry resets its first attempt; the chain resets its second
    assert sink.record.count(RESET) == 2
    assert shown(sink.record) == ANSWER


class Listener:
    """A loop text listener that can be reset: records (errand_id, delta or RESET)."""

    def __init__(self) -> None:
        self.record: list[tuple[str, str | None]] = []

    def __call__(self, errand_id: str, delta: str, /) -> None:
        self.record.append((errand_id, delta))

    def reset(self, errand_id: str) -> None:
        self.record.append((errand_id, RESET))


async def test_the_loop_passes_the_reset_to_its_listener(
    openai_sim: OpenAIChatSim,
    settings: Settings,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEXT_RESET_KEY", openai_sim.api_key)
    openai_sim.script(ANSWER)
    openai_sim.fault("stream_error")
    endpoint = ProviderSettings(
        kind="openai", base_url=openai_sim.base_url, api_key_env="TEXT_RESET_KEY"
    )
    s = settings.model_copy(update={"providers": {"sim": endpoint}})
    listener = Listener()
    runner = harness_for(store, s, tools=FunctionToolset(), policy=AllowAll()).runner(
        on_text=listener
    )
    errand_id = await create_errand(store, s, "what is the rent?", model="sim:gpt-sim")
    view = await runner.run_errand(errand_id)
    assert view.state is ErrandState.done and view.result == ANSWER
    assert {e for e, _ in listener.record} == {errand_id}
    texts = [d for _, d in listener.record]
    assert texts.count(RESET) == 1 and shown(texts) == ANSWER


def test_a_listener_without_reset_is_not_told() -> None:
    deltas: list[tuple[str, str]] = []
    sink = ErrandText(lambda e, d: deltas.append((e, d)), "e1")
    sink("some ")
    sink.reset()  # a plain function cannot be told: nothing happens
    assert deltas == [("e1", "some ")]


# -- a real server: the errand's stream carries the reset ------------------------------------


def sse(stream: httpx.Response) -> Iterator[tuple[str, Any]]:
    kind = ""
    for line in stream.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


@pytest.mark.parametrize("control", ["", "no_text_reset"], ids=["reset", "control"])
def test_the_errand_stream_carries_the_reset(
    tmp_path: Path, openai_sim: OpenAIChatSim, control: str
) -> None:
    home = tmp_path / "home"
    write_config(
        home,
        f'[providers.sim]\nkind = "openai"\nbase_url = "{openai_sim.base_url}"\n'
        'api_key_env = "TEXT_RESET_KEY"',
    )
    env = child_env(
        clean_env(home, TEXT_RESET_KEY=openai_sim.api_key), controls=[control] * bool(control)
    )
    sink = Sink()
    # first an action that waits for approval, so the stream is surely open when the
    # reply that breaks half-way streams
    openai_sim.script(
        Turn(tool_calls=(call("http_request", {"method": "POST", "url": sink.url, "body": "hi"}),)),
        ANSWER,
    )
    server = ServerProc(home, env=env).start()
    try:
        with server.client() as api:
            r = api.post("/api/errands", json={"text": "post it", "model": "sim:gpt-sim"})
            assert r.status_code == 201, r.text
            errand_id = r.json()["id"]
            seen: list[tuple[str, Any]] = []
            with api.stream("GET", f"/api/errands/{errand_id}/stream") as stream:
                for kind, data in sse(stream):
                    seen.append((kind, data))
                    if kind == "event" and data["event"]["type"] == "approval_requested":
                        openai_sim.fault("stream_error", message="upstream overloaded")
                        detail = api.get(f"/api/errands/{errand_id}").json()
                        [approval] = detail["approvals"]
                        r = api.post(
                            f"/api/approvals/{approval['id']}/approve",
                            json={"args_hash": approval["args_hash"]},
                        )
                        assert r.status_code == 200, r.text
                    if kind == "view" and data["status"] == "done":
                        break
    finally:
        server.kill()
        sink.close()
    texts = [d["delta"] if k == "text" else None for k, d in seen if k in ("text", "text_reset")]
    if control:  # the control: no reset, and what the inbox shows is garbled
        assert RESET not in texts and shown(texts) != ANSWER
        return
    assert texts.count(RESET) == 1
    cut = texts.index(RESET)
    # the fragment before the reset: the hub drops deltas not yet sent when a reset
    # comes, so how much of it the stream carried depends on timing
    assert ANSWER.startswith("".join(d for d in texts[:cut] if d))
    assert shown(texts) == ANSWER  # after the reset: the whole answer, once
    assert [r.fault for r in openai_sim.requests] == [None, "stream_error", None]


def test_the_cli_marks_the_discarded_text(cli: CLI, openai_sim: OpenAIChatSim) -> None:
    openai_sim.script(ANSWER)
    openai_sim.fault("stream_error", message="upstream overloaded")
    r = cli("run", "what is the rent?", "--model", "openai:sim-model", **openai_sim.env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    [mark] = [
        i for i, line in enumerate(lines) if "(retrying — the text above is discarded)" in line
    ]
    assert ANSWER.startswith(lines[mark - 1].split("model: ", 1)[1])  # the fragment
    assert lines[mark + 1].split("model: ", 1)[1] == ANSWER  # then the whole answer, once
