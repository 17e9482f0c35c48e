"""A fan-out shares the provider's rate limit (issue 22, item 5): a parent delegates 24
children whose model is one endpoint of the OpenAI wire simulator, which admits 12
requests in any 2 s and answers 429 past that. The children's calls go through the one
limiter of that endpoint (as every errand's do), so errands itself never lets more than
97% of the limit go in any window and the provider refuses next to nothing; the
negative control (no limits configured: the default) sends the fan-out as a storm and
gets 429s."""

from __future__ import annotations

import bisect
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers.fanout import ended, serving, until, with_subagents
from helpers.kit import harness_for
from sim.core import SimLimits, Turn, approx_tokens, call
from sim.openai_server import OpenAIChatSim

from errands.config import ProviderSettings, Settings
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.models.protocol import ModelRequest
from errands.models.spec import resolve_model
from errands.models.wrappers.ratelimit import RateLimiter, Reservation
from errands.policy.hook import AllowAll
from errands.store.sqlite import SQLiteStore

KEY_ENV = "SUBAGENTS_SIM_KEY"
WINDOW, LIMIT = 2.0, 12  # the provider admits 12 requests in any 2 s
N = 24


@pytest.fixture
def sim_key(openai_sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, openai_sim.api_key)
    return openai_sim.api_key


def _tokens(body: Any) -> int:
    return approx_tokens(str(body.get("messages")))


def granted(limiter: RateLimiter) -> list[float]:
    """When the shared limiter lets each call go (a watch on it)."""
    times: list[float] = []
    acquire = limiter.acquire

    async def watched(request: ModelRequest) -> Reservation:
        reservation = await acquire(request)
        times.append(time.monotonic())
        return reservation

    limiter.acquire = watched  # type: ignore[method-assign]
    return times


def most_in(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_right(times, t + window - 1e-9) - i for i, t in enumerate(times))


@pytest.mark.parametrize("limited", [True, False], ids=["shared-limiter", "control-no-limits"])
async def test_a_fan_out_uses_the_limit_without_a_storm_of_429s(
    db: SQLiteStore, settings: Settings, openai_sim: OpenAIChatSim, sim_key: str, limited: bool
) -> None:
    tasks = [{"task": f"child {k}: answer done"} for k in range(N)]
    openai_sim.script(
        Turn(tool_calls=(call("delegate", {"tasks": tasks}),), when="fan out"), default="done"
    )
    provider = openai_sim.enforce_limits(SimLimits(requests=LIMIT, window=WINDOW, tokens=_tokens))
    assert provider is not None
    limits: dict[str, Any] = {"rpm": int(LIMIT * 60 / WINDOW)} if limited else {}
    endpoint = ProviderSettings(
        kind="openai", base_url=openai_sim.base_url, api_key_env=KEY_ENV,
        limit_window_seconds=WINDOW, max_attempts=10, outage_wait_seconds=0, **limits,
    )  # fmt: skip
    s = with_subagents(settings, max_parallel=N).model_copy(update={"providers": {"sim": endpoint}})
    # the limiter every errand of this endpoint shares (held here: the runner's models get it)
    model = resolve_model("sim:gpt-sim", s)
    limiter = getattr(model.inner, "limiter", None)  # type: ignore[attr-defined]
    grants = granted(limiter) if limiter is not None else []
    h = harness_for(db, s, policy=AllowAll())
    eid = await create_errand(db, s, "fan out", model="sim:gpt-sim")
    async with serving(h.runner()):
        view = await until(db, eid, ended, timeout=90)
    assert view.state is ErrandState.done, view.reason
    children = await db.children(eid)
    assert len(children) == N and all(c.state is ErrandState.done for c in children)
    received = [r for r in openai_sim.requests if r.method == "POST"]
    rejected = sum(1 for r in received if r.status == 429)
    print(f"limited={limited}: {len(received)} requests, {rejected} answered 429")
    if not limited:  # a storm: the provider refuses a good part of it
        assert rejected >= 5, rejected
        return
    assert len(grants) == len(received) == N + 2 + rejected  # the parent's two, each child's one
    assert most_in(grants, WINDOW) <= int(LIMIT * 0.97)  # errands' own count, every window
    assert rejected <= 1, rejected  # (a 429 can only come from transit-time jitter)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "s.sqlite")
    yield store
    await store.close()
