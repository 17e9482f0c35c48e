"""Sub-errands (issue 22, item 1): ``delegate`` starts children that run in parallel, each
with only its task and a folder of the parent's workspace; the parent sleeps with no
task meanwhile and wakes when all have ended, reading each one's state and answer."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers.fanout import CHILD, FanModel, ended, serving, until, with_subagents
from helpers.inproc import in_process
from helpers.kit import call, harness_for, write_script

from errands.config import Settings
from errands.core import events as ev
from errands.core.labels import Confidentiality, Integrity, Label, Provenance
from errands.core.progress import CallState
from errands.core.states import ErrandState, ErrandView
from errands.engine.delegate import Delegation, children_in
from errands.engine.loop import Loop
from errands.engine.operations import create_errand, tell_errand
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.store import StoredEvent
from errands.store.base import Tx
from errands.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from conftest import CLI

LATENCY = 0.5
CHILD_CALLS = 3


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "s.sqlite")
    yield store
    await store.close()


async def _log(store: SQLiteStore, eid: str) -> list[ev.Event]:
    return [s.event for s in await store.read(eid)]


async def _fan(db: SQLiteStore, settings: Settings, model: Any) -> tuple[str, ErrandView]:
    """A parent that fans out with *model*, served until it ends: its id and view."""
    h = harness_for(db, settings, model=model)
    eid = await create_errand(db, settings, "fan out", model="scripted:demo")
    async with serving(h.runner()):
        return eid, await until(db, eid, ended, timeout=30)


def _result(log: list[ev.Event], tool: str = "delegate") -> ev.ToolResult:
    return next(e for e in log if isinstance(e, ev.ToolResult) and e.tool == tool)


async def test_twenty_children_run_at_once_and_the_parent_reads_them(
    db: SQLiteStore, settings: Settings
) -> None:
    model = FanModel(20, child_calls=CHILD_CALLS, latency=LATENCY)
    eid, view = await _fan(db, with_subagents(settings, max_parallel=20), model)
    assert view.state is ErrandState.done, view.reason
    log = await _log(db, eid)
    result = _result(log)
    # at once: every child was in a model call at the same moment (a correctness check,
    # not a wall-clock one: the suite runs beside other work)
    assert model.peak == 20, model.peak
    ids = children_in(eid, await db.read(eid))
    assert len(ids) == 20
    for k, cid in enumerate(ids):
        child = await db.view(cid)
        assert child.state is ErrandState.done and child.parent == eid
        assert child.result == f"answer of {CHILD} {k}"
        assert f"answer of {CHILD} {k}" in result.content.text
        # its own context: only its task; its own folder of the parent's workspace
        created = (await db.read(cid))[0].event
        assert isinstance(created, ev.ErrandCreated) and created.content.text == f"{CHILD} {k}"
        assert Path(child.workspace).parent.parent == Path(view.workspace)
    assert view.result is not None and view.result.startswith("parent read: ")
    # sleeping cost nothing: the parent's model was asked twice (delegate, answer)
    assert model.asked[eid] == 2


async def test_control_one_at_a_time_the_peak_is_one(db: SQLiteStore, settings: Settings) -> None:
    model = FanModel(3, child_calls=1, latency=0.2)
    _, view = await _fan(db, with_subagents(settings, max_parallel=1), model)
    assert view.state is ErrandState.done, view.reason
    assert model.peak == 1, model.peak  # the twenty-at-once check above could fail


class Later(FanModel):
    """A parent that delegates with wait=false, then collects the ids with wait_for."""

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        reply = await super().complete(request, on_text)
        first = next(m.text for m in request.messages if m.role == "user")
        if CHILD not in first and sum(1 for m in request.messages if m.role == "assistant") == 1:
            ids = request.messages[-1].text.split(": ", 1)[1].split(", ")
            reply.text = ""
            reply.tool_calls = [ev.ToolCall(call_id="w1", name="wait_for", arguments={"ids": ids})]
        return reply


async def test_wait_false_returns_ids_and_wait_for_collects(
    db: SQLiteStore, settings: Settings
) -> None:
    eid, view = await _fan(db, settings, Later(3, latency=0.05, wait=False))
    assert view.state is ErrandState.done, view.reason
    log = await _log(db, eid)
    assert "collect them with wait_for" in _result(log).content.text
    assert "3 of 3 sub-errands ended" in _result(log, "wait_for").content.text


async def test_long_answers_are_cut_with_a_pointer_to_the_whole(
    db: SQLiteStore, settings: Settings
) -> None:
    model = FanModel(1, task=lambda k: {"task": CHILD + " " + "x" * 500})
    eid, view = await _fan(db, with_subagents(settings, result_chars=200), model)
    assert view.state is ErrandState.done
    (cid,) = children_in(eid, await db.read(eid))
    text = _result(await _log(db, eid)).content.text
    assert f'read_errand_result("{cid}")' in text and "x" * 300 not in text


class Asking(FanModel):
    """A parent that calls delegate with *args* as they are."""

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(0)
        self.args = args

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        reply = await super().complete(request, on_text)
        if reply.tool_calls and reply.tool_calls[0].name == "delegate":
            reply.tool_calls = [ev.ToolCall(call_id="d0", name="delegate", arguments=self.args)]
        return reply


@pytest.mark.parametrize(
    "args",
    [
        {"tasks": []},
        {"tasks": [{"task": ""}]},
        {"tasks": [{"task": "CHILD 0", "colour": "red"}]},
        {"tasks": [{"task": "CHILD 0", "max_cost_usd": -1}]},
        {"tasks": [{"task": "CHILD 0"}, {"task": "CHILD 1", "tools": ["no_such_tool"]}]},
        {"tasks": [{"task": "CHILD 0"}, {"task": "CHILD 1", "model": "nonsense:x"}]},
        {"tasks": [{"task": f"CHILD {k}"} for k in range(17)]},  # > max_parallel
    ],
    ids=["none", "empty", "unknown-key", "negative-cost", "tool", "model", "too-many"],
)
async def test_bad_tasks_are_a_tool_error_and_nothing_is_made(
    db: SQLiteStore, settings: Settings, args: dict[str, Any]
) -> None:
    h = harness_for(db, settings, model=Asking(args))
    eid = await create_errand(db, settings, "fan out", model="scripted:demo")
    view = await h.runner().run_errand(eid)
    assert view.state is ErrandState.done, view.reason
    result = _result(await _log(db, eid))
    assert not result.ok and "delegate" in result.content.text
    assert not [v for v in await db.list_errands() if v.parent is not None]


class TrustingDelegation(Delegation):
    """The control: a child's task is trusted whatever the parent had read."""

    def label(self, call: CallState) -> Label:
        return Label.of(Integrity.trusted, Confidentiality.private)


