"""Provider reasoning state survives a restart, through the errand log.

Anthropic's signed thinking blocks, Gemini's thought signatures and the Responses API's
encrypted reasoning items must go back to the API with their assistant turn. The
restart tests run errands (``harness.build`` from the home's config: the real loop, a
real SQLite store, the provider's client under its wrappers) in a real process,
``helpers/replay_worker.py``, against a provider's wire simulator that runs in the test
process (reached by its base URL, ``[providers.sim]``), until the model has asked for a
tool call that needs an approval. That process is killed with SIGKILL while the errand
waits; a person approves; a new worker process resumes the errand; and the test checks
that its request carried exactly the state the simulator issued.

Each guarantee has its negative control: the same run with the state dropped from the
fold (the control ``no_replay``, ``seams.controls.NoReplayLoop``, installed in both
processes) must fail the check. And state from one member of a fallback chain never
reaches another (those runs restart within this process: a new store on the same file,
a new runner, fresh clients).
"""

from __future__ import annotations

import base64
import json
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import Ledger, ledger_registry
from helpers.server import clean_env
from seams import child_env
from sim.anthropic_server import AnthropicSim
from sim.core import SimServer, Turn, call
from sim.gemini_server import GeminiSim, _b64
from sim.openai_responses_server import OpenAIResponsesSim

from errands.config import Settings, load_settings
from errands.core import events as ev
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.engine.runner import Runner
from errands.models.protocol import Model
from errands.models.providers.anthropic import AnthropicModel
from errands.models.providers.gemini import SKIP_SIGNATURE, GeminiModel
from errands.models.providers.openai_responses import OpenAIResponsesModel
from errands.models.wrappers.fallback import CircuitBreaker, FallbackModel
from errands.policy.approvals import Approvals
from errands.policy.rules import Policy
from errands.store.sqlite import SQLiteStore
from errands.tools.toolset import FunctionToolset

SEND = call("send_message", {"to": "bob", "body": "hi"}, call_id="c1")
WORKER = Path(__file__).parent / "helpers" / "replay_worker.py"
KEY_ENV = "REPLAY_SIM_KEY"


# -- the providers: a fresh client, and what the simulator issued / got back ----------


@dataclass
class Provider:
    kind: str
    model: str  # the model a process asks for (``sim:MODEL``, [providers.sim] of kind)
    sim: SimServer
    fresh: Callable[[], Model]  # a new client, as a new process would build
    issued: Callable[[], Any]  # the state the simulator gave out with the first reply
    sent: Callable[[dict[str, Any]], Any]  # the state a request body carried back
    first: Turn = field(default_factory=lambda: Turn(tool_calls=(SEND,), reasoning_tokens=40))

    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.sim.requests if r.status == 200]


def anthropic(sim: AnthropicSim, model: str = "claude-test") -> Provider:
    def sent(body: dict[str, Any]) -> Any:
        assistant = next(m for m in body["messages"] if m["role"] == "assistant")
        return [b for b in assistant["content"] if "thinking" in b["type"]]

    return Provider(
        "anthropic",
        model,
        sim,
        lambda: AnthropicModel(model, base_url=sim.base_url, api_key=sim.api_key, max_retries=0),
        lambda: sim.issued_thinking[0],
        sent,
        Turn(tool_calls=(SEND,), reasoning_tokens=40, redacted_thinking=True),
    )


def gemini(sim: GeminiSim) -> Provider:
    def sent(body: dict[str, Any]) -> Any:
        model_turn = next(c for c in body["contents"] if c["role"] == "model")
        (part,) = [p for p in model_turn["parts"] if "functionCall" in p]
        return {part["functionCall"]["id"]: _b64(part.get("thoughtSignature", ""))}

    return Provider(
        "gemini",
        "gemini-3-flash",
        sim,
        lambda: GeminiModel(
            "gemini-3-flash", base_url=sim.base_url, api_key=sim.api_key, max_retries=0
        ),
        lambda: dict(sim.issued_signatures),
        sent,
    )


def responses(sim: OpenAIResponsesSim) -> Provider:
    def sent(body: dict[str, Any]) -> Any:
        return [i for i in body["input"] if i.get("type") == "reasoning"]

    return Provider(
        "openai-responses",
        "gpt-test",
        sim,
        lambda: OpenAIResponsesModel(
            "gpt-test", base_url=sim.base_url, api_key=sim.api_key, max_retries=0
        ),
        lambda: [{k: v for k, v in sim.issued_reasoning[0].items() if k != "status"}],
        sent,
    )


