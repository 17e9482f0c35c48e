"""``errands workers``: the processes that run errands from a PostgreSQL store, from the
heartbeat each one's lease renewal writes (errands.store.postgres.workers); and the
inbox naming the worker that runs an errand. Real workers on a real server."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from helpers.postgres import server

from errands.config import load_settings
from errands.core.states import ErrandView
from errands.engine.operations import create_errand
from errands.server.inbox import run_by
from errands.store.postgres import PostgresStore
from errands.store.postgres.workers import FORGET_SECONDS, beat
from errands.store.sync import BlockingStore

LEASE = 2.0


@pytest.fixture
def url() -> Iterator[str]:
    yield server().url(server().new_database())


def _listed(cli: Any, url: str) -> dict[str, dict[str, Any]]:
    done = cli("workers", "--json", ERRANDS_STORE_URL=url)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return {w["name"]: w for w in json.loads(done.stdout)}


def _until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:  # (the processes this test started, by their handles)
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_workers_lists_live_workers_their_errands_and_the_dead(cli: Any, url: str) -> None:
    (cli.home / "errands.toml").write_text(f"[store]\nlease_seconds = {LEASE}\n")
    slow = cli.home / "slow.json"
    slow.write_text(json.dumps({"name": "slow", "latency_ms": 30000, "turns": [{"text": "ok"}]}))
    store = BlockingStore(make=lambda: PostgresStore(url))
    procs = [
        cli.popen("worker", "--name", name, ERRANDS_STORE_URL=url) for name in ("w1", "w2", "w3")
    ]
    try:
        listed = _until(lambda: len(_listed(cli, url)) == 3 and _listed(cli, url))
        assert {w["pid"] for w in listed.values()} == {p.pid for p in procs}
        assert all(w["live"] and w["errands"] == [] for w in listed.values()), listed
        eid = store.run(
            create_errand(store.store, load_settings(cli.home), "slow", model=f"scripted:{slow}")
        )
        holder = _until(lambda: store.lease_holder(eid))[0]
        name = holder.rsplit(":", 1)[1]
        time.sleep(1.0)
        held = _listed(cli, url)[name]["errands"]
        assert [h["id"] for h in held] == [eid]
        assert 0.9 < held[0]["lease_age_seconds"] < 30, held
        view = store.view(eid)
        page = asyncio.run(_run_by(url, view))
        assert page is not None and page.startswith(f"{name} on ") and "(pid " in page, page
        # one is killed, one stops cleanly
        others = [p for p, n in zip(procs, ("w1", "w2", "w3"), strict=True) if n != name]
        others[0].send_signal(signal.SIGKILL)
        others[1].terminate()
        others[1].wait(timeout=20)
        killed = next(n for p, n in zip(procs, ("w1", "w2", "w3"), strict=True) if p is others[0])
        stopped = next(n for p, n in zip(procs, ("w1", "w2", "w3"), strict=True) if p is others[1])
        after = _listed(cli, url)
        assert stopped not in after, after  # (a clean stop leaves the list)
        _until(lambda: not _listed(cli, url)[killed]["live"], timeout=3 * LEASE + 5)
        assert _listed(cli, url)[name]["live"]  # (the one that beats stays live)
        table = cli("workers", ERRANDS_STORE_URL=url).stdout
        assert "dead" in table and killed in table and eid in table, table
    finally:
        _stop(procs)
        store.close()


async def _run_by(url: str, view: ErrandView) -> str | None:
    store = PostgresStore(url)
    try:
        return await run_by(store, view)
    finally:
        await store.close()


def test_a_worker_dead_long_enough_is_forgotten(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        beat(conn, "h:1:old", 1_000.0, 0.0, LEASE)
        beat(conn, "h:2:new", 1_000.0 + FORGET_SECONDS - 1, 0.0, LEASE)
        names = {r[0] for r in conn.execute("SELECT owner FROM workers").fetchall()}
        assert names == {"h:1:old", "h:2:new"}  # (not yet: control)
        beat(conn, "h:2:new", 1_000.0 + FORGET_SECONDS + 1, 0.0, LEASE)
        names = {r[0] for r in conn.execute("SELECT owner FROM workers").fetchall()}
        assert names == {"h:2:new"}


def test_workers_on_a_sqlite_store_is_one_clear_error(cli: Any) -> None:
    done = cli("workers")
    assert done.returncode != 0 and "PostgreSQL" in done.stderr and "Traceback" not in done.stderr


def test_doctor_says_the_policy_version_and_the_workers(cli: Any, url: str) -> None:
    def notes() -> str:
        done = cli("doctor", "--json", ERRANDS_STORE_URL=url)
        (found,) = [
            c for c in json.loads(done.stdout)["checks"] if c["subject"].startswith("store")
        ]
        return " ".join(found["notes"])

    assert cli("run", "--model", "scripted:demo", "hi", ERRANDS_STORE_URL=url).returncode == 0
    said = notes()
    assert "policy version 1 in force (by seed" in said, said
    assert re.search(r"\d+ live workers, \d+ dead lately", said), said
    worker = cli.popen("worker", ERRANDS_STORE_URL=url)
    try:  # (a heartbeat of the run above, if any, is live for one lease time at most)
        _until(lambda: "1 live workers" in notes(), timeout=60)
    finally:
        _stop([worker])
