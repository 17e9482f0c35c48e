"""Budgets: worst-case reservations in the store, settled by the response's own commit.

The guarantee: however many calls run at once, spend stays within every cap (the
daily one, an errand's, an ancestor's), because each call holds its worst case from
before it starts until the transaction that logs its response. Negative control: with
``no_budget_holds`` (check the spend only, like frameworks that test a limit before
each call) the same fan-out overshoots by about its width.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from seams.controls import NoWaitLoop, SpendOnlyStore
from sim.core import Turn
from sim.openai_server import OpenAIChatSim

from errands.config import BudgetSettings, Price, ProviderSettings, Settings
from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView
from errands.costs import spend
from errands.engine.budgets import input_tokens_bound
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.engine.runner import Runner
from errands.models.protocol import Message, ModelRequest
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.store.sqlite import SQLiteStore
from errands.store.sqlite import spend as spend_tables
from errands.tools.toolset import FunctionToolset

KEY_ENV = "BUDGET_SIM_KEY"


def responded(request_seq: int, cost: float) -> ev.ModelResponded:
    return ev.ModelResponded(
        request_seq=request_seq,
        model="m",
        usage=ev.Usage(input_tokens=10, output_tokens=5, cost_usd=cost),
    )


async def ask(store: Store, eid: str) -> int:
    """Log a model request for *eid*; return its seq (the hold is named after it)."""
    (seq,) = await store.append(eid, [ev.ModelRequested(model="m", tools_hash="t")])
    return seq


def holds(store: Store) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(store.path)
    try:
        return [
            (str(h), str(s), int(n))
            for h, s, n in conn.execute("SELECT hold, scope, nanos FROM budget_holds ORDER BY 1, 2")
        ]
    finally:
        conn.close()


# -- the store's arithmetic ----------------------------------------------------------------


async def test_a_reservation_is_refused_when_it_could_pass_the_cap_and_writes_nothing(
    store: Store, settings: Settings
) -> None:
    a = await create_errand(store, settings, "a")
    b = await create_errand(store, settings, "b")
    ra, rb = await ask(store, a), await ask(store, b)
    assert await store.reserve(a, ra, 0.6, daily_usd=1.0, ttl=60) is None
    refusal = await store.reserve(b, rb, 0.5, daily_usd=1.0, ttl=60)
    assert refusal is not None and refusal.daily
    assert (refusal.spent, refusal.held, refusal.amount) == (0, 600_000_000, 500_000_000)
    assert "the daily budget of $1.0000 is reached" in refusal.message()
    assert "$0.6000 reserved by calls in flight" in refusal.message()
    assert [h[0] for h in holds(store)] == [f"{a}#{ra}"]  # b's refusal wrote nothing
    assert await store.reserve(b, rb, 0.4, daily_usd=1.0, ttl=60) is None  # exactly to the cap


async def test_the_response_settles_its_hold_and_counts_its_cost_once(
    store: Store, settings: Settings
) -> None:
    a = await create_errand(store, settings, "a")
    ra = await ask(store, a)
    assert await store.reserve(a, ra, 0.6, daily_usd=1.0, ttl=60) is None
    # asked again for the same request (a resumed run): replaced, not added
    assert await store.reserve(a, ra, 0.7, daily_usd=1.0, ttl=60) is None
    assert holds(store) == [(f"{a}#{ra}", "day", 700_000_000)]
    await store.append(a, [responded(ra, 0.25)])
    assert holds(store) == []
    status = await store.budget(1.0)
    assert status.spent_usd == 0.25 and status.reserved_usd == 0
    assert status.left_usd == 0.75
    assert (await store.integrity_check()) == []


async def test_an_unsettled_hold_expires(store: Store, settings: Settings) -> None:
    now = [time.time()]
    store.clock = lambda: now[0]
    a = await create_errand(store, settings, "a")
    b = await create_errand(store, settings, "b")
    ra, rb = await ask(store, a), await ask(store, b)
    assert await store.reserve(a, ra, 0.9, daily_usd=1.0, ttl=60) is None  # then a crash
    assert await store.reserve(b, rb, 0.9, daily_usd=1.0, ttl=60) is not None
    now[0] += 61
    assert await store.reserve(b, rb, 0.9, daily_usd=1.0, ttl=60) is None
    assert [h[0] for h in holds(store)] == [f"{b}#{rb}"]  # the expired one is cleared


async def test_a_hold_lasts_while_its_process_renews_the_errands_lease(
    store: Store, settings: Settings
) -> None:
    now = [time.time()]
    store.clock = lambda: now[0]
    a = await create_errand(store, settings, "a")
    b = await create_errand(store, settings, "b")
    assert await store.acquire(a, "node-1", 30)
    ra, rb = await ask(store, a), await ask(store, b)
    assert await store.reserve(a, ra, 0.9, daily_usd=1.0, ttl=60) is None
    for _ in range(5):  # a call stuck in a rate-limit queue for 4 minutes
        now[0] += 50
        await store.renew("node-1", 30)
    assert await store.reserve(b, rb, 0.9, daily_usd=1.0, ttl=60) is not None  # still held
    now[0] += 31  # node-1 died: its lease and the hold run out together
    assert await store.reserve(b, rb, 0.9, daily_usd=1.0, ttl=60) is None


async def test_a_state_change_releases_the_errands_holds(store: Store, settings: Settings) -> None:
    a = await create_errand(store, settings, "a")
    ra = await ask(store, a)
    assert await store.reserve(a, ra, 0.9, daily_usd=1.0, ttl=60) is None
    await store.append(a, [ev.StateChanged(state="failed", reason="the model failed")])
    assert holds(store) == []


async def test_a_childs_calls_spend_its_ancestors_budgets(store: Store, settings: Settings) -> None:
    root = await create_errand(store, settings, "root", limits=ev.Limits(max_cost_usd=1.0))
    child = await create_errand(store, settings, "child", parent=root)
    grandchild = await create_errand(
        store, settings, "grandchild", parent=child, limits=ev.Limits(max_cost_usd=0.5)
    )
    rc = await ask(store, child)
    assert await store.reserve(child, rc, 0.7, daily_usd=None, ttl=60) is None
    rg = await ask(store, grandchild)
    refusal = await store.reserve(grandchild, rg, 0.4, daily_usd=None, ttl=60)
    assert refusal is not None and not refusal.daily
    assert refusal.cap.scope == spend.tree_scope(root) and "an ancestor" in refusal.message()
    await store.append(child, [responded(rc, 0.2)])  # settles at less than it held
    assert await store.reserve(grandchild, rg, 0.4, daily_usd=None, ttl=60) is None
    refusal = await store.reserve(grandchild, rg, 0.6, daily_usd=None, ttl=60)
    assert refusal is not None and refusal.cap.scope == spend.tree_scope(grandchild)
    await store.append(grandchild, [responded(rg, 0.3)])
    totals = spend_totals(store)
    assert totals[spend.tree_scope(root)] == 500_000_000  # 0.2 + 0.3: the whole tree
    assert totals[spend.tree_scope(child)] == 500_000_000
    assert totals[spend.tree_scope(grandchild)] == 300_000_000
    assert (await store.integrity_check()) == []


def spend_totals(store: Store) -> dict[str, int]:
    conn = sqlite3.connect(store.path)
    try:
        return spend_tables.totals(conn)
    finally:
        conn.close()


async def test_integrity_check_finds_a_tampered_spend_and_rebuild_repairs_it(
    store: Store, settings: Settings
) -> None:
    a = await create_errand(store, settings, "a")
    await store.append(a, [responded(await ask(store, a), 0.125)])
    conn = sqlite3.connect(store.path)
    with conn:
        conn.execute("UPDATE spend SET nanos = 1 WHERE scope LIKE 'day:%'")
    conn.close()
    problems = await store.integrity_check()
    assert len(problems) == 1 and problems[0].startswith("spend day:")
    (await store.rebuild_projections())
    assert (await store.integrity_check()) == []
    assert (await store.budget(None)).spent_usd == 0.125


async def test_a_store_from_before_budgets_is_backfilled_from_its_log(
    settings: Settings,
) -> None:
    store = SQLiteStore(settings.db_path)
    a = await create_errand(store, settings, "a")
    await store.append(a, [responded(await ask(store, a), 0.5)])
    await store.close()
    conn = sqlite3.connect(settings.db_path)
    with conn:  # back to schema 2, as an older errands left it
        conn.execute("DROP TABLE spend")
        conn.execute("DROP TABLE budget_holds")
        conn.execute("DROP TABLE migrations")  # (an older errands kept only the version)
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    store = SQLiteStore(settings.db_path)
    try:
        assert (await store.budget(None)).spent_usd == 0.5
        assert spend_totals(store)[spend.tree_scope(a)] == 500_000_000
        assert (await store.integrity_check()) == []
    finally:
        await store.close()


# -- a property: any interleaving keeps spend within the cap -------------------------------

CAP = 1.0


class BudgetMachine(RuleBasedStateMachine):
    """Calls reserve, settle (at most what they held), crash (their hold expires) and
    stop, in any order, on a real store file under a fake clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 1_000_000.0
        self.inflight: dict[str, tuple[int, float]] = {}  # errand -> (request seq, held)
        self.idle: list[str] = []

    @initialize(tmp=st.just(None))
    def open(self, tmp: None) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.settings = Settings(home=Path(self.dir))
        self.store = SQLiteStore(Path(self.dir) / "e.sqlite", clock=lambda: self.now)
        for i in range(6):
            self.idle.append(self.run(create_errand(self.store, self.settings, f"e{i}")))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @rule(data=st.data(), amount=st.floats(min_value=0.0, max_value=0.7))
    def reserve(self, data: st.DataObject, amount: float) -> None:
        if not self.idle:
            return
        eid = data.draw(st.sampled_from(self.idle))
        seq = self.run(ask(self.store, eid))
        before = self.run(self.store.budget(CAP))
        refusal = self.run(self.store.reserve(eid, seq, amount, daily_usd=CAP, ttl=100))
        if refusal is None:
            self.idle.remove(eid)
            self.inflight[eid] = (seq, amount)
            assert before.spent_usd + before.reserved_usd + amount <= CAP + 1e-9
        else:
            assert before.spent_usd + before.reserved_usd + amount > CAP - 1e-9

    @rule(data=st.data(), share=st.floats(min_value=0.0, max_value=1.0))
    def settle(self, data: st.DataObject, share: float) -> None:
        if not self.inflight:
            return
        eid = data.draw(st.sampled_from(sorted(self.inflight)))
        seq, held = self.inflight.pop(eid)
        self.run(self.store.append(eid, [responded(seq, held * share)]))
        self.idle.append(eid)

    @rule(data=st.data())
    def crash_and_expire(self, data: st.DataObject) -> None:
        if not self.inflight:
            return
        eid = data.draw(st.sampled_from(sorted(self.inflight)))
        self.inflight.pop(eid)  # its process died: nobody settles it
        self.now += 101  # ... until it expires (other holds too: they are re-asked)
        for other in list(self.inflight):
            seq, held = self.inflight[other]
            assert self.run(self.store.reserve(other, seq, held, daily_usd=CAP, ttl=100)) is None
        self.idle.append(eid)

    @invariant()
    def within_the_cap(self) -> None:
        if not hasattr(self, "store"):
            return
        status = self.run(self.store.budget(CAP))
        assert status.spent_usd <= CAP + 1e-9
        assert status.spent_usd + status.reserved_usd <= CAP + 1e-9
        assert status.calls_in_flight <= len(self.inflight)

    def teardown(self) -> None:
        if hasattr(self, "store"):
            assert self.run(self.store.integrity_check()) == []
            self.run(self.store.close())
        self.loop.close()