@pytest.fixture(params=["anthropic", "gemini", "openai-responses"])
def provider(
    request: pytest.FixtureRequest,
    anthropic_sim: AnthropicSim,
    gemini_sim: GeminiSim,
    openai_responses_sim: OpenAIResponsesSim,
) -> Provider:
    return {
        "anthropic": lambda: anthropic(anthropic_sim),
        "gemini": lambda: gemini(gemini_sim),
        "openai-responses": lambda: responses(openai_responses_sim),
    }[request.param]()


# -- a "process" within this one, for the fallback tests: its own store object, runner
# -- and client ---------------------------------------------------------------------------


class World:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        # a reasoning level from the config, as a person sets it (reasoning = "medium")
        self.settings = settings.model_copy(update={"reasoning": "medium"})
        self.registry: FunctionToolset = ledger_registry(Ledger(tmp / "ledger"))
        self._closers: list[Any] = []

    def process(self, model: Model) -> Runner:
        """A "new process" in this one: a new store on the same file, a new runner,
        this client."""
        store = SQLiteStore(self.settings.db_path)
        self._closers += [store.close, model.aclose]
        return Runner(
            store,
            self.settings,
            self.registry,
            Policy(),
            models=lambda spec: model,
        )

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()


@pytest.fixture
async def world(settings: Settings, tmp_path: Path) -> Any:
    w = World(settings, tmp_path)
    yield w
    await w.close()


async def until_approval(world: World, model: Model) -> tuple[str, ev.ModelResponded]:
    """Run a new errand in one process until it waits for approval of its tool call."""
    runner = world.process(model)
    eid = await create_errand(runner.store, world.settings, "tell bob", model="scripted:demo")
    view = await runner.run_errand(eid)
    assert view.state is ErrandState.waiting_approval
    (pending,) = view.pending.values()
    await Approvals(runner.store, world.registry).approve(pending.id, by="ann", channel="cli")
    (response,) = [
        s.event for s in await runner.store.read(eid) if isinstance(s.event, ev.ModelResponded)
    ]
    return eid, response


async def resume(world: World, eid: str, model: Model) -> None:
    """Resume the errand in another process (a fresh client) to the end."""
    view = await world.process(model).run_errand(eid)
    assert view.state is ErrandState.done, view


# -- real processes: run until the approval, SIGKILL, approve, resume ------------------


def configure(home: Path, p: Provider) -> str:
    """errands.toml pointing ``sim:`` at *p*'s simulator; the model spec to ask for."""
    (home / "errands.toml").write_text(
        'reasoning = "medium"\n\n'  # a reasoning level, as a person sets it
        "[providers.sim]\n"
        f'kind = "{p.kind}"\nbase_url = "{p.sim.base_url}"\napi_key_env = "{KEY_ENV}"\n'
        "max_attempts = 1\n"  # a failed call fails the test, it is not retried away
    )
    return f"sim:{p.model}"


