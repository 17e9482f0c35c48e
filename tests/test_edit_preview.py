"""An edited approval shows its new decision before it runs (issue 13, item 1: "the card
shows the new decision"): ``POST /api/approvals/{id}/policy`` judges the edit, and
``errands approve --edit`` prints that decision, from the store or through a server;
an edit the policy denies is refused and nothing runs (tests/test_security_policy.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CLI
from helpers.server import clean_env, post_script, running, wait_for, write_config

DENY = """
[[rules]]
name = "never-prod"
tool = "http_request"
args = { url = "https://prod.example.com/*" }
decision = "deny"
reason = "production is off limits"
"""


def test_the_api_and_the_cli_show_an_edits_decision(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home)
    (home / "policy.toml").write_text(DENY)
    spec = post_script(tmp_path / "s.json", "https://status.example.com/api/x")
    with running(home, env=clean_env(home)) as server, server.client() as api:
        eid = api.post("/api/errands", json={"text": "post", "model": spec}).json()["id"]
        wait_for(lambda: api.get(f"/api/errands/{eid}").json()["status"] == "waiting_approval")
        (approval,) = api.get(f"/api/errands/{eid}").json()["approvals"]
        aid = approval["id"]
        asked = api.post(f"/api/approvals/{aid}/policy", json={}).json()
        assert asked["decision"] == "ask" and asked["rule"] == "effects.external"
        denied = dict(approval["arguments"], url="HTTPS://PROD.example.com./admin")
        said = api.post(f"/api/approvals/{aid}/policy", json={"edited_arguments": denied}).json()
        assert said == {
            "approval_id": aid,
            "decision": "deny",
            "rule": "never-prod",
            "reason": "production is off limits",
        }
        bad = api.post(f"/api/approvals/{aid}/policy", json={"edited_arguments": {"x": 1}})
        assert bad.status_code == 422
        cli = CLI(home)
        r = cli("approve", aid, "--edit", json.dumps(denied))
        assert r.returncode == 2 and "never-prod" in r.stdout + r.stderr
        assert "the policy for the edited call: deny" in r.stdout
        ok = dict(approval["arguments"], body="edited body")
        r = cli("approve", aid, "--edit", json.dumps(ok))
        assert r.returncode == 0, r.stderr
        assert "the policy for the edited call: ask" in r.stdout


def test_without_a_server_the_cli_shows_the_edits_decision(cli: CLI, tmp_path: Path) -> None:
    write_config(cli.home)
    (cli.home / "policy.toml").write_text(DENY)
    spec = post_script(tmp_path / "s.json", "https://status.example.com/api/x")
    first = json.loads(cli("run", "post", "-m", spec, "--json", "--no-input").stdout)
    (approval,) = first["approvals"]
    denied = dict(approval["arguments"], url="https://prod.example.com/x")
    r = cli("approve", approval["id"], "--edit", json.dumps(denied))
    assert r.returncode == 2 and "the policy for the edited call: deny" in r.stdout
    assert "never-prod" in r.stdout
