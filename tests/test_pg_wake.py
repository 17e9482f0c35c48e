"""Wake-ups across processes on the PostgreSQL store: ``LISTEN/NOTIFY``, polling under it.

A person's decision commits ``NOTIFY`` in its own transaction; a worker listening on its
dedicated connection looks for work at once, instead of at its next poll. The poll
stays, slower, as the net under a lost notification -- and while the listening
connection is down, the worker polls as often as it did without one.

Each test runs a real worker (a runner serving as ``errands worker`` does, through
:func:`errands.server.worker.serve_through`) on one store, and the person on another
store (another session, as another process or host would be), on a real server. The
negative controls are :class:`Wake` subclasses the tests inject: one whose
notifications never arrive, one that never reconnects.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.postgres import server

from errands.config import Settings, load_settings
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.harness import Harness, build
from errands.server.worker import Wake, serve_through
from errands.store.protocol import Listening, Store

# one POST (asks for approval), then done; the POST goes to a closed port: it fails fast
SCRIPT = {
    "name": "ask",
    "turns": [
        {
            "text": "posting",
            "tool_calls": [
                {
                    "name": "http_request",
                    "arguments": {"method": "POST", "url": "http://127.0.0.1:9/x", "body": "b"},
                }
            ],
        },
        {"text": "done"},
    ],
}
SAFETY = 3.0  # the tests' safety poll: a wake that waited for it is plain to see


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    found = server().url(server().new_database())
    monkeypatch.setenv("ERRANDS_STORE_URL", found)
    yield found


@pytest.fixture
def script(home: Path) -> str:
    path = home / "ask.json"
    path.write_text(json.dumps(SCRIPT))
    return f"scripted:{path}"


class SlowSafety(Wake):
    safety_poll = SAFETY


class Deaf(SlowSafety):
    """Negative control: a worker that does not LISTEN (but polls as if it did)."""

    def listen(self, store: Store) -> Listening | None:
        return None

    @property
    def connected(self) -> bool:
        return True


class Worker:
    """A runner serving on this loop as ``errands worker`` does (``wake``: how it waits)."""

    def __init__(self, settings: Settings, wake: type[Wake]) -> None:
        self.harness = build(settings)
        self.harness.store.share_writes()
        self.runner = self.harness.runner()
        self.stop = asyncio.Event()
        self.wake: Wake | None = None

        def made(store: Store) -> Wake:
            self.wake = wake(store)
            return self.wake

        self.task = asyncio.create_task(serve_through(self.runner, self.stop, 0.1, wake=made))

    async def started(self) -> Wake:
        while self.wake is None:
            await asyncio.sleep(0.01)
        return self.wake

    async def close(self) -> None:
        self.stop.set()
        await self.task
        await self.harness.close()


@pytest.fixture
async def person(url: str, home: Path) -> AsyncIterator[Harness]:
    harness = build(load_settings(home))
    harness.store.share_writes(favoured=True)
    yield harness
    await harness.close()


async def _until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def _pending(person: Harness, eid: str) -> str:
    async def waiting() -> str | None:
        view = await person.store.view(eid)
        if view.state is ErrandState.waiting_approval and view.pending:
            return next(iter(view.pending.values())).id
        return None

    found: str = await _until(waiting)
    return found


async def _resumed_after(person: Harness, eid: str, granted_seq: int) -> float:
    """Seconds between the decision's commit and the worker's next event."""

    async def next_event() -> float | None:
        events = await person.store.read(eid, granted_seq)
        return events[0].event.at if events else None

    at: float = await _until(next_event)
    return at


async def decision_latencies(
    person: Harness, script: str, settings: Settings, rounds: int, settle: float = 0.0
) -> list[float]:
    """Make *rounds* errands ask for approval, approve each, and time the worker's resume."""
    out = []
    for i in range(rounds):
        eid = await create_errand(person.store, settings, f"post {i}", model=script)
        approval = await _pending(person, eid)
        await asyncio.sleep(settle)
        began = time.time()
        await person.approvals.approve(approval, by="ann", channel="cli")
        log = await person.store.read(eid)
        seq = max(s.seq for s in log if s.event.type == "approval_granted")
        out.append(await _resumed_after(person, eid, seq) - began)
    return out


async def _latencies(
    person: Harness, script: str, home: Path, wake: type[Wake], rounds: int
) -> list[float]:
    settings = load_settings(home)
    worker = Worker(settings, wake)
    try:
        # (a pause after the card appears: the worker is idle, waiting, when it comes)
        return await decision_latencies(person, script, settings, rounds, settle=0.2)
    finally:
        await worker.close()


async def test_a_decision_wakes_a_listening_worker_at_once(
    person: Harness, script: str, home: Path
) -> None:
    lat = await _latencies(person, script, home, SlowSafety, 5)
    assert max(lat) < 0.5, lat  # never the safety poll (3 s)


async def test_control_a_worker_that_does_not_listen_wakes_at_its_poll(
    person: Harness, script: str, home: Path
) -> None:
    lat = await _latencies(person, script, home, Deaf, 4)
    # uniform over the 3 s poll: a mean under 0.3 s has odds of about 1 in 1,000
    assert statistics.mean(lat) > 0.3, lat