class TrustingLoop(Loop):
    delegation_class = TrustingDelegation


@pytest.mark.parametrize("control", [False, True], ids=["labelled", "control-trusting"])
async def test_a_child_is_never_more_trusted_than_the_call(
    db: SQLiteStore, settings: Settings, control: bool
) -> None:
    h = harness_for(db, settings, model=FanModel(1))
    eid = await create_errand(db, settings, "fan out", model="scripted:demo")
    # untrusted content in the parent's context: the call that delegates carries it
    mail = ev.UserMessage(
        content=ev.Content(
            text="a mail from outside",
            provenance=Provenance(kind="external", source="mail"),
            integrity=Integrity.untrusted,
        )
    )
    await db.append(eid, [mail])
    async with serving(h.runner(loop_class=TrustingLoop if control else None)):
        await until(db, eid, ended)
    (cid,) = children_in(eid, await db.read(eid))
    created = (await db.read(cid))[0].event
    assert isinstance(created, ev.ErrandCreated)
    expected = Integrity.trusted if control else Integrity.untrusted
    assert created.content.integrity is expected


class NoWakeStore(SQLiteStore):
    """The control: a child's end does not wake its parent."""

    def _wake_parent(self, tx: Tx, parent: str, at: float) -> None:
        return None


@pytest.mark.parametrize("store_class", [SQLiteStore, NoWakeStore], ids=["wakes", "control"])
async def test_the_last_child_ending_wakes_the_sleeping_parent(
    tmp_path: Path, settings: Settings, store_class: type[SQLiteStore]
) -> None:
    db = store_class(tmp_path / "w.sqlite")
    try:
        h = harness_for(db, settings, model=FanModel(2, child_calls=3, latency=0.1))
        eid = await create_errand(db, settings, "fan out", model="scripted:demo")
        async with serving(h.runner()):
            ids = children_in(eid, await until_sleeping(db, eid))
            for i in ids:
                await until(db, i, ended)
            if store_class is NoWakeStore:  # it sleeps on past its children
                with pytest.raises(AssertionError):
                    await until(db, eid, ended, timeout=2)
                return
            view = await until(db, eid, ended, timeout=2)
        assert view.state is ErrandState.done
    finally:
        await db.close()


async def until_sleeping(db: SQLiteStore, eid: str) -> list[StoredEvent]:
    await until(db, eid, lambda v: v.reason == "waiting for its sub-errands")
    return await db.read(eid)


