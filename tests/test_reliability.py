"""Reliability against the wire simulators: retries, timeouts, fallback chains, circuit
breakers and rate limits -- through real errands (Runner, loop, store) wherever the
guarantee is about errands, and through the real wrapper stack otherwise. Nothing here
mocks errands' own classes: the failures come from the simulators.

Every errand completes or fails with a clear reason, and nothing is counted twice: the
usage in the log is exactly the usage the simulator reported for its successful
answers (a failed attempt that was retried adds nothing).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import re
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers.kit import harness_for
from sim.anthropic_server import AnthropicSim
from sim.core import RecordedRequest, SimLimits, SimServer, Turn, approx_tokens, call
from sim.gemini_server import GeminiSim
from sim.openai_responses_server import OpenAIResponsesSim
from sim.openai_server import OpenAIChatSim

from errands.config import ProviderSettings, Settings
from errands.core import events as ev
from errands.core.events import EffectClass, Usage
from errands.core.states import ErrandState, ErrandView
from errands.engine.operations import create_errand
from errands.models.protocol import Message, ModelError, ModelRequest
from errands.models.spec import ModelSpecError, resolve_model
from errands.models.wrappers.fallback import CircuitBreaker, FallbackModel
from errands.models.wrappers.ratelimit import RateLimiter, RateLimits, Reservation
from errands.models.wrappers.router import innermost
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.tools.toolset import FunctionToolset

KEY_ENV = "RELIABILITY_SIM_KEY"
BACKUP_ENV = "RELIABILITY_BACKUP_KEY"

# -- helpers -----------------------------------------------------------------------------


def endpoint(sim: SimServer, kind: str, key_env: str = KEY_ENV, **kw: Any) -> ProviderSettings:
    # errands waits out a provider outage (15 min by default); these tests are about
    # what happens at the end of the retries, so they do not wait unless they say so
    kw.setdefault("outage_wait_seconds", 0)
    return ProviderSettings(kind=kind, base_url=sim.base_url, api_key_env=key_env, **kw)


def with_providers(
    settings: Settings, chains: dict[str, list[str]] | None = None, **providers: ProviderSettings
) -> Settings:
    return settings.model_copy(update={"providers": providers, "chains": chains or {}})


def lookup_registry(on_call: Any = None) -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=EffectClass.read, idempotent=True)
    def lookup(term: str) -> str:
        """Look something up.

        Args:
            term: What to look up.
        """
        if on_call is not None:
            on_call(term)
        return f"{term}: found"

    return reg


async def run_errand(
    store: Store,
    settings: Settings,
    model: str,
    text: str = "find the rent",
    registry: FunctionToolset | None = None,
) -> ErrandView:
    tools = registry or lookup_registry()
    runner = harness_for(store, settings, tools=tools, policy=AllowAll()).runner()
    eid = await create_errand(store, settings, text, model=model)
    return await runner.run_errand(eid)


async def responses(store: Store, errand_id: str) -> list[ev.ModelResponded]:
    return [s.event for s in await store.read(errand_id) if isinstance(s.event, ev.ModelResponded)]


def completions(sim: SimServer) -> list[RecordedRequest]:
    return [r for r in sim.requests if r.method == "POST"]


def answered(sim: SimServer) -> list[RecordedRequest]:
    """The requests the simulator answered in full (no fault, no error status)."""
    return [r for r in completions(sim) if r.status == 200 and r.fault is None]


def openai_reported(request: RecordedRequest, turn: Turn) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) the OpenAI simulator reports for a request
    answered with *turn* (its documented formula, see sim/openai_server.py)."""
    body = request.body
    prompt = json.dumps(
        [body.get("tools") or [], body["messages"]], sort_keys=True, separators=(",", ":")
    )
    out = turn.text + "".join(c.name + c.arguments_json() for c in turn.tool_calls)
    return approx_tokens(prompt), approx_tokens(out) + turn.reasoning_tokens


@pytest.fixture
def sim_key(openai_sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, openai_sim.api_key)
    return openai_sim.api_key


def ask(text: str, priority: int = 0) -> ModelRequest:
    return ModelRequest(
        system="be brief", messages=(Message("user", text),), tools=(), priority=priority
    )


