"""Sub-errands under control (issue 22, items 2-3): cancelling the parent cancels its
children; a child waiting for a person's approval waits in the queue like any errand
while its parent sleeps on; the tree's budget running out in the middle of a fan-out
stops the remaining children cleanly and the parent is told why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers.fanout import FanModel, ended, serving, until
from helpers.kit import harness_for

from errands.config import Price, Settings
from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.states import TERMINAL, ErrandState
from errands.engine import operations
from errands.engine.delegate import Delegation, children_in
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.policy.hook import Decision
from errands.policy.rules import Policy, Rule
from errands.store.sqlite import SQLiteStore


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "s.sqlite")
    yield store
    await store.close()


async def _children(db: SQLiteStore, eid: str) -> list[str]:
    await until(db, eid, lambda v: v.reason == "waiting for its sub-errands")
    return children_in(eid, await db.read(eid))


class DeafDelegation(Delegation):
    """Part of the control: a child never looks at its parent's state."""

    async def orphaned(self, p: Progress) -> ev.CancelRequested | None:
        return None


class DeafLoop(Loop):
    delegation_class = DeafDelegation


@pytest.mark.parametrize(
    "how",
    ["cascade", "crash-between", "control"],
    ids=["cascade", "lost-cascade-children-see-it", "control-neither"],
)
async def test_cancelling_the_parent_cancels_its_children(
    db: SQLiteStore, settings: Settings, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The parent's cancel reaches its children at once; and a cancel whose cascade was
    lost (a crash between the two: played by a cascade that does nothing) is seen by
    each child before its next model call. The control has neither."""
    if how != "cascade":

        async def nothing(*args: Any, **kwargs: Any) -> None:
            return None

        monkeypatch.setattr(operations, "cancel_children", nothing)
    model = FanModel(4, child_calls=8, latency=0.1)
    h = harness_for(db, settings, model=model)
    eid = await create_errand(db, settings, "fan out", model="scripted:demo")
    async with serving(h.runner(loop_class=DeafLoop if how == "control" else None)):
        ids = await _children(db, eid)
        await until(db, ids[0], lambda v: v.steps >= 1)  # under way
        await h.cancel(eid, reason="not needed any more")
        views = [await until(db, i, ended, timeout=10) for i in ids]
    assert (await db.view(eid)).state is ErrandState.cancelled
    if how == "control":
        assert all(v.state is ErrandState.done for v in views)
    else:
        assert all(v.state is ErrandState.cancelled for v in views), views
        assert all(model.asked[i] < 8 for i in ids)  # they stopped part-way


async def test_a_child_waits_for_approval_and_its_parent_sleeps_on(
    db: SQLiteStore, settings: Settings
) -> None:
    ask = Policy(rules=[Rule(name="ask-lists", tool="list_files", decision=Decision.ask)])
    h = harness_for(db, settings, model=FanModel(2, child_calls=2), policy=ask)
    eid = await create_errand(db, settings, "fan out", model="scripted:demo")
    async with serving(h.runner()):
        ids = await _children(db, eid)
        for cid in ids:
            await until(db, cid, lambda v: v.state is ErrandState.waiting_approval)
        pending = await db.pending_approvals()
        assert sorted(p.errand_id for p in pending) == sorted(ids)  # the queue, as any call
        assert (await db.view(eid)).state is ErrandState.sleeping
        for p in pending:
            await h.approvals.approve(p.id, by="me", channel="cli")
        view = await until(db, eid, ended)
    assert view.state is ErrandState.done, view.reason
    assert [(await db.view(i)).state for i in ids] == [ErrandState.done] * len(ids)


async def test_the_tree_budget_running_out_stops_the_rest_and_tells_the_parent(
    db: SQLiteStore, settings: Settings
) -> None:
    settings = settings.model_copy(
        update={"prices": {"scripted:demo": Price(input=0.1, output=100.0)}, "max_tokens": 20}
    )
    h = harness_for(db, settings, model=FanModel(4, child_calls=10, latency=0.02))
    # the parent's budget ($0.0005 a call): its own call and about half the children's 40
    eid = await create_errand(db, settings, "fan out", model="scripted:demo", max_cost_usd=0.01)
    async with serving(h.runner()):
        view = await until(db, eid, ended)
    assert view.state is ErrandState.failed and "budget" in view.reason.lower(), view.reason
    ids = children_in(eid, await db.read(eid))
    children = [await db.view(i) for i in ids]
    assert all(c.state in TERMINAL for c in children)
    assert any(c.state is ErrandState.failed for c in children)
    spent = view.usage.cost_usd + sum(c.usage.cost_usd for c in children)
    assert spent <= 0.01 + 1e-9
    result = next(
        e
        for e in (s.event for s in await db.read(eid))
        if isinstance(e, ev.ToolResult) and e.tool == "delegate"
    )
    assert "failed" in result.content.text and "budget" in result.content.text.lower()
