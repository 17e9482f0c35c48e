"""Budgets: worst-case reservations in the store, settled by the response's own commit.

The guarantee: however many calls run at once, spend stays within every cap (the
daily one, an errand's, an ancestor's), because each call holds its worst case from
before it starts until the transaction that logs its response. Negative control: with
``no_budget_holds`` (check the spend only, like frameworks that test a limit before
each call) the same fan-out overshoots by about its width.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from backends import raw_connection
from conftest import CLI
from helpers.kit import harness_for
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from seams.controls import NoWaitLoop, SpendOnlyStore
from sim.core import Turn
from sim.openai_server import OpenAIChatSim

from errands.clock import FakeClock, ReadingClock
from errands.config import BudgetSettings, Price, ProviderSettings, Settings
from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.states import ErrandState, ErrandView
from errands.costs import spend
from errands.engine.budgets import Blocked, input_tokens_bound, worst_case_usd
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.models.protocol import Message, Model, ModelRequest
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.store.sqlite import SQLiteStore
from errands.store.sqlite import spend as spend_tables
from errands.store.sqlite.migrations import MIGRATIONS
from errands.tools.toolset import FunctionToolset

KEY_ENV = "BUDGET_SIM_KEY"


def responded(request_seq: int, cost: float, at: float | None = None) -> ev.ModelResponded:
    """The response to request *request_seq*; *at* (default now) dates its spend."""
    return ev.ModelResponded(
        request_seq=request_seq,
        model="m",
        usage=ev.Usage(input_tokens=10, output_tokens=5, cost_usd=cost),
        **({} if at is None else {"at": at}),
    )


async def ask(store: Store, eid: str) -> int:
    """Log a model request for *eid*; return its seq (the hold is named after it)."""
    (seq,) = await store.append(eid, [ev.ModelRequested(model="m", tools_hash="t")])
    return seq


def holds(store: Store) -> list[tuple[str, str, int]]:
    conn = raw_connection(store)
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


def fake_clock(store: Store) -> FakeClock:
    """A fake clock for *store* (both its clocks: the wall and the lease clock)."""
    clock = FakeClock(wall=time.time())
    store.time, store.clock = clock, clock.wall  # type: ignore[attr-defined]
    return clock


async def test_an_unsettled_hold_expires(store: Store, settings: Settings) -> None:
    clock = fake_clock(store)
    a = await create_errand(store, settings, "a")
    b = await create_errand(store, settings, "b")
    ra, rb = await ask(store, a), await ask(store, b)
    assert await store.reserve(a, ra, 0.9, daily_usd=1.0, ttl=60) is None  # then a crash
    assert await store.reserve(b, rb, 0.9, daily_usd=1.0, ttl=60) is not None
    clock.advance(61)
    assert await store.reserve(b, rb, 0.9, daily_usd=1.0, ttl=60) is None
    assert [h[0] for h in holds(store)] == [f"{b}#{rb}"]  # the expired one is cleared


async def test_a_hold_lasts_while_its_process_renews_the_errands_lease(
    store: Store, settings: Settings
) -> None:
    clock = fake_clock(store)
    a = await create_errand(store, settings, "a")
    b = await create_errand(store, settings, "b")
    assert await store.acquire(a, "node-1", 30)
    ra, rb = await ask(store, a), await ask(store, b)
    assert await store.reserve(a, ra, 0.9, daily_usd=1.0, ttl=60) is None
    for _ in range(5):  # a call stuck in a rate-limit queue for 4 minutes
        clock.advance(50)
        await store.renew("node-1", 30)
    assert await store.reserve(b, rb, 0.9, daily_usd=1.0, ttl=60) is not None  # still held
    clock.advance(31)  # node-1 died: its lease and the hold run out together
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
    conn = raw_connection(store)
    try:
        return spend_tables.totals(conn)
    finally:
        conn.close()


async def test_integrity_check_finds_a_tampered_spend_and_rebuild_repairs_it(
    store: Store, settings: Settings
) -> None:
    a = await create_errand(store, settings, "a")
    await store.append(a, [responded(await ask(store, a), 0.125)])
    conn = raw_connection(store)
    with conn:
        conn.execute("UPDATE spend SET nanos = 1 WHERE scope LIKE 'day:%'")
    conn.close()
    problems = await store.integrity_check()
    assert len(problems) == 1 and problems[0].startswith("spend day:")
    (await store.rebuild_projections())
    assert (await store.integrity_check()) == []
    assert (await store.budget(None)).spent_usd == 0.125


def _schema_2_tables() -> set[str]:
    """The tables of a store that only migrations 0001 and 0002 made."""
    conn = sqlite3.connect(":memory:")
    try:
        for migration in MIGRATIONS[:2]:
            assert isinstance(migration.step, str)
            conn.executescript(migration.step)
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


async def test_a_store_from_before_budgets_is_backfilled_from_its_log(
    settings: Settings,
) -> None:
    store = SQLiteStore(settings.db_path)
    a = await create_errand(store, settings, "a")
    await store.append(a, [responded(await ask(store, a), 0.5)])
    await store.close()
    conn = sqlite3.connect(settings.db_path)
    with conn:  # back to schema 2, as an older errands left it: every later table goes
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in sorted(tables - _schema_2_tables()):  # spend, budget_holds, ..., migrations
            # (IF EXISTS: dropping an FTS5 table drops its shadow tables with it)
            conn.execute(f"DROP TABLE IF EXISTS {table}")
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
# The machine's fake clock: noon, local time (spend is booked by the local date of the
# response), so that its steps -- at most 25 expiries of 101 s -- stay within one day.
NOON = time.mktime((2026, 3, 10, 12, 0, 0, 0, 0, -1))


class BudgetMachine(RuleBasedStateMachine):
    """Calls reserve, settle (at most what they held), crash (their hold expires) and
    stop, in any order, on a real store file under a fake clock, against a model of
    what was spent and what is held (in nano-USD, as the store counts)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = NOON
        self.inflight: dict[str, tuple[int, float]] = {}  # errand -> (request seq, held)
        self.idle: list[str] = []
        self.spent = 0  # what settled responses cost, by the model
        self.dir = tempfile.mkdtemp(prefix="errands-budgets-")
        self.settings = Settings(home=Path(self.dir))
        self.store = SQLiteStore(Path(self.dir) / "e.sqlite", clock=ReadingClock(lambda: self.now))
        for i in range(6):
            self.idle.append(self.run(create_errand(self.store, self.settings, f"e{i}")))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def held(self) -> int:
        return sum(spend.nanos(held) for _, held in self.inflight.values())

    @precondition(lambda self: bool(self.idle))
    @rule(data=st.data(), amount=st.floats(min_value=0.0, max_value=0.7))
    def reserve(self, data: st.DataObject, amount: float) -> None:
        eid = data.draw(st.sampled_from(self.idle))
        seq = self.run(ask(self.store, eid))
        # (a cap already spent refuses even a call that costs nothing)
        cap = spend.nanos(CAP)
        fits = self.spent < cap and self.spent + self.held() + spend.nanos(amount) <= cap
        refusal = self.run(self.store.reserve(eid, seq, amount, daily_usd=CAP, ttl=100))
        assert (refusal is None) == fits, (refusal, self.spent, self.held(), amount)
        if refusal is None:
            self.idle.remove(eid)
            self.inflight[eid] = (seq, amount)
        else:
            assert (refusal.spent, refusal.held) == (self.spent, self.held())

    @precondition(lambda self: bool(self.inflight))
    @rule(data=st.data(), share=st.floats(min_value=0.0, max_value=1.0))
    def settle(self, data: st.DataObject, share: float) -> None:
        eid = data.draw(st.sampled_from(sorted(self.inflight)))
        seq, held = self.inflight.pop(eid)
        cost = held * share
        self.run(self.store.append(eid, [responded(seq, cost, at=self.now)]))
        self.spent += spend.nanos(cost)
        self.idle.append(eid)

    @precondition(lambda self: bool(self.inflight))
    @rule(data=st.data())
    def crash_and_expire(self, data: st.DataObject) -> None:
        eid = data.draw(st.sampled_from(sorted(self.inflight)))
        self.inflight.pop(eid)  # its process died: nobody settles it
        self.now += 101  # ... until it expires (other holds too: they are re-asked)
        for other in list(self.inflight):
            seq, held = self.inflight[other]
            assert self.run(self.store.reserve(other, seq, held, daily_usd=CAP, ttl=100)) is None
        self.idle.append(eid)

    @invariant()
    def the_store_counts_what_the_model_does_within_the_cap(self) -> None:
        status = self.run(self.store.budget(CAP))
        assert spend.nanos(status.spent_usd) == self.spent
        assert spend.nanos(status.reserved_usd) == self.held()
        assert status.calls_in_flight == len(self.inflight)
        assert status.spent_usd + status.reserved_usd <= CAP + 1e-9

    def teardown(self) -> None:
        try:
            assert self.run(self.store.integrity_check()) == []
            self.run(self.store.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


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

# Which calls are in flight together is set by the tests, not left to a race with the
# simulator's latency: a Gate holds every call at the simulator until the test opens
# it. The waits are for work that takes well under a second; their deadline is
# generous, so that only something stuck -- never a slow machine -- fails them.
DEADLINE = 60.0


class Gate:
    """Holds every model call at the simulator until :meth:`open`; counts arrivals."""

    def __init__(self, sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.arrived = 0
        validate = sim.validate

        def held(method: str, path: str, body: Any) -> Any:
            if method == "POST":
                with self.lock:
                    self.arrived += 1
                self.opened.wait(DEADLINE)
            return validate(method, path, body)

        monkeypatch.setattr(sim, "validate", held)

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def gate(sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate(sim, monkeypatch)
    yield g
    g.open()  # (a failed test must not leave the simulator's threads waiting)


async def until(what: str, check: Callable[[], Awaitable[bool] | bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE:.0f} s: {what}")
        await asyncio.sleep(0.02)


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


@dataclass
class FanOut:
    views: list[ErrandView]
    spent: float
    one_call: float  # the dearest call's cost
    worst: float  # the largest worst case of a call
    least_worst: float  # the smallest
    in_flight: int  # calls at the provider together, before any was answered
    held: float  # what they held then
    stopped: int  # errands the budget stopped while they were in flight


async def fan_out(
    store: Store,
    settings: Settings,
    sim: OpenAIChatSim,
    gate: Gate,
    n: int,
    loop_class: type[Loop] | None = None,
) -> FanOut:
    """*n* errands, one model call each, all started at once. The gate holds the first
    calls at the provider until every errand has asked the budget and every call it
    let through is there; then it opens, and the rest run as the budget lets them."""
    sim.script(default=Turn(text="done " * 300))
    harness = harness_for(store, settings, tools=FunctionToolset(), policy=AllowAll())
    runner = harness.runner(loop_class=loop_class)
    budgets = runner.loop.budgets
    reserve = budgets.reserve
    let_through: set[str] = set()
    stopped: set[str] = set()
    asked: set[str] = set()
    worst: list[float] = []

    async def reserve_and_note(
        p: Progress, model: Model, request: ModelRequest, seq: int
    ) -> Blocked | None:
        worst.append(worst_case_usd(model, request, settings, p))
        blocked = await reserve(p, model, request, seq)
        if blocked is None:
            let_through.add(p.errand_id)
        elif not blocked.wait:
            stopped.add(p.errand_id)
        asked.add(p.errand_id)
        return blocked

    budgets.reserve = reserve_and_note  # type: ignore[method-assign]
    ids = [
        await create_errand(store, settings, f"errand {i}", model="sim:gpt-sim") for i in range(n)
    ]
    assert len(await runner.claim()) == n
    await until(
        "every errand asked the budget, and every call it let through reached the provider",
        lambda: len(asked) == n and gate.arrived == len(let_through),
    )
    in_flight, stopped_meanwhile = gate.arrived, len(stopped)
    held = (await store.budget(settings.budget.daily_usd)).reserved_usd
    gate.open()
    await runner.wait_idle()
    views = [await store.view(eid) for eid in ids]
    costs = [v.usage.cost_usd for v in views if v.usage.cost_usd]
    return FanOut(
        views, sum(costs), max(costs), max(worst), min(worst), in_flight, held, stopped_meanwhile
    )


async def test_200_concurrent_calls_against_a_cap_end_within_it(
    store: Store,
    settings: Settings,
    sim: OpenAIChatSim,
    gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    cap = 0.10  # a worst case is ~$0.0095 (~300 input tokens + 1,000 output): ~10 fit
    run = await fan_out(store, priced(settings, sim, cap), sim, gate, 200)
    # while the first calls were in flight: as many as their worst cases fit (no other
    # would fit beside them), and every other errand waited for them -- none stopped
    assert run.in_flight >= 1 and run.held <= cap
    assert cap - run.held < run.least_worst, (run.held, run.least_worst)
    assert run.stopped == 0
    done = [v for v in run.views if v.state is ErrandState.done]
    refused = [v for v in run.views if v.state is ErrandState.needs_attention]
    assert len(done) + len(refused) == 200
    assert run.spent <= cap  # the worst case really is one here: not even one call over
    # and the cap is used: a call stops only when its worst case no longer fits beside
    # what was spent, so what is left at the end is less than one worst case
    assert run.spent > cap - run.worst, (run.spent, run.worst)
    assert len(done) >= (cap - run.worst) / run.one_call
    assert all("the daily budget of $0.1000 is reached" in v.reason for v in refused)
    assert all("errands tell" in v.reason for v in refused)
    assert len(sim.requests) == len(done)  # a refused call never reached the provider
    assert (await store.budget(cap)).reserved_usd == 0  # every hold settled or released
    assert (await store.integrity_check()) == []


async def test_negative_control_refusing_instead_of_waiting_leaves_the_cap_unused(
    store: Store,
    settings: Settings,
    sim: OpenAIChatSim,
    gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    cap = 0.10
    run = await fan_out(store, priced(settings, sim, cap), sim, gate, 200, NoWaitLoop)
    # what the test above rules out: every errand that did not fit beside the first
    # calls was stopped while they were in flight, so only those ran
    assert run.stopped == 200 - run.in_flight
    assert sum(v.state is ErrandState.done for v in run.views) == run.in_flight
    assert run.spent <= cap - run.worst  # a whole worst case (or more) left unused


async def test_negative_control_checking_spend_alone_overshoots_by_the_fan_out(
    settings: Settings,
    sim: OpenAIChatSim,
    gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, sim.api_key)
    cap = 0.10
    store = SpendOnlyStore(settings.db_path)  # calls in flight hold nothing
    try:
        run = await fan_out(store, priced(settings, sim, cap), sim, gate, 80)
    finally:
        await store.close()
    assert run.in_flight == 80  # nothing spent yet, nothing held: every call went ahead
    assert run.spent > cap + run.one_call  # what the guarantee above rules out
    assert all(v.state is ErrandState.done for v in run.views)


# -- a crash in the middle of a call -------------------------------------------------------

WORKER = """
import asyncio, os, sys
from errands.config import load_settings
from errands.harness import build
from errands.policy.hook import AllowAll

async def main():
    settings = load_settings()
    harness = build(settings, builtins=False, policy=AllowAll())  # the home's store
    store, runner = harness.store, harness.runner()
    if len(sys.argv) > 1:  # resume this one (taking it over from a dead worker)
        await runner.run_errand(sys.argv[1])
    else:
        await runner.claim(limit=int(os.environ.get("CLAIM", "10000")))
        await runner.wait_idle()
    await harness.close()

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
    home: Path, sim: OpenAIChatSim, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    from errands.config import load_settings

    monkeypatch.setenv(KEY_ENV, sim.api_key)
    write_config(home, sim, daily=0.015)  # room for one worst case (~$0.0095), not two
    settings = load_settings(home)
    sim.script(default="done")
    store = SQLiteStore(settings.db_path)
    eid = await create_errand(store, settings, "x", model="sim:gpt-sim")
    other = await create_errand(store, settings, "y", model="sim:gpt-sim")
    env = {**CLI(home).env(), KEY_ENV: sim.api_key}

    async def both_asked() -> bool:  # each errand has logged its model request
        logs = [await store.read(e) for e in (eid, other)]
        return all(any(s.event.type == "model_requested" for s in log) for log in logs)

    worker = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
    try:
        # the held call reaches the provider (the gate holds it there); the other
        # errand's call would fit beside what was spent: it waits for the hold
        await until("one call reaches the provider", lambda: gate.arrived == 1)
        await until("both errands ask for their call", both_asked)
        assert len(holds(store)) == 1
    finally:
        worker.kill()
        worker.wait()
    try:
        assert gate.arrived == 1  # the other call never went out
        left = holds(store)
        assert len(left) == 1 and left[0][1] == "day"  # the dead call still holds budget
        held_by = left[0][0]
        waiting = next(e for e in (eid, other) if not held_by.startswith(e))
        assert not [s for s in await store.read(waiting) if s.event.type == "model_responded"]
        gate.open()
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
        assert sum(costs) <= cap
        # and the cap is used: each stopped errand says what its call could cost, and
        # was stopped only because that no longer fitted beside what was spent
        stopped = [v.reason for v in views if v.state is ErrandState.needs_attention]
        worst = max(
            float(x) for r in stopped for x in re.findall(r"may cost up to \$(\d+\.\d+)", r)
        )
        assert sum(costs) > cap - worst - 0.0001, (sum(costs), worst)  # ($ to 4 places)
        assert (await store.integrity_check()) == []
    finally:
        await store.close()