TestBudgetMachine = BudgetMachine.TestCase
TestBudgetMachine.settings = hsettings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the worst case ------------------------------------------------------------------------


def test_the_input_bound_is_never_below_a_tokenizers_count() -> None:
    text = "Résumé of the naïve café — 東京, 😀 emoji, code: def f(x): return x**2\n" * 40
    request = ModelRequest(system="be brief", messages=(Message("user", text),), tools=())
    # a token is at least one byte: the bound is at least the byte length
    assert input_tokens_bound(request, None, 0) >= len(text.encode())
    later = ModelRequest(
        system="be brief",
        messages=(Message("user", text), Message("assistant", "ok"), Message("user", "more")),
        tools=(),
    )
    last = ev.Usage(input_tokens=900, output_tokens=7)
    bound = input_tokens_bound(later, last, 2)
    assert bound >= 900 + 7 + len(b"more")
    assert bound < input_tokens_bound(later, None, 0)  # the known count is tighter


def test_a_reasoning_level_adds_its_thinking_to_the_worst_case(settings: Settings) -> None:
    from errands.core.progress import Progress
    from errands.engine.budgets import REASONING_TOKENS, worst_case_usd
    from errands.models.scripted import ScriptedModel, load_script

    s = settings.model_copy(update={"prices": {"scripted:demo": Price(input=1.0, output=10.0)}})
    model = ScriptedModel(load_script("demo"), name="scripted:demo")
    plain = ModelRequest(system="s", messages=(Message("user", "hi"),), tools=(), max_tokens=100)
    thinking = ModelRequest(
        system="s", messages=(Message("user", "hi"),), tools=(), max_tokens=100, reasoning="high"
    )
    p = Progress.empty("e")
    extra = worst_case_usd(model, thinking, s, p) - worst_case_usd(model, plain, s, p)
    assert extra == pytest.approx(REASONING_TOKENS["high"] * 10.0 / 1e6)


