"""Prompt-cache discipline, measured on every provider simulator.

A fixed agent workload -- a ~10K-token stable prefix (an ~8K-token system prompt and
~2K tokens of tool schemas), then 50 turns that each append a tool call and a ~2K-token
tool result -- is driven through the real client adapters, with each request built the
way :mod:`errands.engine.loop` builds it (``ModelRequest(system, messages, tools, max_tokens,
errand_id)`` from the transcript so far). Each simulator implements its provider's
documented caching rule (OpenAI: automatic prefix caching; Anthropic: explicit
breakpoints, which the adapter places; Gemini: implicit caching) and reports cached
tokens the way the real API does.

Two properties are checked per provider:

* **the cache works**: at least 90% of the input tokens of turns 2-50 are served from
  the cache (:func:`errands.costs.report.cache_hit_ratio` of their summed usage), and
  turn by turn, every turn is served the previous turn's whole prompt from the cache
  (to one cache block): one miss in 50 turns would still leave the sum above 90%;
* **the prefix is byte-stable**: each request's prompt items (in the order the provider
  renders them: tools / system / transcript, each item serialised exactly as received,
  key order included) start with exactly the items of the previous request -- compared
  by SHA-256. For Anthropic the ``cache_control`` markers are left out: they move every
  turn by design and are not part of the cached content.

The **negative control** runs the same workload with a timestamp at the start of the
system prompt: it must score under 10%, and the hash check must catch it -- so both
checks can fail.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers.kit import harness_for
from sim.anthropic_server import AnthropicSim
from sim.core import SimServer, Turn, call
from sim.gemini_server import GeminiSim
from sim.openai_responses_server import FastPrefixCache, OpenAIResponsesSim
from sim.openai_server import OpenAIChatSim

from errands.config import Settings
from errands.core.events import Usage
from errands.costs.report import cache_hit_ratio
from errands.models.protocol import Message, Model, ModelRequest, ToolSchema
from errands.models.providers.anthropic import AnthropicModel
from errands.models.providers.gemini import GeminiModel
from errands.models.providers.openai_chat import OpenAIChatModel
from errands.models.providers.openai_responses import OpenAIResponsesModel
from errands.store import Store

TURNS = 50
SYSTEM = "".join(
    f"Rule {i}: when handling an errand, keep the person informed about step {i}, "
    f"never spend more than the budget allows, and write down what you did. "
    for i in range(220)
)  # ~33K characters: ~8.3K tokens
TOOLS = tuple(
    ToolSchema(
        name=f"tool_{i}",
        description=f"Tool number {i}: looks things up in archive {i} and returns the page. " * 4,
        parameters={
            "type": "object",
            "properties": {
                "page": {"type": "integer", "description": "the page number to read"},
                "section": {"type": "string", "description": "the section of the archive"},
            },
            "required": ["page"],
        },
    )
    for i in range(10)
)  # ~8K characters: ~2K tokens


def tool_result(turn: int) -> str:
    """~8K characters (~2K tokens) of deterministic tool output."""
    return "".join(
        f"[page {turn} line {j}] the archive says item {turn * 100 + j} is fine. "
        for j in range(130)
    )


def test_cache_hit_ratio() -> None:
    assert cache_hit_ratio(Usage()) == 0.0
    assert cache_hit_ratio(Usage(input_tokens=1000, cached_input_tokens=900)) == 0.9
    total = Usage(input_tokens=100, cached_input_tokens=0) + Usage(
        input_tokens=300, cached_input_tokens=300
    )
    assert cache_hit_ratio(total) == 0.75


# -- the providers ---------------------------------------------------------------------


def _dump(item: Any) -> bytes:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()


def _chat_items(body: dict[str, Any]) -> list[bytes]:
    return [_dump(t) for t in body.get("tools") or []] + [_dump(m) for m in body["messages"]]


def _responses_items(body: dict[str, Any]) -> list[bytes]:
    return (
        [_dump(body.get("instructions"))]
        + [_dump(t) for t in body.get("tools") or []]
        + [_dump(i) for i in body["input"]]
    )


def _strip_marks(block: Any) -> Any:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _anthropic_items(body: dict[str, Any]) -> list[bytes]:
    items = [_dump(_strip_marks(t)) for t in body.get("tools") or []]
    items += [_dump(_strip_marks(b)) for b in body.get("system") or []]
    for i, m in enumerate(body["messages"]):
        # a message's blocks may grow (tool results gathered in one user message): its
        # blocks are the items, tagged with the message's place and role
        items += [_dump([i, m["role"], _strip_marks(b)]) for b in m["content"]]
    return items


def _gemini_items(body: dict[str, Any]) -> list[bytes]:
    return (
        [_dump(body.get("systemInstruction"))]
        + [_dump(t) for t in body.get("tools") or []]
        + [_dump(c) for c in body["contents"]]
    )


@dataclass
class Provider:
    name: str
    make_sim: Callable[[], SimServer]
    make_model: Callable[[SimServer], Model]
    items: Callable[[dict[str, Any]], list[bytes]]


def _chat_sim() -> SimServer:
    sim = OpenAIChatSim()
    sim.cache = FastPrefixCache()  # same rule as PrefixCache, fast enough for 50 turns
    return sim


PROVIDERS = [
    Provider(
        "openai-chat",
        _chat_sim,
        lambda s: OpenAIChatModel("gpt-test", base_url=s.base_url, api_key=s.api_key),
        _chat_items,
    ),
    Provider(
        "openai-responses",
        OpenAIResponsesSim,
        lambda s: OpenAIResponsesModel("gpt-test", base_url=s.base_url, api_key=s.api_key),
        _responses_items,
    ),
    Provider(
        "anthropic",
        AnthropicSim,
        lambda s: AnthropicModel("claude-test", base_url=s.base_url, api_key=s.api_key),
        _anthropic_items,
    ),
    Provider(
        "gemini",
        GeminiSim,
        lambda s: GeminiModel("gemini-2.5-flash", base_url=s.base_url, api_key=s.api_key),
        _gemini_items,
    ),
]


# OpenAI serves a cached prefix in 128-token blocks; Anthropic (at its breakpoints) and
# Gemini report the whole prefix they cached.
CACHE_BLOCK = 128


@dataclass
class Run:
    usages: list[Usage]
    bodies: list[dict[str, Any]]

    @property
    def ratio(self) -> float:
        later = sum(self.usages[1:], Usage())
        return cache_hit_ratio(later)

    def missed_turns(self) -> list[int]:
        """Turns not served the previous turn's whole prompt from the cache (to a block)."""
        u = self.usages
        return [
            k + 1
            for k in range(1, len(u))
            if u[k].cached_input_tokens < u[k - 1].input_tokens - CACHE_BLOCK
        ]

    def unstable_turns(self, items: Callable[[dict[str, Any]], list[bytes]]) -> list[int]:
        """Turns whose prompt does not start with the previous turn's whole prompt."""
        bad: list[int] = []
        for k in range(1, len(self.bodies)):
            before, now = items(self.bodies[k - 1]), items(self.bodies[k])
            want = hashlib.sha256(b"\x00".join(before)).hexdigest()
            got = hashlib.sha256(b"\x00".join(now[: len(before)])).hexdigest()
            if want != got:
                bad.append(k + 1)
        return bad


