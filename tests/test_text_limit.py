"""One limit on what a person writes to an errand, 50,000 characters, everywhere: the
CLI (``run``, ``tell``, with and without a server), the API (creating, messaging) and
the Python API (``Harness.create`` / ``Harness.tell``). Over it, each says the same
thing -- the limit and the length given -- and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.server import ServerProc, clean_env

from errands.config import load_settings
from errands.errors import UserError
from errands.harness import build
from errands.textlimit import MAX_TEXT

LONG = "a" * 120_000  # (one argument of a command line may be up to 128 KiB)
SAID = "is 120,000 characters; the limit is 50,000"


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "errands", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(home, COLUMNS="2000"),
        stdin=subprocess.DEVNULL,
    )


def refused(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-500:])
    text = r.stderr.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


def test_the_limit_is_50000_characters() -> None:
    assert MAX_TEXT == 50_000
    from errands.server.schemas import MAX_TEXT as API_MAX

    assert API_MAX is MAX_TEXT


def test_the_cli_refuses_text_over_the_limit_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    line = refused(cli(home, "run", LONG, "--model", "scripted:demo", "--no-input"))
    assert f"the errand's text {SAID}" in line
    assert not (home / "errands.sqlite").exists()  # (refused before anything was opened)
    r = cli(home, "demo", "--json")
    assert r.returncode == 0, r.stderr
    [errand] = json.loads(cli(home, "ls", "--json").stdout)
    errand_id = errand["id"]
    before = cli(home, "show", errand_id, "--json").stdout
    line = refused(cli(home, "tell", errand_id, LONG))
    assert f"the message {SAID}" in line
    assert cli(home, "show", errand_id, "--json").stdout == before
    # through a running server: the same line, before the request
    server = ServerProc(home, env=clean_env(home, COLUMNS="2000")).start()
    try:
        line = refused(cli(home, "tell", errand_id, LONG))
        assert f"the message {SAID}" in line
        with server.client() as api:
            # the API: the same limit, the same words
            r = api.post("/api/errands", json={"text": LONG})
            assert r.status_code == 422 and SAID in r.json()["detail"], r.text
            r = api.post(f"/api/errands/{errand_id}/messages", json={"text": LONG})
            assert r.status_code == 422 and SAID in r.json()["detail"], r.text
            r = api.post("/api/errands", json={"text": "b" * 50_001})
            assert r.status_code == 422
            assert "is 50,001 characters; the limit is 50,000" in r.json()["detail"]
            # at the limit: accepted
            r = api.post(f"/api/errands/{errand_id}/messages", json={"text": "c" * 50_000})
            assert r.status_code in (200, 201, 202), r.text
    finally:
        server.stop()


async def test_the_python_api_refuses_text_over_the_limit(home: Path) -> None:
    harness = build(load_settings(home))
    try:
        with pytest.raises(UserError, match="the errand's text is 50,001 characters; the limit"):
            await harness.create("x" * 50_001, model="scripted:demo")
        errand_id = await harness.create("x" * 50_000, model="scripted:demo")
        with pytest.raises(UserError, match=f"the message {SAID}"):
            await harness.tell(errand_id, LONG)
        assert [e.seq for e in await harness.store.read(errand_id)] == [1]
        assert len(await harness.store.list_errands()) == 1
    finally:
        await harness.close()
