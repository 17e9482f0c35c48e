"""The real `errands` command, in subprocesses: end to end, bad input, resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from conftest import CLI
from helpers.kit import call, write_script


def test_demo_runs_end_to_end_and_lists(cli: CLI, home: Path) -> None:
    r = cli("demo")
    assert r.returncode == 0, r.stderr
    assert "shopping-list.md" in r.stdout and "done" in r.stdout
    listed = json.loads(cli("ls", "--json").stdout)
    assert len(listed) == 1
    assert {"id", "status", "title", "created_at"} <= listed[0].keys()
    assert listed[0]["status"] == "done"
    eid = listed[0]["id"]
    shown = json.loads(cli("show", eid[:6], "--json").stdout)
    assert shown["id"] == eid and shown["status"] == "done"
    assert shown["events"][0]["type"] == "errand_created"
    assert (Path(shown["workspace"]) / "shopping-list.md").read_text().startswith("# Shopping list")
    assert "Shopping list" in cli("show", eid).stdout


def test_run_json_has_id_status_result_usage(cli: CLI) -> None:
    r = cli("run", "make the list", "--model", "scripted:demo", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "done" and out["result"].startswith("Done:")
    assert out["usage"]["input_tokens"] > 0 and out["id"].startswith("e")


def _one_clear_line(r: object) -> str:
    stderr = r.stderr  # type: ignore[attr-defined]
    assert r.returncode == 2, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    return str(stderr)


def test_bad_input_is_one_clear_line_and_changes_nothing(cli: CLI, home: Path) -> None:
    assert "no errand" in _one_clear_line(cli("show", "enothere"))
    assert "bad model" in _one_clear_line(cli("run", "x", "--model", "nocolon"))
    assert "unknown model provider" in _one_clear_line(cli("run", "x", "--model", "zzz:y"))
    assert "/" in _one_clear_line(cli("run", "x", "--model", "scripted:demo", "--workspace", "/"))
    assert "no errand" in _one_clear_line(cli("resume", "enothere"))
    assert "no errand" in _one_clear_line(cli("cancel", "enothere"))
    assert json.loads(cli("ls", "--json").stdout) == []
    (home / "errands.toml").write_text("default_model = [unclosed\n")
    assert "errands.toml" in _one_clear_line(cli("ls"))
    (home / "errands.toml").write_text('[limits]\nmax_steps = "many"\n')
    assert "limits.max_steps" in _one_clear_line(cli("ls"))
    (home / "errands.toml").unlink()
    assert json.loads(cli("ls", "--json").stdout) == []


def test_resume_after_sigkill_from_the_cli(cli: CLI, tmp_path: Path) -> None:
    spec = write_script(
        tmp_path / "slow.json",
        *[
            {
                "text": f"step {i}",
                "tool_calls": [call("write_file", path=f"f{i}.txt", content=str(i))],
            }
            for i in range(6)
        ],
        {"text": "all six files written"},
        latency_ms=300,
    )
    proc = cli.popen("run", "write six files", "--model", spec, "--no-input")
    deadline = time.monotonic() + 60  # (a loaded machine starts the process slowly)
    while not list((cli.home / "workspaces").glob("*/f1.txt")) and time.monotonic() < deadline:
        time.sleep(0.02)  # killed once its second file is written: mid-run, whatever the load
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    (errand,) = json.loads(cli("ls", "--json").stdout)
    assert errand["status"] in ("running", "queued")
    r = cli("resume", errand["id"], "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "done" and out["result"] == "all six files written"
    events = json.loads(cli("show", errand["id"], "--json").stdout)["events"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    responses = [e for e in events if e["type"] == "model_responded"]
    assert len(responses) == 7  # each turn asked once, across both processes
    results = [e for e in events if e["type"] == "tool_result"]
    assert len(results) == 6 and all(r["ok"] for r in results)


def test_approval_flow_from_the_cli(cli: CLI, tmp_path: Path) -> None:
    spec = write_script(
        tmp_path / "post.json",
        {
            "text": "posting",
            "tool_calls": [
                call(
                    "http_request", method="POST", url="https://hooks.example.test/x", body="hello"
                )
            ],
        },
        {"text": "finished"},
    )
    r = cli("run", "post it", "--model", spec)
    assert r.returncode == 3, r.stderr  # no terminal: left waiting
    assert "waiting for your approval" in r.stderr
    (pending,) = json.loads(cli("approvals", "--json").stdout)
    assert pending["tool"] == "http_request" and pending["effect"] == "external"
    assert "POST https://hooks.example.test/x" in pending["preview"]
    assert "hello" in cli("approvals").stdout
    r = cli("approve", pending["id"], "--edit", "{not json")
    assert r.returncode == 2 and "JSON" in r.stderr
    r = cli("deny", pending["id"], "--reason", "not that hook")
    assert r.returncode == 0, r.stderr
    assert cli("deny", pending["id"], "--reason", "again").returncode == 2  # replay refused
    r = cli("resume", pending["errand_id"], "--json")
    out = json.loads(r.stdout)
    assert out["status"] == "done"
    events = json.loads(cli("show", pending["errand_id"], "--json").stdout)["events"]
    denied = [e for e in events if e["type"] == "tool_result"]
    assert denied[0]["error_kind"] == "denied" and "not that hook" in denied[0]["content"]["text"]


def test_policy_explain(cli: CLI) -> None:
    r = cli("policy", "explain", "http_request", '{"method": "POST", "url": "https://x.test/"}')
    assert r.returncode == 0 and "ask" in r.stdout and "effects.external" in r.stdout
    r = cli(
        "policy", "explain", "write_file", '{"path": "../../etc/passwd", "content": "x"}', "--json"
    )
    assert json.loads(r.stdout)["decision"] == "deny"
    assert json.loads(r.stdout)["rule"] == "outside-workspace"
    assert cli("policy", "explain", "nope", "{}").returncode == 2