class NoReconnect(SlowSafety):
    """Its listening connection, once lost, never comes back (the server's refused)."""

    def listen(self, store: Store) -> Listening | None:
        found: Any = super().listen(store)
        assert found is not None and found.wait_connected(10)
        found.url = "postgresql:///none?host=/nonexistent&connect_timeout=1"
        return found


class NoFallback(NoReconnect):
    """Negative control: polls at the safety interval even with its connection lost."""

    @property
    def connected(self) -> bool:
        return True


async def _after_lost_listener(
    url: str, person: Harness, script: str, home: Path, wake: type[Wake]
) -> list[float]:
    settings = load_settings(home)
    worker = Worker(settings, wake)
    try:
        listening: Any = (await worker.started()).listening
        assert await asyncio.to_thread(listening.wait_connected, 10)
        with psycopg.connect(url, autocommit=True) as conn:  # the listener's session dies
            conn.execute("SELECT pg_terminate_backend(%s)", (listening.backend_pid,))
        await _until(lambda: _false_soon(listening))
        return await decision_latencies(person, script, settings, 3, settle=0.2)
    finally:
        await worker.close()


async def _false_soon(listening: Any) -> bool:
    return not listening.connected


async def test_a_lost_listener_falls_back_to_polling(
    url: str, person: Harness, script: str, home: Path
) -> None:
    lat = await _after_lost_listener(url, person, script, home, NoReconnect)
    assert max(lat) < 0.6, lat  # the fast poll (0.1 s), not the safety poll (3 s)


async def test_control_without_the_fallback_a_lost_notification_waits_for_the_safety_poll(
    url: str, person: Harness, script: str, home: Path
) -> None:
    lat = await _after_lost_listener(url, person, script, home, NoFallback)
    assert statistics.mean(lat) > 0.3, lat  # (it still came: the safety poll)
    assert max(lat) < SAFETY + 1.0, lat


async def test_a_listener_reconnects_and_looks_for_what_it_missed(
    url: str, person: Harness, script: str, home: Path
) -> None:
    settings = load_settings(home)
    worker = Worker(settings, SlowSafety)
    try:
        listening: Any = (await worker.started()).listening
        assert await asyncio.to_thread(listening.wait_connected, 10)
        first = listening.backend_pid
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        await _until(lambda: _reconnected(listening, first), timeout=10)
        assert listening.connections == 2
        lat = await decision_latencies(person, script, settings, 2, settle=0.2)
        assert max(lat) < 0.5, lat  # listening again: at once
    finally:
        await worker.close()


async def _reconnected(listening: Any, first: int) -> bool:
    return bool(listening.connected and listening.backend_pid != first)


def test_a_worker_process_resumes_at_once_after_a_decision(
    cli: Any, url: str, script: str, home: Path
) -> None:
    """``errands worker`` (a real process) resumes an errand within a fraction of its
    safety poll after a decision another process made."""

    async def run() -> list[float]:
        person = build(load_settings(home))
        try:
            return await decision_latencies(person, script, load_settings(home), 5, settle=0.3)
        finally:
            await person.close()

    worker = cli.popen("worker", ERRANDS_STORE_URL=url)
    try:
        lat = asyncio.run(run())
        assert worker.poll() is None, worker.communicate()[1]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
    print("decision -> worker resumed, s:", [round(x, 3) for x in lat])
    assert max(lat) < 0.5, lat


WAIT = {
    "name": "wait",
    "turns": [
        {"tool_calls": [{"name": "wait", "arguments": {"seconds": 2}}]},
        {"text": "done"},
    ],
}


class NoTimers(Wake):
    """Negative control: notified of timers, but ignores them (waits for its poll)."""

    safety_poll = 10.0

    def _note(self, payload: str) -> None:
        if not payload.startswith("timer "):
            super()._note(payload)


class TenSeconds(Wake):
    safety_poll = 10.0


async def _timer_lateness(person: Harness, home: Path, wake: type[Wake]) -> float:
    """Seconds between an errand's timer coming due and the worker resuming it."""
    path = home / "wait.json"
    path.write_text(json.dumps(WAIT))
    settings = load_settings(home)
    worker = Worker(settings, wake)
    try:
        await worker.started()
        eid = await create_errand(person.store, settings, "wait", model=f"scripted:{path}")

        async def slept() -> Any:
            log = await person.store.read(eid)
            found = [s for s in log if s.event.type == "sleeping"]
            after = [s for s in log if found and s.seq > found[0].seq]
            return (found[0], after[0]) if after else None

        sleeping, resumed = await _until(slept, timeout=40)
        return float(resumed.event.at - sleeping.event.wake_at)
    finally:
        await worker.close()


async def test_a_timer_wakes_a_listening_worker_as_it_comes_due(
    person: Harness, home: Path
) -> None:
    late = await _timer_lateness(person, home, TenSeconds)
    assert -0.05 < late < 0.5, late  # (its own NOTIFY told it when; the poll is 10 s)


async def test_control_a_worker_that_ignores_timers_wakes_at_its_poll(
    person: Harness, home: Path
) -> None:
    late = await _timer_lateness(person, home, NoTimers)
    assert late > 3.0, late
