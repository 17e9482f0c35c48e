"""Sub-errands that need a person or fail (issue 22, item 3): with ``wake_on_person`` the
parent is woken as soon as a child waits for an approval, and reads which; a child that
fails is reported with its reason, and the parent can delegate again with another task
(or model)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from helpers.fanout import CHILD, FanModel, ended, serving, until
from helpers.kit import harness_for

from errands.config import Price, Settings
from errands.core import events as ev
from errands.core.progress import CallState
from errands.core.states import ErrandState, ErrandView
from errands.engine.delegate import Delegation
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.policy.hook import Decision
from errands.policy.rules import Policy, Rule
from errands.store.sqlite import SQLiteStore


class NoApprovalWakeStore(SQLiteStore):
    """The control: a child's approval request does not wake its parent."""

    def _wakes_parent(self, event_type: str, view: ErrandView) -> bool:
        return event_type != "approval_requested" and super()._wakes_parent(event_type, view)


@pytest.mark.parametrize(
    "store_class", [SQLiteStore, NoApprovalWakeStore], ids=["wakes", "control"]
)
async def test_a_child_waiting_for_approval_wakes_a_parent_that_asked(
    tmp_path: Path, settings: Settings, store_class: type[SQLiteStore]
) -> None:
    db = store_class(tmp_path / "s.sqlite")
    ask = Policy(rules=[Rule(name="ask-lists", tool="list_files", decision=Decision.ask)])
    # each child's first call is list_files: both ask
    model = FanModel(2, child_calls=2, wake_on_person=True)
    try:
        h = harness_for(db, settings, model=model, policy=ask)
        eid = await create_errand(db, settings, "fan out", model="scripted:demo")
        async with serving(h.runner()):
            if store_class is NoApprovalWakeStore:  # it sleeps on (until recheck_seconds)
                await until(db, eid, lambda v: v.reason == "waiting for its sub-errands")
                with pytest.raises(AssertionError):
                    await until(db, eid, ended, timeout=2)
                return
            view = await until(db, eid, ended, timeout=10)
        assert view.state is ErrandState.done, view.reason
        assert "wait for a person's approval" in (view.result or "")
        assert "waits for approval" in (view.result or "") and "list_files" in (view.result or "")
        pending = await db.pending_approvals()
        assert pending and all(p.errand_id.startswith(eid + ".") for p in pending)
    finally:
        await db.close()


class Retrying(FanModel):
    """A parent that delegates one task with a budget too small for one call; when the
    report says it failed for its budget, it delegates again without one."""

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        reply = await super().complete(request, on_text)
        first = next(m.text for m in request.messages if m.role == "user")
        k = sum(1 for m in request.messages if m.role == "assistant")
        if CHILD in first:
            return reply
        last = request.messages[-1].text if k else ""
        if k == 1 and "failed" in last and "budget" in last.lower():
            args = {"tasks": [{"task": f"{CHILD} again"}]}
            reply.text = ""
            reply.tool_calls = [ev.ToolCall(call_id="d1", name="delegate", arguments=args)]
        return reply


class QuietDelegation(Delegation):
    """The control: the report leaves out why a child did not finish."""

    def report(
        self, call: CallState, views: Sequence[ErrandView], by_message: bool
    ) -> ev.ToolResult:
        quiet = [v.model_copy(update={"reason": ""}) for v in views]
        return super().report(call, quiet, by_message)


class QuietLoop(Loop):
    delegation_class = QuietDelegation


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "s.sqlite")
    yield store
    await store.close()


@pytest.mark.parametrize("control", [False, True], ids=["retried", "control-quiet"])
async def test_a_failed_child_is_reported_and_the_parent_retries(
    db: SQLiteStore, settings: Settings, control: bool
) -> None:
    settings = settings.model_copy(
        update={"prices": {"scripted:demo": Price(input=0.1, output=100.0)}, "max_tokens": 20}
    )
    model = Retrying(1, task=lambda k: {"task": f"{CHILD} {k}", "max_cost_usd": 1e-9})
    h = harness_for(db, settings, model=model)
    eid = await create_errand(db, settings, "fan out", model="scripted:demo")
    async with serving(h.runner(loop_class=QuietLoop if control else None)):
        view = await until(db, eid, ended, timeout=20)
    assert view.state is ErrandState.done, view.reason
    children = await db.children(eid)
    assert children[0].state is ErrandState.failed and "budget" in children[0].reason.lower()
    if control:  # not told why: it gave up
        assert len(children) == 1
        return
    assert len(children) == 2 and children[1].state is ErrandState.done
    assert f"answer of {CHILD} again" in (view.result or "")