async def run_workload(provider: Provider, *, turns: int, volatile_system: bool) -> Run:
    sim = provider.make_sim()
    sim.start()
    try:
        for k in range(1, turns):
            sim.script(Turn(tool_calls=(call(f"tool_{k % 10}", {"page": k}),)))
        sim.script("All the pages are fine.")
        model = provider.make_model(sim)
        messages: list[Message] = [Message(role="user", text="Read the archive, page by page.")]
        usages: list[Usage] = []
        for k in range(1, turns + 1):
            system = f"Current time: {time.time_ns()}\n{SYSTEM}" if volatile_system else SYSTEM
            request = ModelRequest(
                system=system,
                messages=tuple(messages),
                tools=TOOLS,
                max_tokens=4096,
                errand_id="errand-cache-test",
            )
            reply = await model.complete(request)
            usages.append(reply.usage)
            messages.append(
                Message(role="assistant", text=reply.text, tool_calls=tuple(reply.tool_calls))
            )
            for c in reply.tool_calls:
                messages.append(
                    Message(
                        role="tool", text=tool_result(k), tool_call_id=c.call_id, tool_name=c.name
                    )
                )
        assert not reply.tool_calls and reply.text == "All the pages are fine."
        bodies = [r.body for r in sim.requests]
        assert all(r.status == 200 for r in sim.requests)
        return Run(usages, bodies)
    finally:
        sim.stop()