# -- retries, through real errands ---------------------------------------------------------


async def test_server_errors_are_retried_and_only_the_answer_counts(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    turn = Turn(text="The rent is 1,900.", cached_tokens=0)
    openai_sim.script(turn)
    openai_sim.fault("server_error", status=503, times=2)
    s = with_providers(settings, sim=endpoint(openai_sim, "openai"))
    view = await run_errand(store, s, "sim:gpt-sim")
    assert view.state is ErrandState.done and view.result == "The rent is 1,900."
    assert [r.status for r in completions(openai_sim)] == [503, 503, 200]
    [ok] = answered(openai_sim)
    prompt, completion = openai_reported(ok, turn)
    # exactly what the simulator reported for the one successful call: not x3
    assert view.usage.input_tokens == prompt and view.usage.output_tokens == completion
    assert len(await responses(store, view.id)) == 1


@pytest.mark.parametrize("fault", ["truncated_stream", "stream_ends_early", "stream_error"])
async def test_broken_streams_are_retried_without_double_counting(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str, fault: Any
) -> None:
    turn = Turn(text="A reply long enough to be cut in the middle of its stream.", cached_tokens=0)
    openai_sim.script(turn)
    openai_sim.fault(fault)
    s = with_providers(settings, sim=endpoint(openai_sim, "openai"))
    view = await run_errand(store, s, "sim:gpt-sim")
    assert view.state is ErrandState.done and view.result == turn.text
    assert len(completions(openai_sim)) == 2
    ok = completions(openai_sim)[-1]
    assert (view.usage.input_tokens, view.usage.output_tokens) == openai_reported(ok, turn)


async def test_429_retry_waits_at_least_retry_after(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(text="ok", cached_tokens=0))
    openai_sim.fault("rate_limit", retry_after=1.2)
    s = with_providers(settings, sim=endpoint(openai_sim, "openai"))
    start = time.monotonic()
    view = await run_errand(store, s, "sim:gpt-sim")
    elapsed = time.monotonic() - start
    assert view.state is ErrandState.done
    assert [r.status for r in completions(openai_sim)] == [429, 200]
    assert elapsed >= 1.2  # the backoff alone would have been 0.25-0.5 s


async def test_a_hung_connection_times_out_and_is_retried(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    turn = Turn(text="answered after the hang", cached_tokens=0)
    openai_sim.script(turn)
    openai_sim.fault("hang", seconds=20)
    s = with_providers(settings, sim=endpoint(openai_sim, "openai", timeout_seconds=0.5))
    view = await run_errand(store, s, "sim:gpt-sim")
    assert view.state is ErrandState.done and view.result == turn.text
    # the timeout, not the 20 s hang: the errand is done while the hung request still
    # hangs (the simulator records a request once it has answered it)
    assert [r.fault for r in completions(openai_sim)] == [None]
    openai_sim.stop()  # releases the hung handler, which then records its request
    for _ in range(100):
        if len(completions(openai_sim)) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(str(r.fault) for r in completions(openai_sim)) == ["None", "hang"]
    assert (view.usage.input_tokens, view.usage.output_tokens) == openai_reported(
        answered(openai_sim)[0], turn
    )


async def test_malformed_json_is_not_retried_and_fails_clearly(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(text="never seen"))
    openai_sim.fault("malformed_json")
    s = with_providers(settings, sim=endpoint(openai_sim, "openai"))
    view = await run_errand(store, s, "sim:gpt-sim")
    assert view.state is ErrandState.failed
    assert "invalid JSON" in view.reason and "model failed" in view.reason
    assert len(completions(openai_sim)) == 1  # not retryable: never retried
    assert view.usage == Usage()


async def test_a_client_error_is_never_retried(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(text="never seen"))
    openai_sim.fault("server_error", status=422, message="unprocessable")
    s = with_providers(settings, sim=endpoint(openai_sim, "openai"))
    view = await run_errand(store, s, "sim:gpt-sim")
    assert view.state is ErrandState.failed and "HTTP 422" in view.reason
    assert len(completions(openai_sim)) == 1


async def test_attempts_are_capped(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(text="never seen"))
    openai_sim.fault("server_error", status=500, times=50)
    s = with_providers(settings, sim=endpoint(openai_sim, "openai", max_attempts=3))
    view = await run_errand(store, s, "sim:gpt-sim")
    assert view.state is ErrandState.failed and "HTTP 500" in view.reason
    assert len(completions(openai_sim)) == 3


async def test_total_retry_time_is_capped(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(Turn(text="never seen"))
    openai_sim.fault("rate_limit", retry_after=60)
    s = with_providers(settings, sim=endpoint(openai_sim, "openai", retry_max_seconds=2))
    start = time.monotonic()
    view = await run_errand(store, s, "sim:gpt-sim")
    assert time.monotonic() - start < 60  # did not sit out the 60 s retry-after
    assert view.state is ErrandState.failed and "429" in view.reason
    assert len(completions(openai_sim)) == 1


async def test_invalid_tool_arguments_are_told_to_the_model(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(
        Turn(tool_calls=(call("lookup", '{"term": "rent"'),)),  # cut-off JSON
        Turn(text="Sorry, retrying properly.", when="not a JSON object"),
    )
    s = with_providers(settings, sim=endpoint(openai_sim, "openai"))
    view = await run_errand(store, s, "sim:gpt-sim")
    assert view.state is ErrandState.done and view.result == "Sorry, retrying properly."
    second = completions(openai_sim)[1].body["messages"]
    assert second[-1]["role"] == "tool"
    assert second[-1]["content"].startswith("ERROR:") and "lookup" in second[-1]["content"]


# -- failover ------------------------------------------------------------------------------


async def test_a_provider_that_vanishes_mid_errand_is_replaced_by_the_fallback(
    store: Store,
    settings: Settings,
    openai_sim: OpenAIChatSim,
    anthropic_sim: AnthropicSim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, openai_sim.api_key)
    monkeypatch.setenv(BACKUP_ENV, anthropic_sim.api_key)
    openai_sim.script(
        Turn(text="Looking up the rent.", tool_calls=(call("lookup", {"term": "rent"}),)),
        Turn(tool_calls=(call("lookup", {"term": "deposit"}),), when="rent: found"),
    )
    anthropic_sim.script(Turn(text="Rent and deposit are both known.", when="deposit: found"))

    def vanish(term: str) -> None:
        if term == "deposit":  # after turn 2, before turn 3: the provider disappears
            openai_sim.stop()

    s = with_providers(
        settings,
        primary=endpoint(openai_sim, "openai", max_attempts=2),
        backup=endpoint(anthropic_sim, "anthropic", key_env=BACKUP_ENV),
    )
    view = await run_errand(
        store, s, "primary:gpt-sim,backup:claude-sim", registry=lookup_registry(vanish)
    )
    assert view.state is ErrandState.done and view.result == "Rent and deposit are both known."
    # the log says which model answered each turn
    assert [r.model for r in await responses(store, view.id)] == [
        "primary:gpt-sim",
        "primary:gpt-sim",
        "backup:claude-sim",
    ]
    # the backup got the whole transcript, in its own wire format, tool results included
    [request] = completions(anthropic_sim)
    messages = request.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    first_calls = completions(openai_sim)[1].body["messages"][2]["tool_calls"]
    assert messages[1]["content"][-1]["type"] == "tool_use"
    assert messages[1]["content"][-1]["id"] == first_calls[0]["id"]
    results = [b for m in messages for b in m["content"] if b["type"] == "tool_result"]
    assert [b["content"] for b in results] == ["rent: found", "deposit: found"]
    # nothing counted twice: one logged response per answered request
    assert len(answered(openai_sim)) == 2 and len(answered(anthropic_sim)) == 1
    logged = await responses(store, view.id)
    assert view.usage.input_tokens == sum(r.usage.input_tokens for r in logged)
    assert logged[2].usage.input_tokens > 0


async def test_a_named_chain_from_the_config(
    store: Store,
    settings: Settings,
    openai_sim: OpenAIChatSim,
    gemini_sim: GeminiSim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, openai_sim.api_key)
    monkeypatch.setenv(BACKUP_ENV, gemini_sim.api_key)
    openai_sim.script(Turn(text="never seen"))
    openai_sim.fault("server_error", status=401, message="account suspended")
    gemini_sim.script(Turn(text="Gemini answered."))
    s = with_providers(
        settings,
        chains={"main": ["primary:gpt-sim", "backup:gemini-2.5-flash"]},
        primary=endpoint(openai_sim, "openai"),
        backup=endpoint(gemini_sim, "gemini", key_env=BACKUP_ENV),
    )
    view = await run_errand(store, s, "chain:main")
    assert view.state is ErrandState.done and view.result == "Gemini answered."
    assert len(completions(openai_sim)) == 1  # a 401 is not retried, it fails over
    [response] = await responses(store, view.id)
    assert response.model == "backup:gemini-2.5-flash"


async def test_when_every_model_fails_the_errand_says_why_for_each(
    store: Store,
    settings: Settings,
    openai_sim: OpenAIChatSim,
    anthropic_sim: AnthropicSim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, openai_sim.api_key)
    monkeypatch.setenv(BACKUP_ENV, anthropic_sim.api_key)
    openai_sim.script(Turn(text="never"))
    anthropic_sim.script(Turn(text="never"))
    openai_sim.fault("server_error", status=500, times=5)
    anthropic_sim.fault("malformed_json")
    s = with_providers(
        settings,
        primary=endpoint(openai_sim, "openai", max_attempts=2),
        backup=endpoint(anthropic_sim, "anthropic", key_env=BACKUP_ENV),
    )
    view = await run_errand(store, s, "primary:gpt-sim,backup:claude-sim")
    assert view.state is ErrandState.failed
    assert "primary:gpt-sim" in view.reason and "HTTP 500" in view.reason
    assert "backup:claude-sim" in view.reason and "invalid JSON" in view.reason


def test_chain_specs_are_checked(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k-test")
    with pytest.raises(ModelSpecError, match=r"no chain 'nope'.*\[chains\]"):
        resolve_model("chain:nope", settings)
    with pytest.raises(ModelSpecError, match="empty member"):
        resolve_model("openai:a,,openai:b", settings)
    s = with_providers(settings, chains={"inner": ["openai:a"]})
    with pytest.raises(ModelSpecError, match="cannot be a chain"):
        resolve_model("openai:a,chain:inner", s)
    model = resolve_model("chain:inner", s)
    assert isinstance(model, FallbackModel) and model.name == "chain:inner"


def test_a_provider_section_without_kind_keeps_its_provider(settings: Settings) -> None:
    s = with_providers(settings, anthropic=ProviderSettings(rpm=50, itpm=30_000))
    model = resolve_model("anthropic:claude-x", s)
    assert type(innermost(model)).__name__ == "AnthropicModel"
    assert model.name == "anthropic:claude-x"


# -- the circuit breaker -------------------------------------------------------------------


COOLDOWN = 60.0


def cool_down(breaker: CircuitBreaker) -> None:
    """The breaker's cool-down passes (it opened one cool-down ago)."""
    assert breaker.state == "open" and breaker.cooldown == COOLDOWN
    breaker.opened_at -= COOLDOWN


@pytest.fixture
def dead_and_backup(
    openai_sim: OpenAIChatSim, gemini_sim: GeminiSim, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[OpenAIChatSim, GeminiSim, Settings]]:
    monkeypatch.setenv(KEY_ENV, openai_sim.api_key)
    monkeypatch.setenv(BACKUP_ENV, gemini_sim.api_key)
    openai_sim.script(default="primary is back")
    openai_sim.fault("server_error", status=503, times=1000)
    gemini_sim.script(default="backup answered")
    s = Settings(
        providers={
            "dead": endpoint(
                openai_sim,
                "openai",
                max_attempts=1,
                breaker_failures=2,
                # long enough that no load lets it pass while the test looks; the
                # tests pass it by moving the breaker's opened_at back (cool_down)
                breaker_cooldown_seconds=COOLDOWN,
            ),
            "backup": endpoint(gemini_sim, "gemini", key_env=BACKUP_ENV),
        }
    )
    yield openai_sim, gemini_sim, s


async def test_an_open_breaker_stops_traffic_until_the_cooldown_then_probes_once(
    dead_and_backup: tuple[OpenAIChatSim, GeminiSim, Settings],
) -> None:
    dead, backup, s = dead_and_backup
    chain = resolve_model("dead:gpt-sim,backup:gemini-2.5-flash", s)
    assert isinstance(chain, FallbackModel)
    breaker = chain.members[0][1]
    for _ in range(2):  # two failures in a row open it
        assert (await chain.complete(ask("q"))).model == "backup:gemini-2.5-flash"
    assert len(completions(dead)) == 2 and breaker.state == "open"
    for _ in range(5):  # open: the dead provider gets nothing
        assert (await chain.complete(ask("q"))).text == "backup answered"
    assert len(completions(dead)) == 2
    cool_down(breaker)  # half-open from now
    replies = await asyncio.gather(*(chain.complete(ask("q")) for _ in range(5)))
    assert len(completions(dead)) == 3  # exactly one probe among five concurrent calls
    assert all(r.text == "backup answered" for r in replies)
    assert breaker.state == "open"  # the probe failed: open again
    await chain.complete(ask("q"))
    assert len(completions(dead)) == 3
    assert len(completions(backup)) == 2 + 5 + 5 + 1


async def test_a_successful_probe_closes_the_breaker(
    dead_and_backup: tuple[OpenAIChatSim, GeminiSim, Settings],
) -> None:
    dead, _, s = dead_and_backup
    chain = resolve_model("dead:gpt-sim,backup:gemini-2.5-flash", s)
    assert isinstance(chain, FallbackModel)
    for _ in range(3):
        await chain.complete(ask("q"))
    assert len(completions(dead)) == 2
    dead.reset()  # the provider recovers
    dead.script(default="primary is back")
    cool_down(chain.members[0][1])
    reply = await chain.complete(ask("q"))
    assert reply.text == "primary is back" and reply.model == "dead:gpt-sim"
    assert chain.members[0][1].state == "closed"
    assert (await chain.complete(ask("q"))).model == "dead:gpt-sim"


async def test_negative_control_without_a_breaker_the_dead_provider_gets_every_call(
    dead_and_backup: tuple[OpenAIChatSim, GeminiSim, Settings],
) -> None:
    dead, _, s = dead_and_backup
    stack = resolve_model("dead:gpt-sim", s)
    backup = resolve_model("backup:gemini-2.5-flash", s)
    never_opens = CircuitBreaker("dead", failures=10**6)
    chain = FallbackModel("no-breaker", [(stack, never_opens), (backup, CircuitBreaker("b"))])
    for _ in range(7):
        await chain.complete(ask("q"))
    assert len(completions(dead)) == 7  # what the breaker saves


def test_breakers_and_limiters_are_shared_per_endpoint(
    dead_and_backup: tuple[OpenAIChatSim, GeminiSim, Settings],
) -> None:
    _, _, s = dead_and_backup
    one = resolve_model("dead:gpt-sim,backup:gemini-2.5-flash", s)
    two = resolve_model("dead:other-model,backup:gemini-2.5-flash", s)
    assert isinstance(one, FallbackModel) and isinstance(two, FallbackModel)
    assert one.members[0][1] is two.members[0][1]  # one breaker per endpoint
    assert one.members[1][1] is two.members[1][1]
    a = resolve_model("dead:gpt-sim", s)
    b = resolve_model("dead:gpt-sim", s)
    c = resolve_model("dead:other-model", s)
    limiter = a.inner.limiter  # type: ignore[attr-defined]
    assert b.inner.limiter is limiter  # type: ignore[attr-defined]
    assert c.inner.limiter is not limiter  # type: ignore[attr-defined]


# -- the rate limiter ----------------------------------------------------------------------
#
# Checked by orders and counts: what the limiter granted, and when, against its own
# state (paused_until), never against a fixed slack for a machine's speed.


def watch(limiter: RateLimiter) -> list[tuple[str, float, str]]:
    """Watch *limiter* (which a test's models share): each call's ``("queued", when,
    text)`` as it asks, and ``("granted", when, text)`` as it is let go, in order (its
    last message's text names the call)."""
    log: list[tuple[str, float, str]] = []
    acquire = limiter.acquire

    async def watched(request: ModelRequest) -> Reservation:
        text = request.messages[-1].text
        log.append(("queued", time.monotonic(), text))
        reservation = await acquire(request)
        log.append(("granted", time.monotonic(), text))
        return reservation

    limiter.acquire = watched  # type: ignore[method-assign]
    return log


async def test_higher_priority_requests_are_served_first(
    openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(default="ok")
    s = Settings(
        providers={"sim": endpoint(openai_sim, "openai", rpm=300, limit_window_seconds=1.0)}
    )
    model = resolve_model("sim:gpt-sim", s)  # ~4 requests per second, burst of one
    log = watch(model.inner.limiter)  # type: ignore[attr-defined]
    low = [asyncio.create_task(model.complete(ask(f"fan-out {i}"))) for i in range(6)]
    high = asyncio.create_task(model.complete(ask("parent", priority=1)))
    await asyncio.gather(*low, high)
    # the calls ask in the order they were made (the parent last); the first fan-out
    # call takes the one-request burst, the rest wait, and the parent goes ahead of the
    # fan-out calls still waiting (with no priority it would be last)
    assert [t for kind, _, t in log if kind == "queued"][-1] == "parent"
    granted = [t for kind, _, t in log if kind == "granted"]
    assert granted == ["fan-out 0", "parent", *(f"fan-out {i}" for i in range(1, 6))]
    order = [r.body["messages"][-1]["content"] for r in completions(openai_sim)]
    assert order == granted  # and so the provider got them


async def test_a_429_pauses_every_caller_of_the_endpoint(
    openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(default="ok")
    openai_sim.fault("rate_limit", retry_after=1.0)
    s = Settings(providers={"sim": endpoint(openai_sim, "openai")})  # no limits configured
    model = resolve_model("sim:gpt-sim", s)
    limiter = model.inner.limiter  # type: ignore[attr-defined]
    log = watch(limiter)
    first = asyncio.create_task(model.complete(ask("first")))
    while limiter.stats.throttled == 0:
        await asyncio.sleep(0.01)
    until = limiter.paused_until  # the 429's retry-after, from when it came
    await model.complete(ask("second"))  # got no 429 itself, but waits out the pause
    await first
    ((_, asked, _),) = [e for e in log if e[0] == "queued" and e[2] == "second"]
    ((_, let_go, _),) = [e for e in log if e[0] == "granted" and e[2] == "second"]
    assert asked < until <= let_go  # it asked during the pause and went after it
    assert [r.status for r in completions(openai_sim)] == [429, 200, 200]


async def test_settlement_counts_cache_reads_only_where_the_provider_does() -> None:
    for counts, charged in ((False, 200.0), (True, 1000.0)):
        limits = RateLimits(itpm=60_000, window=60.0, cache_reads_count=counts)
        limiter = RateLimiter(limits, clock=lambda: 0.0)  # a stopped clock: no refill
        before = limiter.buckets["itpm"].level
        reservation = await limiter.acquire(ask("x" * 400))  # estimated ~110 tokens
        assert before - limiter.buckets["itpm"].level == pytest.approx(110, abs=10)
        limiter.settle(reservation, Usage(input_tokens=1000, cached_input_tokens=800))
        assert before - limiter.buckets["itpm"].level == pytest.approx(charged)


async def test_a_throttled_limiter_holds_calls_for_the_retry_after() -> None:
    limiter = RateLimiter(RateLimits(rpm=6000))
    asked = time.monotonic()
    limiter.throttled(0.5)
    until = limiter.paused_until
    await limiter.acquire(ask("x"))
    assert until >= asked + 0.5  # the pause is the retry-after, from when it came
    assert time.monotonic() >= until  # and the call went only after it


# -- the rate limit under load: a test-sized variant of bench/ratelimit_bench.py -----------
#
# The provider (the simulator) admits 12 requests in any 2 s. errands' limiter grants at
# most 97% of that in any window (ratelimit.py, "Staying under"): a bucket of one and a
# refill of 10.64 per 2 s, so any 13 grants are >= 2.256 s apart. Whether a request is
# then admitted also depends on how long it takes to reach the provider, which a loaded
# machine decides, not errands. So the checks are on counts and orders, with the one
# timing margin measured in the run:
#
# - errands' own grants (a watch on the shared limiter): at most 11 in any 2 s;
# - the provider's 429s: a 429 means 13 arrivals within 2 s, whose grants were at least
#   2 s + MARGIN apart (MARGIN: the smallest span of 13 grants in this run, less 2 s).
#   So the transit times (arrival - grant) of those 13 differ by more than MARGIN: each
#   429 must show that measured spread, or errands sent too much;
# - no more waiting than the refill needs: the median gap between grants is at most the
#   refill interval, + WAIT_COST, + how late this event loop wakes a timer during the
#   burst (the 90th percentile of a 10 ms sleep probing alongside). Measured: the median
#   gap is 1.7-2.0 ms over the refill, idle or with 4 busy processes on 2 cores; the
#   probe's 90th percentile 0.3 ms idle, 0.3-1.8 ms loaded. (The check this replaces,
#   ">= 75% of the limit over the run", failed only when the limiter ran ~20% slower
#   than its refill; this one fails at ~3%.)


BURST_WINDOW, BURST_LIMIT = 2.0, 12  # the provider's limit: 12 requests in any 2 s
ERRAND_TEXT = re.compile(r"errand \d+")  # which errand a request is for
# what one wait costs beyond the refill: the limiter's 1 ms pad, the selector's
# millisecond ticks, the hand-over from wait_for's timeout to the waiting task
WAIT_COST = 0.005


def openai_prompt_tokens(body: Any) -> int:
    prompt = json.dumps(
        [body.get("tools") or [], body["messages"]], sort_keys=True, separators=(",", ":")
    )
    return approx_tokens(prompt)


@dataclass
class Burst:
    """What one burst of errands did, timed on one clock (time.monotonic)."""

    views: list[ErrandView]
    grants: list[tuple[float, str]]  # errands' limiter let a call go: (when, which errand)
    arrivals: list[tuple[float, str, bool]]  # the provider got it: (when, which, admitted)
    late: list[float]  # how late this event loop woke a 10 ms sleep, throughout the burst
    refill: float  # the limiter's refill interval, seconds per request (0: no limit)

    @property
    def rejected(self) -> int:
        return sum(not ok for _, _, ok in self.arrivals)

    def grant_times(self) -> list[float]:
        return sorted(t for t, _ in self.grants)

    def most_granted_in(self, window: float) -> int:
        times = self.grant_times()
        return max(bisect.bisect_right(times, t + window) - i for i, t in enumerate(times))

    def transit(self, arrived: float, errand: str) -> float:
        """From the grant of *errand*'s call that arrived at *arrived*, to then."""
        return arrived - max(t for t, e in self.grants if e == errand and t <= arrived)


async def _burst(
    store: Store, settings: Settings, sim: OpenAIChatSim, *, limited: bool, n: int
) -> Burst:
    provider = sim.enforce_limits(
        SimLimits(requests=BURST_LIMIT, window=BURST_WINDOW, tokens=openai_prompt_tokens)
    )
    assert provider is not None
    limits: dict[str, Any] = {"rpm": int(BURST_LIMIT * 60 / BURST_WINDOW)} if limited else {}
    s = with_providers(
        settings,
        sim=endpoint(sim, "openai", limit_window_seconds=BURST_WINDOW, max_attempts=8, **limits),
    )
    # the limiter every errand of this endpoint and model shares (held here, so the
    # runner's models get this one), watched: when it lets each call go, and whose
    limiter = resolve_model("sim:gpt-sim", s).inner.limiter  # type: ignore[attr-defined]
    log = watch(limiter)
    # the provider's side: when each request arrived (its own clock reading), and whose
    arrivals: list[tuple[float, str, bool]] = []
    admit, admitting = provider.admit, threading.Lock()

    def watched_admit(body: Any) -> float | None:
        with admitting:
            wait = admit(body)
            when = provider.admitted[-1][0] if wait is None else provider.rejected[-1]
            arrivals.append((when, ERRAND_TEXT.findall(json.dumps(body))[0], wait is None))
            return wait

    provider.admit = watched_admit  # type: ignore[method-assign]
    late: list[float] = []
    running = True

    async def probe() -> None:
        while running:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            late.append(time.monotonic() - t - 0.01)

    runner = harness_for(store, s, tools=FunctionToolset(), policy=AllowAll()).runner()
    ids = [await create_errand(store, s, f"errand {i}", model="sim:gpt-sim") for i in range(n)]
    prober = asyncio.create_task(probe())
    assert len(await runner.claim()) == n
    await runner.wait_idle()
    running = False
    await prober
    views = [await store.view(eid) for eid in ids]
    grants = [(t, ERRAND_TEXT.findall(text)[0]) for kind, t, text in log if kind == "granted"]
    bucket = limiter.buckets.get("rpm")
    return Burst(views, grants, sorted(arrivals), late, 1 / bucket.rate if bucket else 0.0)


async def test_the_limiter_keeps_a_burst_under_the_providers_limit(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(default="done")
    burst = await _burst(store, settings, openai_sim, limited=True, n=36)
    assert all(v.state is ErrandState.done for v in burst.views)
    # every call was granted once and reached the provider once (a 429's retry: again)
    assert len(burst.grants) == len(burst.arrivals) == 36 + burst.rejected
    # errands' own count: in any 2 s, at most 97% of the provider's 12
    assert burst.most_granted_in(BURST_WINDOW) <= int(BURST_LIMIT * 0.97)
    # each 429 is explained by the transit times measured in this run
    times = burst.grant_times()
    margin = min(b - a for a, b in zip(times, times[BURST_LIMIT:], strict=False)) - BURST_WINDOW
    for at, errand, admitted in burst.arrivals:
        if not admitted:
            crowd = [(t, e) for t, e, ok in burst.arrivals if ok and at - BURST_WINDOW < t <= at]
            transit = [burst.transit(t, e) for t, e in [*crowd, (at, errand)]]
            assert max(transit) - min(transit) > margin, (at, margin, transit)
    # no more waiting than the refill needs, with this event loop's measured lateness
    gaps = [b - a for a, b in itertools.pairwise(times)]
    lateness = statistics.quantiles(burst.late, n=10)[-1]  # the 90th percentile
    assert statistics.median(gaps) <= burst.refill + WAIT_COST + lateness, (gaps, lateness)


async def test_negative_control_without_the_limiter_the_burst_gets_429s(
    store: Store, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str
) -> None:
    openai_sim.script(default="done")
    burst = await _burst(store, settings, openai_sim, limited=False, n=36)
    assert burst.most_granted_in(BURST_WINDOW) > BURST_LIMIT  # the count above fails
    assert burst.rejected >= 10  # and the provider refuses what it cannot take


# -- keys never leak ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "openai-responses", "anthropic", "gemini"])
async def test_a_rejected_key_is_redacted_from_the_error_and_the_log(
    store: Store,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    openai_sim: OpenAIChatSim,
    openai_responses_sim: OpenAIResponsesSim,
    anthropic_sim: AnthropicSim,
    gemini_sim: GeminiSim,
) -> None:
    sim: SimServer = {
        "openai": openai_sim,
        "openai-responses": openai_responses_sim,
        "anthropic": anthropic_sim,
        "gemini": gemini_sim,
    }[kind]
    sim.script(default="never")
    wrong = "AIzaWrongKey-" if kind == "gemini" else "sk-wrong-"
    wrong += "0123456789abcdefSECRET"
    monkeypatch.setenv(KEY_ENV, wrong)
    s = with_providers(settings, p=endpoint(sim, kind))
    with pytest.raises(ModelError) as info:
        await resolve_model("p:m", s).complete(ask("hi"))
    # the simulators echo the key they were given; the adapters must not pass it on
    assert any(wrong in r.response.decode() for r in completions(sim))
    assert wrong not in str(info.value) and "SECRET" not in str(info.value)
    view = await run_errand(store, s, "p:m")
    assert view.state is ErrandState.failed
    log = json.dumps([st.event.model_dump() for st in await store.read(view.id)])
    assert wrong not in log and "SECRET" not in log
