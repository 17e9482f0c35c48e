"""``GET /healthz`` and ``GET /readyz``: liveness and readiness, without the token on loopback.

A real ``errands up`` (with ``require_token``) answers both to a client on 127.0.0.1 that
sends no token, while its API still refuses that client; in process, over the real app
with a real SQLite store and a real runner thread, ``/readyz`` says 503 with the reason
when the runner has died or the store cannot write (its writer connection made read-only
by SQLite's ``query_only``), and 200 again once the store writes. Negative controls: a
client that is not on loopback, or whose request a proxy forwarded, needs the token; a
server that takes the probe's word for readiness without writing (a store without
``probe``) would say ready while the store is read-only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.kit import harness_for, script
from helpers.server import running, write_config

from errands.config import Settings
from errands.engine.runner import Runner
from errands.harness import Harness
from errands.policy.hook import AllowAll
from errands.server.app import create_app
from errands.server.auth import Security
from errands.server.context import ServerContext
from errands.server.hub import Hub
from errands.server.idempotency import IdempotencyStore
from errands.server.worker import RunnerThread
from errands.store.sqlite import SQLiteStore

BASE = "http://127.0.0.1:7878"


def test_a_real_server_answers_probes_on_loopback_without_its_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, "[server]\nrequire_token = true")
    with running(home) as server, httpx.Client(base_url=server.url, timeout=10) as bare:
        assert server.token is not None
        assert bare.get("/api/errands").status_code == 401  # the API still needs the token
        live = bare.get("/healthz")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        ready = bare.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready"}
        # forwarded by a proxy: from someone who may not be on this machine
        proxied = bare.get("/readyz", headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status_code == 401


# -- in process: the real app, a real store and runner thread, each condition ----------------


def _context(harness: Harness, security: Security, runner: RunnerThread | None) -> ServerContext:
    return ServerContext(
        harness=harness,
        hub=Hub(harness.store),
        security=security,
        idempotency=IdempotencyStore(harness.settings.home / "server.sqlite"),
        base_url=BASE,
        runner_down=runner.why_down if runner is not None else None,
    )


async def _get(ctx: ServerContext, path: str, client: tuple[str, int] = ("127.0.0.1", 5000)) -> Any:
    transport = httpx.ASGITransport(app=create_app(ctx), client=client)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        return await http.get(path)


@pytest.fixture
async def sqlite_store(settings: Settings) -> AsyncIterator[_Switchable]:
    store = _Switchable(settings.db_path)
    yield store
    await store.close()


@pytest.fixture
def harness(sqlite_store: _Switchable, settings: Settings) -> Harness:
    return harness_for(sqlite_store, settings, model=script({"text": "done"}), policy=AllowAll())


class _Switchable(SQLiteStore):
    """A real SQLite store whose writer connection the test makes read-only (SQLite's
    ``query_only``: every write is refused with SQLITE_READONLY), or writable again."""

    read_only = False

    def _begin(self) -> sqlite3.Connection:
        self._wconn.execute(f"PRAGMA query_only = {'ON' if self.read_only else 'OFF'}")
        return super()._begin()


async def test_readyz_follows_the_runner_thread(harness: Harness) -> None:
    runner = RunnerThread(harness.runner, poll=0.05)
    ctx = _context(harness, Security(host="127.0.0.1", port=7878), runner)
    try:
        r = await _get(ctx, "/readyz")
        assert r.status_code == 503 and r.json()["reason"] == "the runner has not started"
        runner.start()
        r = await _get(ctx, "/readyz")
        assert r.status_code == 200, r.text
        await runner.stop()
        r = await _get(ctx, "/readyz")
        assert r.status_code == 503 and r.json() == {
            "status": "not ready",
            "reason": "the runner has stopped",
        }
        assert (await _get(ctx, "/healthz")).status_code == 200  # the process is still up
    finally:
        await runner.stop()
        ctx.idempotency.close()


class _Broken(Runner):
    async def serve(self, stop: asyncio.Event, poll: float = 0.5, **_: Any) -> None:
        raise RuntimeError("a bug in the runner")


async def test_readyz_says_503_when_the_runner_died(harness: Harness) -> None:
    def broken() -> Runner:
        made = harness.runner()
        made.__class__ = _Broken
        return made

    runner = RunnerThread(broken, poll=0.05)
    ctx = _context(harness, Security(host="127.0.0.1", port=7878), runner)
    try:
        runner.start()
        await asyncio.to_thread(runner._thread.join, 5)
        r = await _get(ctx, "/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["reason"] == "the runner stopped with an error: RuntimeError"
        assert r.headers["retry-after"] == "5"
    finally:
        await runner.stop()
        ctx.idempotency.close()


async def test_readyz_says_503_while_the_store_cannot_write(
    harness: Harness, sqlite_store: _Switchable
) -> None:
    ctx = _context(harness, Security(host="127.0.0.1", port=7878), None)
    try:
        assert (await _get(ctx, "/readyz")).status_code == 200
        sqlite_store.read_only = True
        r = await _get(ctx, "/readyz")
        assert r.status_code == 503, r.text
        reason = r.json()["reason"]
        assert reason.startswith("the store cannot write"), reason
        assert (await _get(ctx, "/healthz")).status_code == 200
        sqlite_store.read_only = False
        assert (await _get(ctx, "/readyz")).status_code == 200
    finally:
        ctx.idempotency.close()


class _NoProbe(_Switchable):
    """A store the readiness check cannot write through (what /readyz would be without
    its write probe: the process's word)."""

    async def probe(self) -> None:  # (writes nothing: ready on the process's word)
        return None


async def test_negative_control_without_the_write_probe_a_read_only_store_looks_ready(
    settings: Settings,
) -> None:
    store = _NoProbe(settings.db_path)
    harness = harness_for(store, settings, model=script({"text": "done"}), policy=AllowAll())
    ctx = _context(harness, Security(host="127.0.0.1", port=7878), None)
    try:
        store.read_only = True
        assert (await _get(ctx, "/readyz")).status_code == 200
    finally:
        ctx.idempotency.close()
        await store.close()


@pytest.mark.parametrize(
    ("client", "headers", "status"),
    [
        (("127.0.0.1", 5000), {}, 200),
        (("::1", 5000), {}, 200),
        (("10.1.2.3", 5000), {}, 401),  # not on this machine: like any path
        (("127.0.0.1", 5000), {"Forwarded": "for=203.0.113.9"}, 401),  # via a proxy
    ],
)
async def test_probes_need_the_token_unless_from_loopback(
    harness: Harness, client: tuple[str, int], headers: dict[str, str], status: int
) -> None:
    security = Security(host="127.0.0.1", port=7878, token="s3cret-token", allowed_hosts=())
    ctx = _context(harness, security, None)
    try:
        transport = httpx.ASGITransport(app=create_app(ctx), client=client)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            for path in ("/healthz", "/readyz"):
                r = await http.get(path, headers=headers)
                assert r.status_code == status, (path, r.text)
            assert (await http.get("/api/errands", headers=headers)).status_code == 401
            bearer = {**headers, "Authorization": "Bearer s3cret-token"}
            assert (await http.get("/readyz", headers=bearer)).status_code == 200
    finally:
        ctx.idempotency.close()
