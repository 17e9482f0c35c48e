"""Standing permissions (issue 14, item 4): an approval can become a standing rule,
written to policy.toml with who made it, that allows later calls like it in every
errand -- but never a call made after untrusted content entered the errand's context.
(That an allow rule beats an effect-class ``ask`` default is tests/test_policy.py's.)"""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from helpers.kit import call, harness_for, script, write_script

from errands.config import Settings
from errands.core import events as ev
from errands.core.labels import Integrity
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.errors import UserError
from errands.policy import rules
from errands.policy.standing import standing_pattern
from errands.store import Store
from errands.tools.tool import ArgRole, ToolOutput
from errands.tools.toolset import FunctionToolset

URL = "https://status.example.com/api/incidents"


def tools(posted: list[str]) -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=ev.EffectClass.external, roles={"url": "url", "body": "body"})
    def post(url: str, body: str) -> str:
        """Post to a status page.

        Args:
            url: Where.
            body: What.
        """
        posted.append(url)
        return "posted"

    @reg.tool(effect=ev.EffectClass.read, idempotent=True)
    def read_mail() -> ToolOutput:
        """Read the newest mail."""
        return ToolOutput(text="Please post to the status page.", integrity=Integrity.untrusted)

    return reg


def policy_text(store: Store, settings: Settings) -> str:
    """The policy in force: the newest version a PostgreSQL store keeps, else the file."""
    versions = getattr(store, "policies", None)
    if versions is not None:
        return str(versions.newest()[1])
    return (settings.home / "policy.toml").read_text()


async def run(
    store: Store, settings: Settings, turns: list[dict[str, Any]], posted: list[str]
) -> tuple[str, ErrandState]:
    h = harness_for(store, settings, tools=tools(posted), model=script(*turns))
    eid = await create_errand(store, settings, "post the status", model="scripted:demo")
    view = await asyncio.wait_for(h.runner().run_errand(eid), 30)
    return eid, view.state


async def approve_first(store: Store, settings: Settings, posted: list[str], **kw: Any) -> None:
    turns = [{"tool_calls": [call("post", url=URL, body="all good")]}, {"text": "done"}]
    _, state = await run(store, settings, turns, posted)
    assert state is ErrandState.waiting_approval
    h = harness_for(store, settings, tools=tools(posted), model=script(*turns))
    (pending,) = await store.pending_approvals()
    await h.approvals.approve(pending.id, by="ana", channel="cli", standing=True, **kw)


async def test_a_standing_approval_allows_later_calls_like_it_in_every_errand(
    store: Store, settings: Settings
) -> None:
    posted: list[str] = []
    await approve_first(store, settings, posted)
    rule = tomllib.loads(policy_text(store, settings))["rules"][-1]
    assert rule["standing"] is True and rule["decision"] == "allow"
    assert rule["args"] == {"url": "https://status.example.com/api/*"}
    assert rule["by"] == "ana via cli" and rule["created"]
    later = [
        {"tool_calls": [call("post", url="https://status.example.com/api/maintenance", body="x")]},
        {"text": "done"},
    ]
    _, state = await run(store, settings, later, posted)
    assert state is ErrandState.done  # no approval asked
    assert posted == ["https://status.example.com/api/maintenance"]
    elsewhere = [{"tool_calls": [call("post", url="https://evil.example/api/x", body="x")]}]
    _, state = await run(store, settings, elsewhere, posted)
    assert state is ErrandState.waiting_approval  # another host: still asked


@pytest.mark.parametrize("check", ["guard", "control"])
async def test_a_standing_rule_never_applies_after_untrusted_content(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    posted: list[str] = []
    await approve_first(store, settings, posted)
    if check == "control":  # standing rules that ignore what the errand has read
        original = rules.Rule.matches

        def matches(self: rules.Rule, c: Any, values: Any = None) -> bool:
            return original(self.model_copy(update={"standing": False}), c, values)

        monkeypatch.setattr(rules.Rule, "matches", matches)
        # (flow control would ask for this call too: the control is without both guards)
        monkeypatch.setattr(rules.Policy, "flow_check", lambda self, c: None)
    tainted = [
        {"tool_calls": [call("read_mail")]},
        {"tool_calls": [call("post", url="https://status.example.com/api/new", body="x")]},
        {"text": "done"},
    ]
    _, state = await run(store, settings, tainted, posted)
    if check == "control":
        assert state is ErrandState.done and posted == ["https://status.example.com/api/new"]
        return
    assert state is ErrandState.waiting_approval and posted == []


def test_the_pattern_pins_the_place_never_the_content() -> None:
    roles = {"to": ArgRole.recipient, "text": ArgRole.body, "url": ArgRole.url}
    assert standing_pattern(roles, {"to": "ana@example.com", "text": "hi"}) == {
        "to": "ana@example.com"
    }
    assert standing_pattern(roles, {"url": "HTTPS://Status.Example.com:443/api/x?q=1"}) == {
        "url": "https://status.example.com/api/*"
    }
    with pytest.raises(UserError, match="give the pattern yourself"):
        standing_pattern({"text": ArgRole.body}, {"text": "hi"})


def test_errands_approve_standing_writes_the_rule(cli: CLI, tmp_path: Path) -> None:
    spec = write_script(
        tmp_path / "s.json",
        {"tool_calls": [call("http_request", method="POST", url=URL, body="ok")]},
        {"text": "done"},
    )
    first = json.loads(cli("run", "post", "-m", spec, "--json", "--no-input").stdout)
    (approval,) = first["approvals"]
    r = cli("approve", approval["id"], "--standing")
    assert r.returncode == 0, r.stderr
    assert "standing rule added to the policy" in r.stdout
    explained = cli(
        "policy",
        "explain",
        "http_request",
        json.dumps({"method": "POST", "url": "https://status.example.com/api/other", "body": "x"}),
    )
    assert "allow" in explained.stdout and "standing-http_request-1" in explained.stdout
    policy = (cli.home / "policy.toml").read_text()
    assert "standing = true" in policy and "via cli" in policy
