"""Upgrades in flight (issue 21, item 4): a real ``errands up`` is stopped with errands
running, waiting for approval, approved while it was down, and sleeping; the next
release (built from this checkout: one more migration, ``approval_requested`` v2 with an
upcaster -- tests/helpers/versions.py) starts on the same home and every errand goes on
exactly where it was: its log kept as it was (the old approval events read through the
upcaster), each approved call made once, the sleeper woken by its timer. Then this
release refuses the newer store in one clear line, and does not change it.

Negative control: a variant of this release whose migration check ignores names it does
not know opens the newer store without a word -- the refusal is that check's doing.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import call, write_script
from helpers.server import ServerProc, Sink, clean_env, post_script, wait_for, write_config
from helpers.versions import NEWER_MIGRATION, build_newer, build_variant, version_env


class Version:
    """One errands version on one home: its CLI, and its server."""

    def __init__(self, home: Path, path: Path | None) -> None:
        self.home = home
        self.path = path
        self.env = version_env(clean_env(home), path)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "errands", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
            stdin=subprocess.DEVNULL,
            cwd=self.home.parent,
        )

    def package(self) -> str:
        found = subprocess.run(
            [sys.executable, "-c", "import errands; print(errands.__file__)"],
            capture_output=True, text=True, env=self.env, cwd=self.home.parent, check=True,
        )  # fmt: skip
        return found.stdout.strip()

    def server(self) -> ServerProc:
        return ServerProc(self.home, env=self.env)


@pytest.fixture
def servers() -> Iterator[list[ServerProc]]:
    started: list[ServerProc] = []
    yield started
    for server in started:
        server.kill()


def _errand(api: Any, text: str, model: str) -> str:
    created = api.post("/api/errands", json={"text": text, "model": model})
    assert created.status_code in (200, 201), created.text
    return str(created.json()["id"])


def _status(api: Any, errand_id: str) -> str:
    return str(api.get(f"/api/errands/{errand_id}").json()["status"])


def _events(version: Version, errand_id: str) -> list[dict[str, Any]]:
    shown = version.cli("show", errand_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return list(json.loads(shown.stdout)["events"])


def _same_but_upcast(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """An event as the old release showed it, and as the new one shows it: the same, an
    approval request apart, which the new release reads through its upcaster."""
    if before["type"] != "approval_requested":
        return before == after
    return after == {**before, "v": 2, "upgraded_from": 1}


@pytest.mark.slow  # (three real servers, a sleeper's timer: ~25 s)
def test_a_newer_release_resumes_every_errand_where_it_was(
    tmp_path: Path, home: Path, sink: Sink, servers: list[ServerProc]
) -> None:
    write_config(home)
    old = Version(home, None)
    new = Version(home, build_newer(tmp_path / "newer"))
    assert new.package().startswith(str(tmp_path / "newer"))

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    waits = post_script(scripts / "w.json", sink.url + "/waiting")
    approved_meanwhile = post_script(scripts / "m.json", sink.url + "/approved-meanwhile")
    sleeps = write_script(
        scripts / "s.json",
        {"text": "Sleeping.", "tool_calls": [call("wait", seconds=6, reason="the upgrade")]},
        {"text": "Awake and done."},
    )
    thinks = write_script(
        scripts / "r.json", {"text": "Thought it through: done."}, latency_ms=5000
    )

    server = old.server().start()
    servers.append(server)
    with server.client() as api:
        ids = {
            "waiting": _errand(api, "post the note", waits),
            "approved": _errand(api, "post the other note", approved_meanwhile),
            "sleeping": _errand(api, "wait a little", sleeps),
            "running": _errand(api, "think", thinks),
        }
        wait_for(lambda: _status(api, ids["waiting"]) == "waiting_approval")
        wait_for(lambda: _status(api, ids["approved"]) == "waiting_approval")
        wait_for(lambda: _status(api, ids["sleeping"]) == "sleeping")
        # (its model takes 5 s: caught while it thinks -- a loaded machine may take a
        # moment to claim it, so wait for it rather than assume it)
        wait_for(lambda: _status(api, ids["running"]) == "running")
    assert server.stop() == 0  # SIGTERM: the upgrade's stop

    # while it is down, a person approves one call (this release's CLI, on the store)
    (pending,) = [
        a
        for a in json.loads(old.cli("approvals", "--json").stdout)
        if a["errand_id"] == ids["approved"]
    ]
    decided = old.cli("approve", pending["id"], "--json")
    assert decided.returncode == 0, decided.stderr
    before = {name: _events(old, errand_id) for name, errand_id in ids.items()}
    assert before["running"][-1]["type"] == "model_requested"  # stopped mid-call
    assert before["approved"][-1]["type"] == "approval_granted"
    assert not sink.effects

    server = new.server().start()
    servers.append(server)
    with closing(sqlite3.connect(home / "errands.sqlite")) as db:
        applied = [r[0] for r in db.execute("SELECT name FROM migrations")]
    assert applied[-1] == NEWER_MIGRATION
    with server.client() as api:
        # every log is as it was (the old approval requests read through the upcaster)
        for name, errand_id in ids.items():
            now = _events(new, errand_id)
            assert len(now) >= len(before[name])
            for old_event, new_event in zip(before[name], now, strict=False):
                assert _same_but_upcast(old_event, new_event), (name, old_event, new_event)
        upcast = [e for e in _events(new, ids["waiting"]) if e["type"] == "approval_requested"]
        assert upcast and all(e["v"] == 2 and e["upgraded_from"] == 1 for e in upcast)
        assert _status(api, ids["waiting"]) == "waiting_approval"  # still asks
        (waiting,) = [
            a for a in api.get("/api/approvals").json() if a["errand_id"] == ids["waiting"]
        ]
        ok = api.post(
            f"/api/approvals/{waiting['id']}/approve", json={"args_hash": waiting["args_hash"]}
        )
        assert ok.status_code == 200, ok.text
        for errand_id in ids.values():
            wait_for(lambda e=errand_id: _status(api, e) == "done", timeout=60)
    assert sorted(e["path"] for e in sink.effects) == ["/approved-meanwhile", "/waiting"]
    assert len(sink.requests) == 2  # each approved call made once, none again
    slept = _events(new, ids["sleeping"])
    assert any("woken: the timer set for" in json.dumps(e) for e in slept)
    assert server.stop() == 0

    # this release, on the newer store: one clear line, nothing changed
    files = (home / "errands.sqlite").read_bytes()
    for args in (["ls"], ["show", ids["waiting"]], ["gc", "--dry-run"]):
        refused = old.cli(*args)
        assert refused.returncode != 0, (args, refused.stdout)
        assert "written by a newer errands" in refused.stderr, refused.stderr
        assert NEWER_MIGRATION in refused.stderr and "upgrade errands" in refused.stderr
        assert "Traceback" not in refused.stderr
    with pytest.raises(RuntimeError, match="written by a newer errands"):
        servers.append(old.server())
        servers[-1].start()
    assert (home / "errands.sqlite").read_bytes() == files

    # the control: this release without the check of migration names opens it silently
    lax = Version(
        home,
        build_variant(
            tmp_path / "lax",
            [
                (
                    "store/migrations.py",
                    "    if unknown or version > len(known):",
                    "    if False:  # (the negative control: no check)",
                )
            ],
        ),
    )
    assert lax.cli("ls").returncode == 0


def test_an_event_from_a_newer_release_is_refused_in_one_line(tmp_path: Path, home: Path) -> None:
    """A newer release may bump an event's version without a migration: this release
    then meets the event itself, and refuses it the same way."""
    this = Version(home, None)
    ran = this.cli("demo", "--json")
    assert ran.returncode == 0, ran.stderr
    errand_id = json.loads(ran.stdout)["id"]
    with closing(sqlite3.connect(home / "errands.sqlite")) as db:
        db.execute(
            "UPDATE events SET body = replace(body, '\"v\":1,', '\"v\":7,')"
            " WHERE type = 'tool_intent'"
        )
        db.commit()
    (home / "errands.toml").write_text("[retention]\nkeep_days = 0.000001\n")
    shown = this.cli("show", errand_id)
    assert shown.returncode == 2, shown.stdout
    assert "written by a newer errands: event tool_intent v7" in shown.stderr
    assert "bug" not in shown.stderr and "Traceback" not in shown.stderr
    collected = this.cli("gc", "--json")  # compaction leaves it alone, and says why
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["refused"] == 1
    # the control: without the version check, the newer event is read as if it were old
    lax = Version(
        home,
        build_variant(
            tmp_path / "lax",
            [("core/events.py", "    if version > cls.VERSION:\n", "    if False:\n")],
        ),
    )
    assert lax.cli("show", errand_id).returncode == 0