@pytest.fixture(params=PROVIDERS, ids=[p.name for p in PROVIDERS])
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    yield request.param


async def check_cached(provider: Provider, turns: int, minimum: float) -> float:
    run = await run_workload(provider, turns=turns, volatile_system=False)
    first = run.usages[0].input_tokens
    assert 9_000 < first < 12_000, "the workload's stable prefix is ~10K tokens"
    growth = (run.usages[-1].input_tokens - first) / (turns - 1)
    assert 1_700 < growth < 2_400, "each turn appends ~2K tokens"
    assert len(run.usages) == len(run.bodies) == turns
    assert all(u.cached_input_tokens <= u.input_tokens for u in run.usages)
    assert run.unstable_turns(provider.items) == [], "the prompt prefix changed between turns"
    print(f"\n{provider.name}: cache-hit ratio over turns 2-{turns}: {run.ratio:.1%}")
    assert run.ratio >= minimum
    assert run.missed_turns() == [], "these turns missed the cache"
    return run.ratio


async def check_volatile(provider: Provider, turns: int) -> float:
    run = await run_workload(provider, turns=turns, volatile_system=True)
    print(f"\n{provider.name}, timestamp in the system prompt, {turns} turns: {run.ratio:.1%}")
    assert len(run.usages) == len(run.bodies) == turns
    assert run.ratio < 0.10
    assert len(run.unstable_turns(provider.items)) == turns - 1, "the hash check catches it"
    assert run.missed_turns() == list(range(2, turns + 1)), "the turn check catches it"
    return run.ratio


async def test_stable_prefix_is_served_from_cache_quick(provider: Provider) -> None:
    """The same workload, 12 turns (fewer turns: more of the input is the new turn)."""
    await check_cached(provider, 12, 0.85)


async def test_negative_control_quick(provider: Provider) -> None:
    await check_volatile(provider, 12)


@pytest.mark.slow
async def test_stable_prefix_is_served_from_cache(provider: Provider) -> None:
    """The issue's bar: >= 90% of the input tokens of turns 2-50 from the cache."""
    await check_cached(provider, TURNS, 0.90)


@pytest.mark.slow
async def test_negative_control_timestamp_in_system_prompt(provider: Provider) -> None:
    await check_volatile(provider, TURNS)


# -- a real errand through the Runner ------------------------------------------------------


async def test_real_errand_through_the_runner_is_served_from_cache(
    provider: Provider, store: Store, settings: Settings
) -> None:
    """The loop itself builds the requests: a real errand, a real tool, the real client
    against the simulator. Its summed usage must come mostly from the cache."""
    from errands.core import events as ev
    from errands.core.states import ErrandState
    from errands.engine.operations import create_errand
    from errands.policy.hook import AllowAll
    from errands.tools.toolset import FunctionToolset

    turns = 12
    registry = FunctionToolset()

    @registry.tool(effect=ev.EffectClass.read, idempotent=True)
    def read_page(page: int) -> str:
        """Read one page of the archive.

        Args:
            page: The page number.
        """
        return tool_result(page)

    settings = settings.model_copy(update={"system_prompt": SYSTEM})
    sim = provider.make_sim()
    sim.start()
    try:
        for k in range(1, turns):
            sim.script(Turn(tool_calls=(call("read_page", {"page": k}),)))
        sim.script("All pages read.")
        model = provider.make_model(sim)
        runner = harness_for(
            store, settings, tools=registry, model=model, policy=AllowAll()
        ).runner()
        eid = await create_errand(store, settings, "Read the archive.", model="scripted:demo")
        view = await runner.run_errand(eid)
        assert view.state is ErrandState.done, view
        usages = [
            s.event.usage for s in await store.read(eid) if isinstance(s.event, ev.ModelResponded)
        ]
        bodies = [r.body for r in sim.requests]
    finally:
        sim.stop()
    assert len(usages) == len(bodies) == turns
    run = Run(usages, bodies)
    assert run.unstable_turns(provider.items) == []
    print(f"\n{provider.name}, a real errand, {turns} turns: {run.ratio:.1%}")
    assert run.ratio >= 0.85
    assert run.missed_turns() == [], "these turns missed the cache"