@dataclass
class Worker:
    """A ``helpers/replay_worker.py`` process, its stderr in a file."""

    proc: subprocess.Popen[str]
    err: Path

    def said(self, timeout: float = 60.0) -> list[str]:
        """The first line it prints, split (the test fails if none comes in time)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"the worker said nothing:\n{self.errors()}")
        return line.split()

    def errors(self) -> str:
        return self.err.read_text()


def worker(home: Path, p: Provider, control: bool, *args: str) -> Worker:
    """A worker process for *p*; with *control*, the ``no_replay`` control installed."""
    env = clean_env(home, **{KEY_ENV: p.sim.api_key})
    err = home.parent / f"worker-{args[0]}.err"
    with open(err, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(home), str(home.parent / "ledger"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            env=child_env(env, controls=["no_replay"] if control else []),
        )
    return Worker(proc, err)


async def restart_mid_loop(home: Path, p: Provider, control: bool = False) -> tuple[Any, Any]:
    """(what the simulator issued with the tool call, what came back after a restart)."""
    p.sim.script(p.first, Turn(text="Told bob.", reasoning_tokens=5))
    spec = configure(home, p)
    first = worker(home, p, control, "start", spec)
    said = first.said()
    assert len(said) == 3 and said[1] == "waiting_approval", (said, first.errors())
    eid, _, approval = said
    first.proc.send_signal(signal.SIGKILL)  # the process goes away while the errand waits
    assert first.proc.wait(30) == -signal.SIGKILL
    first.proc.communicate()

    store = SQLiteStore(load_settings(home).db_path)  # a person, from another process
    try:
        (response,) = [
            s.event for s in await store.read(eid) if isinstance(s.event, ev.ModelResponded)
        ]
        assert response.replay is not None and response.replay["kind"] == p.kind  # logged
        registry = ledger_registry(Ledger(home.parent / "ledger"))
        await Approvals(store, registry).approve(approval, by="ann", channel="cli")
    finally:
        await store.close()

    second = worker(home, p, control, "resume", eid)
    out, _ = second.proc.communicate(timeout=60)
    assert second.proc.returncode == 0 and out.split() == [eid, "done"], (out, second.errors())
    assert len(Ledger(home.parent / "ledger").entries()) == 1  # the approved call ran once
    _, resumed = p.bodies()
    return p.issued(), p.sent(resumed)


# -- the guarantee and its negative control ----------------------------------------------


async def test_reasoning_state_survives_a_restart(home: Path, provider: Provider) -> None:
    issued, sent = await restart_mid_loop(home, provider)
    assert issued  # the simulator did think / sign
    # the exact signed blocks / signature (not the placeholder) / reasoning items
    assert sent == issued
    if provider.kind == "anthropic":
        body = provider.bodies()[1]
        assert body["thinking"]["type"] == "enabled"  # still thinking after the restart


async def test_negative_control_without_the_log_the_state_is_lost(
    home: Path, provider: Provider
) -> None:
    # a fold that drops the state instead of carrying it
    issued, sent = await restart_mid_loop(home, provider, control=True)
    assert issued and sent != issued  # the check above would have failed
    if provider.kind == "gemini":
        assert list(sent.values()) == [SKIP_SIGNATURE]
    if provider.kind == "anthropic":
        assert provider.bodies()[1]["thinking"] == {"type": "disabled"}


# -- fallback: one member's state never reaches another ----------------------------------


def _opaque(state: Any) -> Iterator[str]:
    """The opaque strings in a provider's issued state (signatures, encrypted content)."""
    if isinstance(state, dict):
        for key, value in state.items():
            if isinstance(value, bytes):
                yield base64.b64encode(value).decode()
            elif key in ("signature", "data", "encrypted_content"):
                yield str(value)
            else:
                yield from _opaque(value)
    elif isinstance(state, list):
        for item in state:
            yield from _opaque(item)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("anthropic", "gemini"),
        ("gemini", "openai-responses"),
        ("openai-responses", "anthropic"),
        ("anthropic", "anthropic-other-model"),
    ],
)
async def test_a_fallback_member_never_gets_anothers_state(
    world: World,
    anthropic_sim: AnthropicSim,
    gemini_sim: GeminiSim,
    openai_responses_sim: OpenAIResponsesSim,
    first: str,
    then: str,
) -> None:
    providers = {
        "anthropic": anthropic(anthropic_sim),
        "gemini": gemini(gemini_sim),
        "openai-responses": responses(openai_responses_sim),
        "anthropic-other-model": anthropic(anthropic_sim, "claude-other"),
    }
    a, b = providers[first], providers[then]

    def chain() -> Model:
        return FallbackModel(
            "chain",
            [(a.fresh(), CircuitBreaker(first)), (b.fresh(), CircuitBreaker(then))],
        )

    a.sim.script(a.first)
    eid, response = await until_approval(world, chain())
    assert response.replay is not None and response.replay["kind"] == a.kind
    a.sim.fault("server_error", status=503)  # the first member is down after the restart
    b.sim.script(Turn(text="Told bob.", reasoning_tokens=5))
    await resume(world, eid, chain())
    body = b.bodies()[-1]
    wire = json.dumps(body)
    issued = list(_opaque(a.issued()))
    assert issued and not any(s in wire for s in issued)
    if b.kind == "gemini":
        assert list(b.sent(body).values()) == [SKIP_SIGNATURE]
    if b.kind == "anthropic":
        assert b.sent(body) == [] and body["thinking"] == {"type": "disabled"}
    if b.kind == "openai-responses":
        assert b.sent(body) == []
    responded = [
        s.event
        for s in await world.process(a.fresh()).store.read(eid)
        if isinstance(s.event, ev.ModelResponded)
    ]
    last = responded[-1]
    assert last.model == b.fresh().name  # B answered; its own state (if any) is B's
    assert last.replay is None or (last.replay["kind"], last.replay["model"]) == (
        b.kind,
        last.model,
    )