# -- 200 concurrent calls against a cap, through real errands ------------------------------


@pytest.fixture
def sim(openai_sim: OpenAIChatSim) -> OpenAIChatSim:
    return openai_sim  # (sim.fixtures starts and stops it)


def priced(settings: Settings, sim: OpenAIChatSim, daily: float | None) -> Settings:
    return settings.model_copy(
        update={
            "providers": {
                "sim": ProviderSettings(kind="openai", base_url=sim.base_url, api_key_env=KEY_ENV)
            },
            # the seed's Gemini 3.5 Flash prices, per million tokens
            "prices": {"sim:gpt-sim": Price(input=1.5, output=9.0, cached_input=0.15)},
            "max_tokens": 1_000,
            "budget": BudgetSettings(daily_usd=daily),
        }
    )


async def fan_out(
    store: Store,
    settings: Settings,
    sim: OpenAIChatSim,
    n: int,
    loop_class: type[Loop] | None = None,
) -> tuple[list[ErrandView], float, float]:
    """*n* errands, one model call each, all in flight at once; (views, spend, the
    largest single call's cost)."""
    sim.latency = 0.5  # every call is still running when the last one asks
    sim.script(default=Turn(text="done " * 300))
    runner = Runner(store, settings, FunctionToolset(), AllowAll(), loop_class=loop_class)
    ids = [
        await create_errand(store, settings, f"errand {i}", model="sim:gpt-sim") for i in range(n)
    ]
    assert len(await runner.claim()) == n
    await runner.wait_idle()
    views = [await store.view(eid) for eid in ids]
    costs = [v.usage.cost_usd for v in views if v.usage.cost_usd]
    return views, sum(costs), max(costs)


