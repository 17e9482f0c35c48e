"""The CLI with a server up (it talks HTTP, channel cli) and without (it uses the store);
and what `errands up` says on a machine with no model key."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
from conftest import CLI
from helpers.kit import call, write_script
from helpers.server import ServerProc, Sink, clean_env, wait_for, write_config

OLLAMA = "OPENAI_BASE_URL=http://127.0.0.1:11434/v1"


def _approval(api: httpx.Client) -> str:
    def first() -> str | None:
        pending = api.get("/api/approvals").json()
        return pending[0]["id"] if pending else None

    found: str = wait_for(first)
    return found


def test_cli_decides_through_the_running_server(home: Path, cli: CLI, tmp_path: Path) -> None:
    write_config(home)
    sink = Sink()
    proc = ServerProc(home).start()
    try:
        with proc.client() as api:
            post = call("http_request", method="POST", url=f"{sink.url}/cli", body="hi")
            spec = write_script(
                tmp_path / "s.json",
                {"text": "posting", "tool_calls": [post]},
                {"text": "Sent."},
                {"text": "posting again", "tool_calls": [post]},
                {"text": "Done again."},
            )
            errand_id = api.post("/api/errands", json={"text": "cli", "model": spec}).json()["id"]
            approval_id = _approval(api)

            inbox = cli("inbox", "--json")
            assert inbox.returncode == 0, inbox.stderr
            data = json.loads(inbox.stdout)
            assert data["server"] == proc.url + "/"
            assert [a["id"] for a in data["approvals"]] == [approval_id]
            listed = cli("approvals", "--json")
            assert [a["id"] for a in json.loads(listed.stdout)] == [approval_id]

            approved = cli("approve", approval_id, "--json", USER="ada")
            assert approved.returncode == 0, approved.stderr
            assert json.loads(approved.stdout)["via"] == proc.url + "/"
            again = cli("approve", approval_id)
            assert again.returncode == 2 and "decided already" in again.stderr
            wait_for(lambda: api.get(f"/api/errands/{errand_id}").json()["status"] == "done")
            events = [e["event"] for e in api.get(f"/api/errands/{errand_id}").json()["events"]]
            grant = next(e for e in events if e["type"] == "approval_granted")
            assert (grant["channel"], grant["by"]) == ("cli", "ada")

            told = cli("tell", errand_id[:9], "and once more")
            assert told.returncode == 0, told.stderr
            assert "via the server" in told.stdout
            approval_id = _approval(api)  # the script asks again on the next turn
            denied = cli("deny", approval_id, "--reason", "enough")
            assert denied.returncode == 0 and "via the server" in denied.stdout
        assert proc.stop() == 0
        # no server: the same commands work on the store
        local = cli("inbox", "--json")
        assert json.loads(local.stdout)["server"] is None
        assert "Nothing waits" in cli("approvals").stdout
        # a stale server.json (its process is gone) is ignored
        (home / "server.json").write_text(json.dumps({"url": proc.url, "pid": 2**22 + 12345}))
        assert json.loads(cli("inbox", "--json").stdout)["server"] is None
    finally:
        proc.kill()
        sink.close()


def test_first_run_without_a_model_key_explains_how_to_connect_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = ServerProc(home).start()  # a fresh machine: no config, no key
    try:
        out = proc.out_path.read_text()
        assert f"errands is up: {proc.url}/" in out
        for needed in ("OPENAI_API_KEY", OLLAMA, "openai:llama3.2"):
            assert needed in out
        with proc.client() as browser:
            page = browser.get("/").text
            assert "Connect a model" in page and OLLAMA in page
            assert "scripted:demo" in page
        with proc.client() as api:
            r = api.post("/api/errands", json={"text": "try it", "model": "scripted:demo"})
            errand_id = r.json()["id"]
            wait_for(lambda: api.get(f"/api/errands/{errand_id}").json()["status"] == "done")
    finally:
        proc.kill()
    home2 = tmp_path / "home2"
    ollama = clean_env(home2, OPENAI_BASE_URL="http://127.0.0.1:11434/v1")
    connected = ServerProc(home2, env=ollama).start()
    try:
        assert "OPENAI_API_KEY" not in connected.out_path.read_text()
        with connected.client() as api:
            assert "Connect a model" not in api.get("/").text
    finally:
        connected.kill()


def test_up_refuses_clearly(tmp_path: Path, cli: CLI, home: Path) -> None:
    (home / "errands.toml").write_text('[server]\nallowed_hosts = ["bad host name"]\n')
    r = cli("up", "--port", "0")
    assert r.returncode == 2 and "allowed_hosts" in r.stderr
    (home / "errands.toml").write_text('[notify]\nwebhook_url = "ftp://x"\n')
    r = cli("up", "--port", "0")
    assert r.returncode == 2 and "webhook_url" in r.stderr
    (home / "errands.toml").write_text("")
    (home / "server-token").write_text("x" * 43 + "\n")
    (home / "server-token").chmod(0o644)
    r = cli("up", "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2 and "chmod 600" in r.stderr
    (home / "server-token").unlink()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = cli("up", "--port", str(taken.getsockname()[1]))
    assert r.returncode == 2 and "is in use" in r.stderr
    assert not (home / "server.json").exists()
    assert os.environ.get("ERRANDS_HOME") == str(home)
