"""No dead ends at a limit (issue 14, item 7): an errand that stopped at its step limit
can be given more steps and goes on from where it stopped; a message alone cannot
continue it, and ``errands tell`` says so plainly instead of reopening it to fail again
at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CLI
from helpers.kit import Ledger, call, harness_for, ledger_registry, script, write_script

from errands.config import Settings
from errands.core import events as ev
from errands.core.states import ErrandState
from errands.engine import operations
from errands.engine.operations import continue_errand, create_errand, tell_errand
from errands.errors import StoreError, UserError
from errands.harness import Harness
from errands.policy.hook import AllowAll
from errands.store import Store

TURNS = [{"tool_calls": [call("lookup", term=str(i))]} for i in range(4)] + [{"text": "all done"}]


async def stopped_at_its_limit(
    store: Store, settings: Settings, tmp_path: Path
) -> tuple[str, Harness]:
    h = harness_for(
        store,
        settings,
        tools=ledger_registry(Ledger(tmp_path / "l")),
        model=script(*TURNS),
        policy=AllowAll(),
    )
    eid = await create_errand(
        store, settings, "x", model="scripted:demo", limits=ev.Limits(max_steps=2)
    )
    view = await h.runner().run_errand(eid)
    assert view.state is ErrandState.failed and "step limit reached (2 of 2" in view.reason
    return eid, h


async def test_more_steps_and_it_goes_on_from_where_it_stopped(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    eid, h = await stopped_at_its_limit(store, settings, tmp_path)
    await continue_errand(store, eid, 3)
    view = await h.runner().run_errand(eid)
    assert view.state is ErrandState.done and view.result == "all done"
    assert view.steps == 5  # two, then three more: nothing asked twice
    lookups = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ToolIntent)]
    assert [i.arguments["term"] for i in lookups] == ["0", "1", "2", "3"]


@pytest.mark.parametrize("check", ["guard", "control"])
async def test_a_message_alone_cannot_continue_it(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    eid, h = await stopped_at_its_limit(store, settings, tmp_path)
    before = len(await store.read(eid))
    if check == "control":  # tell as it was: reopened, to fail again at its first step
        monkeypatch.setattr(operations, "exceeded", lambda *args: None)
        await tell_errand(store, eid, "go on")
        view = await h.runner().run_errand(eid)
        assert view.state is ErrandState.failed and "step limit" in view.reason
        return
    with pytest.raises(StoreError, match="--more-steps"):
        await tell_errand(store, eid, "go on")
    assert len(await store.read(eid)) == before  # nothing written


async def test_a_done_errand_has_nothing_to_continue(store: Store, settings: Settings) -> None:
    h = harness_for(store, settings, model=script({"text": "ok"}), policy=AllowAll())
    eid = await create_errand(store, settings, "x", model="scripted:demo")
    assert (await h.runner().run_errand(eid)).state is ErrandState.done
    with pytest.raises(UserError, match="is done"):
        await continue_errand(store, eid, 3)


def test_errands_resume_more_steps(cli: CLI, tmp_path: Path) -> None:
    turns = [{"tool_calls": [call("list_files")]} for _ in range(3)] + [{"text": "finally"}]
    spec = write_script(tmp_path / "s.json", *turns)
    (cli.home / "errands.toml").write_text("[limits]\nmax_steps = 2\n")
    first = json.loads(cli("run", "x", "-m", spec, "--json").stdout)
    assert first["status"] == "failed"
    told = cli("tell", first["id"], "go on")
    assert told.returncode == 2 and "--more-steps" in told.stderr
    again = cli("resume", first["id"], "--more-steps", "2", "--json")
    out = json.loads(again.stdout)
    assert out["status"] == "done" and out["result"] == "finally", again.stderr