async def test_200_concurrent_calls_against_a_cap_end_within_it(
    store: Store, settings: Settings, sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    cap = 0.10  # a worst case is ~$0.0095 (~300 input tokens + 1,000 output): ~10 fit
    views, spent, one_call = await fan_out(store, priced(settings, sim, cap), sim, 200)
    done = [v for v in views if v.state is ErrandState.done]
    refused = [v for v in views if v.state is ErrandState.needs_attention]
    assert len(done) + len(refused) == 200
    assert spent <= cap + one_call, (spent, cap, one_call)
    assert spent <= cap  # the worst case really is one here: not even one call over
    # and the cap is used: calls wait while others hold it, and stop only when their
    # worst case (~$0.0095) no longer fits beside what was spent
    assert spent >= cap - 0.01, spent
    assert len(done) >= 25
    assert all("the daily budget of $0.1000 is reached" in v.reason for v in refused)
    assert all("errands tell" in v.reason for v in refused)
    assert len(sim.requests) == len(done)  # a refused call never reached the provider
    assert (await store.budget(cap)).reserved_usd == 0  # every hold settled or released
    assert (await store.integrity_check()) == []


async def test_negative_control_refusing_instead_of_waiting_leaves_the_cap_unused(
    store: Store, settings: Settings, sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    cap = 0.10
    views, spent, _ = await fan_out(store, priced(settings, sim, cap), sim, 200, NoWaitLoop)
    assert spent < cap - 0.01  # what the check above rules out: a tenth of the fan-out ran
    assert sum(v.state is ErrandState.done for v in views) <= 12


async def test_negative_control_checking_spend_alone_overshoots_by_the_fan_out(
    settings: Settings, sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    cap = 0.10
    store = SpendOnlyStore(settings.db_path)  # calls in flight hold nothing
    try:
        views, spent, one_call = await fan_out(store, priced(settings, sim, cap), sim, 80)
    finally:
        await store.close()
    assert spent > cap + one_call  # what the guarantee above rules out
    assert all(v.state is ErrandState.done for v in views)


# -- a crash in the middle of a call -------------------------------------------------------

WORKER = """
import asyncio, os, sys
from errands.config import load_settings
from errands.engine.runner import Runner
from errands.policy.hook import AllowAll
from errands.store.sqlite import SQLiteStore
from errands.tools.toolset import FunctionToolset

async def main():
    settings = load_settings()
    store = SQLiteStore(settings.db_path)
    runner = Runner(store, settings, FunctionToolset(), AllowAll())
    if len(sys.argv) > 1:  # resume this one (taking it over from a dead worker)
        await runner.run_errand(sys.argv[1])
    else:
        await runner.claim(limit=int(os.environ.get("CLAIM", "10000")))
        await runner.wait_idle()
    await store.close()

asyncio.run(main())
"""


def write_config(home: Path, sim: OpenAIChatSim, daily: float) -> None:
    (home / "errands.toml").write_text(
        f"max_tokens = 1000\n[budget]\ndaily_usd = {daily}\nhold_seconds = 600\n"
        f'[providers.sim]\nkind = "openai"\nbase_url = "{sim.base_url}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
        '[prices."sim:gpt-sim"]\ninput = 1.5\noutput = 9.0\n'
    )


async def test_a_crash_mid_call_leaves_a_hold_that_the_resumed_run_takes_over(
    home: Path, sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    from errands.config import load_settings

    monkeypatch.setenv(KEY_ENV, sim.api_key)
    write_config(home, sim, daily=0.015)
    settings = load_settings(home)
    sim.latency = 30.0  # the worker is killed while its call hangs here
    sim.script(default="done")
    store = SQLiteStore(settings.db_path)
    eid = await create_errand(store, settings, "x", model="sim:gpt-sim")
    other = await create_errand(store, settings, "y", model="sim:gpt-sim")
    env = {**CLI(home).env(), KEY_ENV: sim.api_key}
    worker = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not holds(store):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the held call reaches the provider, which hangs; the
        # other errand's call would fit beside what was spent: it waits for the hold
    finally:
        worker.kill()
        worker.wait()
    try:
        left = holds(store)
        assert len(left) == 1 and left[0][1] == "day"  # the dead call still holds budget
        held_by = left[0][0]
        waiting = next(e for e in (eid, other) if not held_by.startswith(e))
        assert not [s for s in await store.read(waiting) if s.event.type == "model_responded"]
        sim.latency = 0.0
        # the resumed run asks for the same request again: the same hold, replaced
        resumed = held_by.partition("#")[0]
        completed = subprocess.run([sys.executable, "-c", WORKER, resumed], env=env, timeout=60)
        assert completed.returncode == 0
        view = await store.view(resumed)
        assert view.state is ErrandState.done, view.reason
        assert holds(store) == []
        assert (await store.budget(0.015)).spent_usd == pytest.approx(view.usage.cost_usd)
        assert (await store.integrity_check()) == []
    finally:
        await store.close()


async def test_two_processes_with_100_calls_each_stay_within_one_cap(
    home: Path, sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reservation is a transaction in the shared store, not a lock in a process."""
    from errands.config import load_settings

    monkeypatch.setenv(KEY_ENV, sim.api_key)
    cap = 0.10
    write_config(home, sim, daily=cap)
    settings = load_settings(home)
    sim.latency = 1.0
    sim.script(default=Turn(text="done " * 300))
    store = SQLiteStore(settings.db_path)
    try:
        ids = [
            await create_errand(store, settings, f"errand {i}", model="sim:gpt-sim")
            for i in range(200)
        ]
        env = {**CLI(home).env(), KEY_ENV: sim.api_key, "CLAIM": "100"}
        workers = [subprocess.Popen([sys.executable, "-c", WORKER], env=env) for _ in range(2)]
        for w in workers:
            assert w.wait(timeout=120) == 0
        views = [await store.view(eid) for eid in ids]
        costs = [v.usage.cost_usd for v in views if v.usage.cost_usd]
        assert all(v.state in (ErrandState.done, ErrandState.needs_attention) for v in views)
        assert len(costs) >= 8 and sum(costs) <= cap
        assert (await store.integrity_check()) == []
    finally:
        await store.close()