async def test_the_api_and_errands_show_list_the_children(settings: Settings, cli: CLI) -> None:
    db = SQLiteStore(settings.db_path)
    try:
        eid, _ = await _fan(db, settings, FanModel(3))
        ids = children_in(eid, await db.read(eid))
        assert [v.id for v in await db.children(eid)] == ids
        assert await db.children(ids[0]) == []
        async with in_process(harness_for(db, settings, model=FanModel(0))) as (api, _):
            r = await api.get(f"/api/errands/{eid}")
        assert r.status_code == 200, r.text
        listed = r.json()["children"]
        assert [(c["id"], c["status"], c["parent"]) for c in listed] == [
            (i, "done", eid) for i in ids
        ]
    finally:
        await db.close()
    shown = cli("show", eid)
    assert shown.returncode == 0, shown.stderr
    for i in ids:
        assert re.search(rf"└ {re.escape(i)} done · \$0\.0000 · 1 steps · ", shown.stdout)


@pytest.mark.parametrize("limit", ["max_depth", "max_total"])
async def test_the_limits_refuse_a_fan_out_with_nothing_made(
    db: SQLiteStore, settings: Settings, limit: str
) -> None:
    if limit == "max_depth":  # a child (task "nested") delegates again: depth 2 > 1
        settings = with_subagents(settings, max_depth=1)
        model = FanModel(1, task=lambda k: {"task": "nested"})
    else:  # 4 tasks, at most 3 open
        settings = with_subagents(settings, max_total=3)
        model = FanModel(4)
    eid, view = await _fan(db, settings, model)
    assert view.state is ErrandState.done, view.reason
    refusing = (await db.children(eid))[0].id if limit == "max_depth" else eid
    result = _result(await _log(db, refusing))
    assert not result.ok and f"[subagents] {limit}" in result.content.text
    assert await db.children(refusing) == []


async def test_a_child_gets_only_the_tools_it_is_given(db: SQLiteStore, settings: Settings) -> None:
    def task(k: int) -> dict[str, Any]:
        return {"task": f"{CHILD} {k}", "tools": ["list_files"][:k], "max_cost_usd": 0.5 + k}

    eid, _ = await _fan(db, settings, FanModel(2, task=task))
    first, second = await db.children(eid)
    assert (first.tools, second.tools) == ([], ["list_files"])
    assert (first.budget_usd, second.budget_usd) == (0.5, 1.5)  # (the parent has no cap)


async def test_a_message_wakes_the_parent_before_its_children_end(
    db: SQLiteStore, settings: Settings
) -> None:
    h = harness_for(db, settings, model=FanModel(2, child_calls=30, latency=0.1))
    eid = await create_errand(db, settings, "fan out", model="scripted:demo")
    async with serving(h.runner()):
        ids = children_in(eid, await until_sleeping(db, eid))
        await tell_errand(db, eid, "how far are they?")
        view = await until(db, eid, ended)
        text = _result(await _log(db, eid)).content.text
        assert "woken early: a message came" in text and "0 of 2 sub-errands ended" in text
        assert not [i for i in ids if ended(await db.view(i))]  # they go on
        await h.cancel(ids[0])
        await h.cancel(ids[1])
    assert view.state is ErrandState.done


async def test_a_subtasks_link_out_of_the_workspace_is_refused(
    db: SQLiteStore, settings: Settings, tmp_path: Path
) -> None:
    h = harness_for(db, settings, model=FanModel(2))
    eid = await create_errand(db, settings, "fan out", model="scripted:demo")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (Path((await db.view(eid)).workspace) / "subtasks").symlink_to(elsewhere)
    view = await h.runner().run_errand(eid)
    assert view.state is ErrandState.done, view.reason
    result = _result(await _log(db, eid))
    assert not result.ok and "is not a folder of this errand's workspace" in result.content.text
    assert await db.children(eid) == [] and list(elsewhere.iterdir()) == []


def test_errands_run_runs_the_children_too(tmp_path: Path) -> None:
    """``errands run`` (no ``errands up``): the parent and its children run here."""
    from conftest import CLI

    cli = CLI(tmp_path / "home")
    spec = write_script(
        tmp_path / "s.json",
        {
            "cases": [
                {"when_seen": CHILD, "text": "a child's answer"},
                {
                    "tool_calls": [
                        call("delegate", tasks=[{"task": f"{CHILD} {k}"} for k in range(3)])
                    ]
                },
            ]
        },
        {"text": "all three answered"},
    )
    r = cli("run", "fan out", "-m", spec)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all three answered" in r.stdout
    (parent,) = [e for e in json.loads(cli("ls", "--json").stdout) if e["parent"] is None]
    shown = cli("show", parent["id"]).stdout
    assert shown.count("done · $0.0000 · 1 steps") == 3, shown
