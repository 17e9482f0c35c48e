"""User-written ``[[rules]]`` in a real ``ERRANDS_HOME/policy.toml``, end to end.

Through the CLI (``errands policy explain`` and ``errands run`` with a scripted model) and
through the API of a real ``errands up`` calling a local HTTP endpoint: a deny rule
refuses a call before any intent (the tool never runs), an ask rule makes an otherwise
allowed call wait for a person, an allow rule lets an otherwise asked-about call run, and
the built-in outside-workspace deny holds for paths that climb out or follow a link out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import CLI
from helpers.kit import call, write_script
from helpers.server import ServerProc, Sink, wait_for, write_config

POLICY = """\
# rules in an order that does not matter: deny beats ask beats allow
[[rules]]
name = "ask-for-plans"
tool = "*_file"
args = { path = "*.md" }
decision = "ask"
reason = "plans are read by people"

[[rules]]
name = "no-secrets"
tool = "write_file"
args = { path = "secret*" }
decision = "deny"
reason = "secrets stay out of files"
"""


def events_of(cli: CLI, errand_id: str) -> list[dict[str, Any]]:
    r = cli("show", errand_id, "--json")
    assert r.returncode == 0, r.stderr
    events: list[dict[str, Any]] = json.loads(r.stdout)["events"]
    return events


def by_call(events: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {e["call_id"]: e for e in events if e["type"] == kind}


def test_policy_explain_reads_user_rules(cli: CLI, home: Path) -> None:
    (home / "policy.toml").write_text(POLICY)

    def explain(tool: str, args: dict[str, Any]) -> dict[str, str]:
        r = cli("policy", "explain", tool, json.dumps(args), "--json")
        assert r.returncode == 0, r.stderr
        out: dict[str, str] = json.loads(r.stdout)
        return out

    # matches both rules: the deny wins though the ask comes first in the file
    assert explain("write_file", {"path": "secret.md", "content": "x"}) == {
        "decision": "deny",
        "rule": "no-secrets",
        "reason": "secrets stay out of files",
        "effect": "write_local",
    }
    plan = explain("read_file", {"path": "plan.md"})
    assert (plan["decision"], plan["rule"], plan["effect"]) == ("ask", "ask-for-plans", "read")
    plain = explain("write_file", {"path": "notes.txt", "content": "x"})
    assert (plain["decision"], plain["rule"]) == ("allow", "effects.write_local")
    assert (home / "policy.toml").read_text() == POLICY  # read, never rewritten


def test_run_deny_rule_and_outside_workspace_refuse_before_any_intent(
    cli: CLI, home: Path, tmp_path: Path
) -> None:
    (home / "policy.toml").write_text(POLICY)
    (home / "errands.toml").write_text(f'[workspaces]\nroots = ["{tmp_path / "ws"}"]\n')
    workspace = tmp_path / "ws"
    workspace.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "out").symlink_to(outside)
    spec = write_script(
        tmp_path / "writes.json",
        {
            "text": "writing four files",
            "tool_calls": [
                call("write_file", path="secret.txt", content="hunter2"),
                call("write_file", path="../escape.txt", content="x"),
                call("write_file", path="out/leak.txt", content="x"),
                call("write_file", path="notes.txt", content="fine"),
            ],
        },
        {"text": "finished"},
    )
    r = cli("run", "write the files", "--model", spec, "--workspace", str(workspace), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "done" and out["result"] == "finished"

    events = events_of(cli, out["id"])
    results = by_call(events, "tool_result")
    intents = by_call(events, "tool_intent")
    texts = {cid: res["content"]["text"] for cid, res in results.items()}
    assert texts["call_0_0"] == "denied by policy rule no-secrets: secrets stay out of files"
    assert texts["call_0_1"].startswith("denied by policy rule outside-workspace")
    assert texts["call_0_2"].startswith("denied by policy rule outside-workspace")
    assert [results[f"call_0_{i}"]["error_kind"] for i in range(3)] == ["denied"] * 3
    assert list(intents) == ["call_0_3"]  # the refused calls never reached an intent
    assert results["call_0_3"]["ok"] is True
    assert sorted(p.name for p in workspace.iterdir()) == ["notes.txt", "out"]
    assert list(outside.iterdir()) == [] and not (tmp_path / "escape.txt").exists()
    assert json.loads(cli("approvals", "--json").stdout) == []


def test_run_ask_rule_makes_an_allowed_call_wait(cli: CLI, home: Path, tmp_path: Path) -> None:
    (home / "policy.toml").write_text(POLICY)
    spec = write_script(
        tmp_path / "plan.json",
        {
            "text": "writing the plan",
            "tool_calls": [call("write_file", path="plan.md", content="# Plan")],
        },
        {"text": "planned"},
    )
    r = cli("run", "write the plan", "--model", spec)
    assert r.returncode == 3, r.stderr  # no terminal: left waiting for a person
    assert "waiting for your approval" in r.stderr
    (pending,) = json.loads(cli("approvals", "--json").stdout)
    assert (pending["tool"], pending["rule"], pending["effect"]) == (
        "write_file",
        "ask-for-plans",
        "write_local",
    )
    assert pending["reason"] == "plans are read by people"
    assert "plans are read by people (rule ask-for-plans)" in cli("approvals").stdout
    errand_id = pending["errand_id"]
    shown = json.loads(cli("show", errand_id, "--json").stdout)
    workspace = Path(shown["workspace"])
    assert not (workspace / "plan.md").exists()
    assert by_call(shown["events"], "tool_intent") == {}  # nothing ran before the yes

    assert cli("approve", pending["id"]).returncode == 0
    r = cli("resume", errand_id, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "done"
    assert (workspace / "plan.md").read_text() == "# Plan"


# -- the API of a real `errands up` --------------------------------------------------------------


def test_api_deny_rule_on_a_url_glob_sends_nothing(tmp_path: Path, sink: Sink) -> None:
    home = tmp_path / "home"
    write_config(home)  # the network tools may reach 127.0.0.1, where the sink listens
    (home / "policy.toml").write_text(
        f"""\
