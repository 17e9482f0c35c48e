"""The permission boundary and durable approvals, each guarantee with its negative control.

A negative control runs the same scenario against a variant of errands without the
guard (a subclass from ``seams.controls``, passed in by the test) and asserts that the
check then *fails*, so none of these tests can silently become vacuous.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import Ledger, call, harness_for, ledger_registry, script
from seams.controls import (
    NoBindingLoop,
    NoGatePolicy,
    ReplayableApprovals,
    UnseenApprovals,
)

from errands.config import Settings
from errands.core import events as ev
from errands.core.canonical import canonical_hash
from errands.core.states import ErrandState
from errands.engine.operations import cancel_errand, create_errand
from errands.engine.runner import Runner
from errands.harness import Harness
from errands.models.scripted import ScriptedModel
from errands.policy.approvals import ApprovalRefused, Approvals
from errands.policy.rules import Policy, load_policy
from errands.store import Store


class World:
    def __init__(self, store: Store, settings: Settings, tmp: Path) -> None:
        self.store = store
        self.settings = settings
        self.ledger = Ledger(tmp / "ledger")
        self.registry = ledger_registry(self.ledger)
        self.approvals = Approvals(store, self.registry)

    def runner(
        self, *turns: dict[str, object], policy: Policy | None = None, **kwargs: Any
    ) -> Runner:
        harness = harness_for(
            self.store,
            self.settings,
            tools=self.registry,
            model=script(*turns),
            policy=policy or Policy(),
        )
        return harness.runner(**kwargs)

    def harness(self, model: ScriptedModel) -> Harness:
        return harness_for(
            self.store, self.settings, tools=self.registry, model=model, policy=Policy()
        )

    async def errand(self, runner: Runner) -> str:
        eid = await create_errand(self.store, self.settings, "tell bob", model="scripted:demo")
        await runner.run_errand(eid)
        return eid

    def sends(self) -> list[dict[str, object]]:
        return [e for e in self.ledger.entries() if e["tool"] == "send_message"]


@pytest.fixture
def world(store: Store, settings: Settings, tmp_path: Path) -> World:
    return World(store, settings, tmp_path)


SEND = {"text": "sending", "tool_calls": [call("send_message", to="bob", body="hi")]}
DONE = {"text": "done"}


async def _pending_id(world: World, eid: str) -> str:
    view = await world.store.view(eid)
    assert view.state is ErrandState.waiting_approval
    (pending,) = view.pending.values()
    return pending.id


# --- no ask call runs without approval ----------------------------------------------


async def test_an_ask_call_waits_and_does_not_run(world: World) -> None:
    eid = await world.errand(world.runner(SEND, DONE))
    view = await world.store.view(eid)
    assert view.state is ErrandState.waiting_approval
    (pending,) = view.pending.values()
    assert pending.tool == "send_message" and pending.effect == "external"
    assert "send to: bob" in pending.preview and "hi" in pending.preview
    assert world.sends() == []


async def test_negative_control_without_the_gate_the_call_runs(world: World) -> None:
    eid = await world.errand(world.runner(SEND, DONE, policy=NoGatePolicy()))
    assert (await world.store.view(eid)).state is ErrandState.done
    assert len(world.sends()) == 1  # the check above would have failed


async def test_approve_runs_it_once_and_deny_tells_the_model(world: World) -> None:
    runner = world.runner(SEND, DONE)
    eid = await world.errand(runner)
    await world.approvals.approve(await _pending_id(world, eid), by="ann", channel="cli")
    view = await runner.run_errand(eid)
    assert view.state is ErrandState.done
    assert len(world.sends()) == 1
    granted = [
        s.event for s in await world.store.read(eid) if isinstance(s.event, ev.ApprovalGranted)
    ]
    assert granted[0].by == "ann" and granted[0].channel == "cli"

    runner2 = world.runner(SEND, DONE)
    eid2 = await world.errand(runner2)
    await world.approvals.deny(
        await _pending_id(world, eid2), reason="not bob", by="ann", channel="api"
    )
    await runner2.run_errand(eid2)
    results = [s.event for s in await world.store.read(eid2) if isinstance(s.event, ev.ToolResult)]
    assert results[0].error_kind == "denied" and "not bob" in results[0].content.text
    assert len(world.sends()) == 1


# --- replayed or second approvals are refused ---------------------------------------


async def test_second_approval_and_replay_are_refused(world: World) -> None:
    runner = world.runner(SEND, DONE)
    eid = await world.errand(runner)
    aid = await _pending_id(world, eid)
    await world.approvals.approve(aid, by="ann", channel="cli")
    before = (await world.store.view(eid)).last_seq
    with pytest.raises(ApprovalRefused, match="not pending"):
        await world.approvals.approve(aid, by="ann", channel="cli")
    with pytest.raises(ApprovalRefused, match="not pending"):
        await world.approvals.deny(aid, reason="x", by="ann", channel="cli")
    assert (await world.store.view(eid)).last_seq == before  # nothing written
    await runner.run_errand(eid)
    assert len(world.sends()) == 1


async def _approve_at_once(
    world: World, approvals: Approvals, people: int
) -> tuple[list[ev.ApprovalGranted | BaseException], list[ev.ApprovalGranted]]:
    """*people* approve one request at the same time: each one's outcome, and the
    grants in the log."""
    eid = await world.errand(world.runner(SEND, DONE))
    aid = await _pending_id(world, eid)
    outcomes = await asyncio.gather(
        *(approvals.approve(aid, by=f"p{i}", channel="api") for i in range(people)),
        return_exceptions=True,
    )
    grants = [
        s.event for s in await world.store.read(eid) if isinstance(s.event, ev.ApprovalGranted)
    ]
    return outcomes, grants


async def test_concurrent_approvals_record_exactly_one(world: World) -> None:
    outcomes, grants = await _approve_at_once(world, world.approvals, 8)
    (winner,) = [o for o in outcomes if isinstance(o, ev.ApprovalGranted)]
    losers = [o for o in outcomes if o is not winner]
    assert len(losers) == 7
    for loser in losers:  # each one refused for the one reason, nothing else went wrong
        assert isinstance(loser, ApprovalRefused), repr(loser)
        assert "not pending" in str(loser), str(loser)
    assert grants == [winner]  # the one that was told yes is the one in the log


async def test_negative_control_without_the_replay_guard_a_second_grant_lands(
    world: World,
) -> None:
    eid = await world.errand(world.runner(SEND, DONE))
    aid = await _pending_id(world, eid)
    approvals = ReplayableApprovals(world.store, world.registry)
    await approvals.approve(aid, by="ann", channel="cli")
    await approvals.approve(aid, by="ann", channel="cli")  # what the test above refuses
    grants = [s for s in await world.store.read(eid) if isinstance(s.event, ev.ApprovalGranted)]
    assert len(grants) == 2


async def test_negative_control_without_the_replay_guard_concurrent_grants_all_land(
    world: World,
) -> None:
    approvals = ReplayableApprovals(world.store, world.registry)
    outcomes, grants = await _approve_at_once(world, approvals, 8)
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert len(grants) == 8  # what the concurrency test refuses


# --- approvals are bound to the arguments ------------------------------------------


async def test_changed_arguments_need_a_new_approval(world: World) -> None:
    eid = await world.errand(world.runner(SEND, DONE))
    aid = await _pending_id(world, eid)
    stale = canonical_hash({"to": "bob", "body": "something else"})
    with pytest.raises(ApprovalRefused, match="different arguments"):
        await world.approvals.approve(aid, by="ann", channel="inbox", seen_hash=stale)
    assert not [s for s in await world.store.read(eid) if s.event.type == "approval_granted"]
    seen = canonical_hash({"to": "bob", "body": "hi"})
    await world.approvals.approve(aid, by="ann", channel="inbox", seen_hash=seen)


async def test_negative_control_without_the_seen_check_a_stale_yes_is_recorded(
    world: World,
) -> None:
    eid = await world.errand(world.runner(SEND, DONE))
    aid = await _pending_id(world, eid)
    stale = canonical_hash({"to": "bob", "body": "something else"})
    await UnseenApprovals(world.store, world.registry).approve(
        aid, by="ann", channel="inbox", seen_hash=stale
    )  # what the test above refuses
    assert [s for s in await world.store.read(eid) if s.event.type == "approval_granted"]


async def test_a_grant_for_other_arguments_never_runs(world: World) -> None:
    """Even a grant that reached the log bound to other arguments does not run them."""
    runner = world.runner(SEND, DONE)
    eid = await world.errand(runner)
    view = await world.store.view(eid)
    (pending,) = view.pending.values()
    forged = ev.ApprovalGranted(
        request_seq=pending.seq,
        args_hash=canonical_hash({"to": "eve", "body": "hi"}),
        by="x",
        channel="api",
    )
    await world.store.append(eid, [forged])
    await runner.run_errand(eid)
    assert world.sends() == []


async def test_negative_control_without_binding_the_forged_grant_runs(world: World) -> None:
    runner = world.runner(SEND, DONE, loop_class=NoBindingLoop)
    eid = await world.errand(runner)
    (pending,) = (await world.store.view(eid)).pending.values()
    forged = ev.ApprovalGranted(
        request_seq=pending.seq, args_hash="sha256:other", by="x", channel="api"
    )
    await world.store.append(eid, [forged])
    await runner.run_errand(eid)
    assert world.sends() != []


async def test_edited_arguments_are_validated_then_run(world: World) -> None:
    runner = world.runner(SEND, DONE)
    eid = await world.errand(runner)
    aid = await _pending_id(world, eid)
    before = (await world.store.view(eid)).last_seq
    with pytest.raises(ApprovalRefused, match="not valid"):
        await world.approvals.approve(aid, by="a", channel="cli", edited_arguments={"to": 3})
    assert (await world.store.view(eid)).last_seq == before
    await world.approvals.approve(
        aid,
        by="a",
        channel="cli",
        edited_arguments={"to": "bob", "body": "hello, edited"},
    )
    await runner.run_errand(eid)
    assert [s["body"] for s in world.sends()] == ["hello, edited"]


async def test_approval_after_cancel_is_refused(world: World) -> None:
    runner = world.runner(SEND, DONE)
    eid = await world.errand(runner)
    aid = await _pending_id(world, eid)
    await cancel_errand(world.store, eid)
    with pytest.raises(ApprovalRefused, match="cancelled"):
        await world.approvals.approve(aid, by="a", channel="cli")
    view = await runner.run_errand(eid)
    assert view.state is ErrandState.cancelled and world.sends() == []


async def test_always_allow_covers_like_calls_only(world: World) -> None:
    again = {"tool_calls": [call("send_message", to="bob", body="hi")]}
    other = {"tool_calls": [call("send_message", to="eve", body="hi")]}
    runner = world.runner(SEND, again, other, DONE)
    eid = await world.errand(runner)
    await world.approvals.approve(
        await _pending_id(world, eid),
        by="a",
        channel="cli",
        always=True,
    )
    view = await runner.run_errand(eid)
    assert len(world.sends()) == 2  # the first, and the identical second without asking
    assert view.state is ErrandState.waiting_approval  # eve is not "like these"
    (pending,) = view.pending.values()
    assert pending.arguments["to"] == "eve"


# --- the policy ---------------------------------------------------------------------


def test_policy_file_is_written_once_and_never_rewritten(home: Path) -> None:
    policy = load_policy(home)
    path = home / "policy.toml"
    assert path.read_text().startswith("# errands policy")
    assert policy.effects[ev.EffectClass.external] == "ask"
    path.write_text('[effects]\nexternal = "deny"\n')
    assert load_policy(home).effects[ev.EffectClass.external] == "deny"
    assert load_policy(home).effects[ev.EffectClass.read] == "allow"  # defaults fill the rest
    assert path.read_text() == '[effects]\nexternal = "deny"\n'


# --- a restarted node with a stable name --------------------------------------------

# The lease a previous run of the node leaves behind, and how long the test waits for
# the restarted node. The node needs a few polls (0.02 s each) and two scripted turns:
# well under a second, even on a busy 2-core runner. The deadline is generous, and
# shorter than the lease, so a lease that lapses on its own cannot be what lets the
# errand go on.
LEFT_LEASE = 30.0
DEADLINE = LEFT_LEASE / 2


async def _eventually(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE:.0f} s: {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("decided", ["before the restart", "after the restart"])
async def test_a_decision_reaches_an_errand_whose_lease_a_previous_run_of_this_node_left(
    world: World, decided: str
) -> None:
    """A node that restarts under the same owner name finds its own lease on an errand
    that waits for a person. The lease is 'ours' (renewed with the rest), so claiming
    would never take it, and a wake-up from before the node started is not seen: the
    node gives up such leases when it starts, and a decision's wake-up starts it."""
    model = script(SEND, DONE)
    before = world.harness(model).runner(owner="node")
    eid = await create_errand(world.store, world.settings, "tell bob", model="scripted:demo")
    assert await world.store.acquire(eid, "node", LEFT_LEASE)
    await before.loop.run(eid)  # then the node dies: the lease stays, held by "node"
    assert (await world.store.lease_holder(eid)) is not None
    after = world.harness(model).runner(owner="node")
    pending = await _pending_id(world, eid)
    if decided == "before the restart":
        await world.approvals.approve(pending, by="ann", channel="cli")
    stop = asyncio.Event()
    serving = asyncio.create_task(after.serve(stop, poll=0.02))

    async def released() -> bool:
        return await world.store.lease_holder(eid) is None

    async def done() -> bool:
        return (await world.store.view(eid)).state is ErrandState.done

    try:
        if decided == "after the restart":
            # the node has started: it gave up the lease (the errand still waits)
            await _eventually("the restarted node gives up its old lease", released)
            assert (await world.store.view(eid)).state is ErrandState.waiting_approval
            await world.approvals.approve(pending, by="ann", channel="cli")
        await _eventually("the approved errand is done", done)
    finally:
        stop.set()
        await serving
    # the approved call ran once, after the grant, its intent logged before its result
    log = [s.event for s in await world.store.read(eid)]
    kinds = [
        type(e).__name__
        for e in log
        if isinstance(e, ev.ApprovalGranted)
        or (isinstance(e, ev.ToolIntent | ev.ToolResult) and e.tool == "send_message")
    ]
    assert kinds == ["ApprovalGranted", "ToolIntent", "ToolResult"], kinds
    assert len(world.sends()) == 1