[[rules]]
name = "no-blocked-paths"
tool = "http_request"
args = {{ url = "{sink.url}/blocked/*" }}
decision = "deny"
reason = "that endpoint is off limits"

[[rules]]
name = "status-posts-are-fine"
tool = "http_request"
args = {{ method = "POST", url = "{sink.url}/status/*" }}
decision = "allow"
"""
    )
    spec = write_script(
        tmp_path / "requests.json",
        {
            "text": "calling three endpoints",
            "tool_calls": [
                call("http_request", method="GET", url=f"{sink.url}/blocked/1"),  # network: allow
                call("http_request", method="POST", url=f"{sink.url}/blocked/2", body="x"),  # ask
                call("http_request", method="GET", url=f"{sink.url}/open/1"),
                # external (ask by default), allowed by the rule: runs without asking
                call("http_request", method="POST", url=f"{sink.url}/status/1", body="up"),
            ],
        },
        {"text": "done calling"},
    )
    server = ServerProc(home).start()
    try:
        with server.client() as api:
            r = api.post("/api/errands", json={"text": "call them", "model": spec})
            assert r.status_code == 201, r.text
            errand_id = r.json()["id"]

            def settled() -> dict[str, Any] | None:
                detail: dict[str, Any] = api.get(f"/api/errands/{errand_id}").json()
                return detail if detail["status"] not in ("queued", "running") else None

            detail = wait_for(settled)
            approvals = api.get("/api/approvals").json()
    finally:
        server.kill()
    assert detail["status"] == "done", detail["status"]
    assert approvals == []
    events = [e["event"] for e in detail["events"]]
    results = by_call(events, "tool_result")
    for cid in ("call_0_0", "call_0_1"):
        assert results[cid]["error_kind"] == "denied"
        assert results[cid]["content"]["text"] == (
            "denied by policy rule no-blocked-paths: that endpoint is off limits"
        )
    assert results["call_0_2"]["ok"] is True and results["call_0_3"]["ok"] is True
    assert list(by_call(events, "tool_intent")) == ["call_0_2", "call_0_3"]
    assert not [e for e in events if e["type"] == "approval_requested"]
    assert sorted((q["method"], q["path"]) for q in sink.requests) == [
        ("GET", "/open/1"),
        ("POST", "/status/1"),
    ]
