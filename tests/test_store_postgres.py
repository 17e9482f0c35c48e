"""What the PostgreSQL store guarantees beyond one process: several stores (processes,
hosts) on one database. The protocol suites (tests/test_store_protocol.py, the state
machines of tests/test_store_properties.py) run on it too, through tests/backends.py;
these are the races they cannot show, each made deterministic by holding one store's
commit back (its batch written, not committed) while the other acts.

Each guarantee has its negative control: the same race with the guard taken out of a
subclass, which must let the bad outcome through.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.postgres import server
from test_store_protocol import _created, _note

from errands.clock import ReadingClock
from errands.core import events as ev
from errands.costs import spend as money
from errands.errors import ConfigError, LeaseLost
from errands.store.base import BaseStore
from errands.store.postgres import PostgresStore
from errands.store.writer import Tx


class Held(PostgresStore):
    """A store whose next commit waits (its batch written, locks held) until released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_next = False
        self.holding = threading.Event()
        self.go_on = threading.Event()

    def _commit(self, conn: psycopg.Connection[Any]) -> None:
        if self.hold_next:
            self.hold_next = False
            self.holding.set()
            self.go_on.wait(30)
        super()._commit(conn)


class UnfencedHeld(Held):
    """Control: the lease checked as the writer last knew it -- its cache, or a plain
    read that does not hold the row until the commit."""

    def _written_elsewhere(self, conn: psycopg.Connection[Any]) -> bool:
        self._batch_owned = []
        return super()._written_elsewhere(conn)

    def _lease_owner(self, tx: Tx, errand_id: str) -> str | None:
        row = tx.conn.execute("SELECT owner FROM leases WHERE errand_id = %s", (errand_id,))
        found = row.fetchone()
        return None if found is None else str(found[0])

    def _check_lease(self, tx: Tx, errand_id: str, owner: str) -> None:
        BaseStore._check_lease(self, tx, errand_id, owner)


class UnlockedHeld(Held):
    """Control: admission without serialising the check and the hold per cap."""

    def _admit(
        self, tx: Tx, hold: str, caps: Sequence[money.Cap], amount: int, ttl: float
    ) -> money.CapReached | None:
        return BaseStore._admit(self, tx, hold, caps, amount, ttl)


class Now:
    def __init__(self) -> None:
        self.t = 1_000.0


@pytest.fixture
async def url() -> AsyncIterator[str]:
    yield server().url(server().new_database())


async def _wait(event: threading.Event) -> None:
    for _ in range(300):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the held store never reached its commit")


async def _takeover_during_write(url: str, kind: type[Held]) -> tuple[bool, list[str]]:
    """A (*kind*) holds an expired lease and appends; while its batch waits to commit,
    B takes the lease. Returns (B had the lease before A's write committed, the log's
    notes in order)."""
    now = Now()
    a = kind(url, clock=ReadingClock(lambda: now.t))
    b = PostgresStore(url, clock=ReadingClock(lambda: now.t))
    try:
        await a.create("e1", _created())
        assert await a.acquire("e1", "A", ttl=5)
        now.t += 10  # A's lease has expired: anyone may take it
        a.hold_next = True
        write = asyncio.ensure_future(a.append("e1", [_note("from A")], owner="A"))
        await _wait(a.holding)
        take = asyncio.ensure_future(b.acquire("e1", "B", ttl=5))
        await asyncio.sleep(0.5)
        taken_first = take.done() and take.result()
        a.go_on.set()
        await write
        assert await take, "B takes the lease once A has committed"
        with pytest.raises(LeaseLost):  # and A's next write is refused
            await a.append("e1", [_note("late from A")], owner="A")
        notes = [
            s.event.content.text for s in await b.read("e1") if isinstance(s.event, ev.ToolResult)
        ]
        return bool(taken_first), notes
    finally:
        a.go_on.set()
        await a.close()
        await b.close()


async def test_a_lease_cannot_change_hands_under_a_write_in_flight(url: str) -> None:
    """Fencing: the append's transaction holds the lease row (FOR SHARE) to its commit;
    B's takeover waits for it, so no write of A's lands after B owns the errand."""
    taken_first, notes = await _takeover_during_write(url, Held)
    assert not taken_first
    assert notes == ["from A"]


async def test_control_without_the_row_lock_a_write_lands_under_the_new_owner(url: str) -> None:
    taken_first, notes = await _takeover_during_write(url, UnfencedHeld)
    assert taken_first, "without the lock, B took the lease while A's write was in flight"
    assert notes == ["from A"]  # ... and A's write committed after: a fenced-out write


async def _two_reservations(url: str, kind: type[Held]) -> list[bool]:
    """Two processes reserve $0.6 each against a $1 daily budget at once (A's reservation
    written, not committed, when B asks): which were admitted."""
    a = kind(url)
    b = PostgresStore(url)
    try:
        await a.create("e1", _created("one"))
        await a.create("e2", _created("two"))
        a.hold_next = True
        first = asyncio.ensure_future(a.reserve("e1", 1, 0.6, daily_usd=1.0, ttl=60))
        await _wait(a.holding)
        second = asyncio.ensure_future(b.reserve("e2", 1, 0.6, daily_usd=1.0, ttl=60))
        await asyncio.sleep(0.5)
        a.go_on.set()
        return [await first is None, await second is None]
    finally:
        a.go_on.set()
        await a.close()
        await b.close()


async def test_two_processes_cannot_reserve_past_a_cap_together(url: str) -> None:
    assert await _two_reservations(url, Held) == [True, False]


async def test_control_unserialised_admission_passes_the_cap(url: str) -> None:
    assert await _two_reservations(url, UnlockedHeld) == [True, True]


async def test_another_process_s_appends_are_seen_not_overwritten(url: str) -> None:
    """Two writers append to one errand in turn: each sees the other's events (its
    cache is dropped when another process committed), none is lost or renumbered."""
    a, b = PostgresStore(url), PostgresStore(url)
    try:
        await a.create("e1", _created())
        for i in range(5):
            assert await a.append("e1", [_note(f"a{i}")]) == [2 + 2 * i]
            assert await b.append("e1", [_note(f"b{i}")]) == [3 + 2 * i]
        logged = [s.event for s in await a.read("e1")]
        assert [e.content.text for e in logged[1:] if isinstance(e, ev.ToolResult)] == [
            x for i in range(5) for x in (f"a{i}", f"b{i}")
        ]
        assert (await a.view("e1")).last_seq == (await b.view("e1")).last_seq == 11
        assert await a.integrity_check() == []
    finally:
        await a.close()
        await b.close()


async def test_wakeups_arrive_in_commit_order_across_processes(url: str) -> None:
    a, b = PostgresStore(url), PostgresStore(url)
    try:
        for e in ("e1", "e2", "e3"):
            await a.create(e, _created(e))
        cursor, _ = await a.wakeups(0)
        await b.append("e2", [_note("x")])
        await a.append("e3", [_note("y")])
        cursor, woken = await a.wakeups(cursor)
        assert woken == ["e2", "e3"]
        assert await a.wakeups(cursor) == (cursor, [])
    finally:
        await a.close()
        await b.close()


class OneAttemptHeld(Held):
    """Control: a batch that met another process's commit is not run again."""

    attempts = 1


async def _append_beside_another(url: str, kind: type[PostgresStore]) -> list[int]:
    """B's append to e1 is written, not committed, when A (*kind*, its view of e1
    cached) appends to e1 too; returns A's sequence numbers."""
    a, b = kind(url), Held(url)
    try:
        await a.create("e1", _created())
        await a.append("e1", [_note("a0")])  # (A's view of e1 is in its cache now)
        b.hold_next = True
        theirs = asyncio.ensure_future(b.append("e1", [_note("b")]))
        await _wait(b.holding)
        ours = asyncio.ensure_future(a.append("e1", [_note("a1")]))
        await asyncio.sleep(0.3)  # A's row 3 waits on B's uncommitted row 3
        b.go_on.set()
        assert await theirs == [3]
        seqs = await ours
        notes = [s.event.content.text for s in await a.read("e1") if s.seq > 1]
        assert notes == ["a0", "b", "a1"]
        assert await a.integrity_check() == []
        return seqs
    finally:
        b.go_on.set()
        await a.close()
        await b.close()


async def test_a_write_that_met_another_process_s_commit_is_run_again(url: str) -> None:
    assert await _append_beside_another(url, PostgresStore) == [4]


async def test_control_without_running_it_again_the_append_fails(url: str) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):
        await _append_beside_another(url, OneAttemptHeld)


class WaitingClaims(PostgresStore):
    """Control: claims that wait for the rows another claim holds (no SKIP LOCKED)."""

    def _free_runnable(self, tx: Tx, limit: int) -> list[str]:
        rows = tx.conn.execute(
            "SELECT e.id FROM errands e LEFT JOIN leases l ON l.errand_id = e.id"
            " WHERE e.state IN ('queued', 'running') AND l.owner IS NULL"
            " ORDER BY e.updated_at LIMIT %s",
            (limit,),
        ).fetchall()
        return [str(r[0]) for r in rows]


async def _claims_at_once(url: str, kind: type[PostgresStore]) -> tuple[bool, set[str], set[str]]:
    """A's claim of 2 of 4 queued errands is written, not committed, when B (*kind*)
    claims 2: (B was answered while A's claim waited, A's errands, B's errands)."""
    a, b = Held(url), kind(url)
    try:
        for i in range(4):
            await a.create(f"e{i}", _created(f"t{i}"))
        a.hold_next = True
        first = asyncio.ensure_future(a.claim_runnable("A", 30, 2))
        await _wait(a.holding)
        second = asyncio.ensure_future(b.claim_runnable("B", 30, 2))
        await asyncio.sleep(0.5)
        answered = second.done()
        a.go_on.set()
        return answered, set(await first), set(await second)
    finally:
        a.go_on.set()
        await a.close()
        await b.close()


async def test_workers_claiming_at_once_take_different_errands_without_waiting(url: str) -> None:
    answered, mine, theirs = await _claims_at_once(url, PostgresStore)
    assert answered, "B's claim waited for A's"
    assert len(mine) == len(theirs) == 2 and not mine & theirs


async def test_control_claims_without_skip_locked_wait_for_each_other(url: str) -> None:
    answered, mine, theirs = await _claims_at_once(url, WaitingClaims)
    assert not answered and len(mine) == 2
    assert not mine & theirs  # (the leases still keep them apart, once A commits)


def test_a_bad_store_url_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from errands.config import load_settings

    monkeypatch.setenv("ERRANDS_STORE_URL", "mysql://x")
    with pytest.raises(ConfigError, match="ERRANDS_STORE_URL: the store's url must be"):
        _ = load_settings(tmp_path).store_url
    (tmp_path / "errands.toml").write_text('[store]\nurl = "sqlite:///x"\n')
    monkeypatch.delenv("ERRANDS_STORE_URL")
    with pytest.raises(ConfigError, match=r"store\.url: .*PostgreSQL URL"):
        load_settings(tmp_path)


@pytest.mark.parametrize("opened", ["open_store", "CONTROL"])
async def test_the_url_s_password_never_reaches_the_log(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: str
) -> None:
    """A password in the store's URL is a secret: open_store redacts it from the log
    (the control opens the store without open_store's redactor: it is logged)."""
    from errands.config import load_settings
    from errands.store import open_store

    with_password = url.replace("postgres@", "postgres:hunter2-store-pass@")
    monkeypatch.setenv("ERRANDS_STORE_URL", with_password)
    settings = load_settings(tmp_path)
    store = open_store(settings) if opened == "open_store" else PostgresStore(with_password)
    try:
        await store.create("e1", _created())
        await store.append("e1", [_note("the db password is hunter2-store-pass")])
        logged = (await store.read("e1"))[-1].event.content.text  # type: ignore[attr-defined]
        leaked = "hunter2-store-pass" in logged
        assert leaked is (opened == "CONTROL"), logged
    finally:
        await store.close()


def test_the_cli_runs_on_the_postgres_store(cli: Any, url: str) -> None:
    """ERRANDS_STORE_URL chooses the store for every command: no SQLite file is made."""
    made = cli("run", "--model", "scripted:demo", "say hello", ERRANDS_STORE_URL=url)
    assert made.returncode == 0, made.stderr
    listed = cli("ls", "--json", ERRANDS_STORE_URL=url)
    assert listed.returncode == 0, listed.stderr
    assert '"done"' in listed.stdout
    assert not (cli.home / "errands.sqlite").exists()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM errands").fetchone() == (1,)


def test_an_unreachable_server_is_one_clear_error(cli: Any) -> None:
    bad = "postgresql://nobody:s3cret-pass@/nowhere?host=/nonexistent-dir&connect_timeout=2"
    done = cli("ls", ERRANDS_STORE_URL=bad)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "cannot reach the PostgreSQL server" in done.stderr
    assert "s3cret-pass" not in done.stderr + done.stdout


async def test_fold_snapshots_are_kept_replaced_and_dropped_by_a_purge(url: str) -> None:
    """The snapshot rows: a newer one replaces the kept one's parts it no longer names,
    an older one (or one holding a secret) is refused, and a purge drops them."""
    from errands.store.protocol import Snapshot
    from errands.store.redact import Redactor

    store = PostgresStore(url, redactor=Redactor({"API_KEY": "sk-very-secret-123"}))
    try:
        await store.create("e", _created())
        first = Snapshot(5, "f1", b"state-5", ("p1", "p2"), {"p1": b"one", "p2": b"two"})
        assert await store.put_snapshot("e", first)
        assert await store.snapshot("e") == first
        second = Snapshot(9, "f1", b"state-9", ("p2", "p3"), {"p3": b"three"})
        assert await store.put_snapshot("e", second)
        assert await store.snapshot("e") == Snapshot(
            9, "f1", b"state-9", ("p2", "p3"), {"p2": b"two", "p3": b"three"}
        )
        assert not await store.put_snapshot("e", first)  # older: refused
        secret = Snapshot(12, "f1", b"x sk-very-secret-123 x", (), {})
        assert not await store.put_snapshot("e", secret)
        assert (await store.snapshot("e")).seq == 9  # type: ignore[union-attr]
        await store.purge("e")
        assert await store.snapshot("e") is None
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM snapshot_parts").fetchone() == (0,)
    finally:
        await store.close()


def test_errands_workers_on_two_processes_share_the_errands(cli: Any, url: str) -> None:
    """``ERRANDS_STORE_URL=postgresql://… errands worker``, twice: every errand queued in
    the database is run, once, by one of them (each log is a whole run, no step twice)."""
    import subprocess
    import time

    from errands.config import load_settings
    from errands.engine.operations import create_errand
    from errands.store.sync import BlockingStore

    store = BlockingStore(make=lambda: PostgresStore(url))
    try:
        settings = load_settings(cli.home)
        ids = [
            store.run(create_errand(store.store, settings, f"job {i}", model="scripted:demo"))
            for i in range(6)
        ]
        workers = [cli.popen("worker", ERRANDS_STORE_URL=url) for _ in range(2)]
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(store.view(e).state.value == "done" for e in ids):
                    break
                time.sleep(0.2)
            for w in workers:
                assert w.poll() is None, w.communicate()[1]
        finally:
            for w in workers:  # (the processes this test started, by their handles)
                w.terminate()
            for w in workers:
                try:
                    w.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    w.kill()
        assert [store.view(e).state.value for e in ids] == ["done"] * 6
        shapes = {tuple(s.event.type for s in store.read(e)) for e in ids}
        assert len(shapes) == 1, shapes  # the same run for each: no step repeated
        assert store.run(store.store.integrity_check()) == []
    finally:
        store.close()


def test_doctor_checks_the_postgres_store_and_backup_points_to_pg_dump(cli: Any, url: str) -> None:
    import json

    def store_check(store_url: str) -> dict[str, Any]:
        done = cli("doctor", "--json", ERRANDS_STORE_URL=store_url)
        assert "Traceback" not in done.stderr
        (found,) = [
            c for c in json.loads(done.stdout)["checks"] if c["subject"].startswith("store")
        ]
        return dict(found)

    cli("run", "--model", "scripted:demo", "say hello", ERRANDS_STORE_URL=url)  # (migrates)
    good = store_check(url)
    assert good["ok"] and good["subject"] == "store (PostgreSQL)", good
    notes = " ".join(good["notes"])
    assert "migrations applied" in notes and "durable on this server only" in notes
    bad = store_check("postgresql://u:pw-secret-77@/x?host=/nonexistent-dir&connect_timeout=2")
    assert not bad["ok"] and "cannot reach the PostgreSQL server" in bad["problems"][0]
    assert "pw-secret-77" not in json.dumps(bad)
    copied = cli("backup", str(cli.home / "b.sqlite"), ERRANDS_STORE_URL=url)
    assert copied.returncode != 0 and "pg_dump" in copied.stderr
    assert "Traceback" not in copied.stderr and not (cli.home / "b.sqlite").exists()


def test_up_no_run_serves_while_a_worker_runs_the_errands(cli: Any, url: str) -> None:
    """``errands up --no-run`` on a PostgreSQL store answers the API and runs nothing;
    an ``errands worker`` beside it runs what the API made, and the API shows it done."""
    import json
    import re
    import subprocess
    import time
    import urllib.request

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    up = cli.popen("up", "--no-run", "--port", "0", ERRANDS_STORE_URL=url)
    worker: subprocess.Popen[str] | None = None
    try:
        assert up.stdout is not None
        first = up.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert found, first + (up.stderr.read() if up.poll() is not None else "")  # type: ignore[union-attr]
        base = found.group(0)
        made = call("POST", "/api/errands", {"text": "say hi", "model": "scripted:demo"})
        eid = made["id"]
        time.sleep(1.5)
        assert call("GET", f"/api/errands/{eid}")["status"] == "queued"  # nobody runs it
        worker = cli.popen("worker", ERRANDS_STORE_URL=url)
        deadline = time.monotonic() + 60
        while call("GET", f"/api/errands/{eid}")["status"] != "done":
            assert time.monotonic() < deadline, "the worker did not run the errand"
            time.sleep(0.2)
    finally:
        for proc in (worker, up):  # (the processes this test started, by their handles)
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _worker_run(cli: Any, url: str, *flags: str) -> tuple[int, set[str]]:
    """Eight queued errands, one ``errands worker *flags*`` until they are done: (the
    most leases it held at once, as sampled every 10 ms; the lease owners seen)."""
    import subprocess
    import time

    from errands.config import load_settings
    from errands.engine.operations import create_errand
    from errands.store.sync import BlockingStore

    store = BlockingStore(make=lambda: PostgresStore(url))
    most, owners = 0, set()
    try:
        settings = load_settings(cli.home)
        ids = [
            store.run(create_errand(store.store, settings, f"job {i}", model="scripted:demo"))
            for i in range(8)
        ]
        worker = cli.popen("worker", *flags, ERRANDS_STORE_URL=url)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    rows = conn.execute("SELECT owner FROM leases").fetchall()
                    most = max(most, len(rows))
                    owners |= {str(r[0]) for r in rows}
                    done = conn.execute(
                        "SELECT count(*) FROM errands WHERE state = 'done'"
                    ).fetchone()
                    if done == (len(ids),):
                        break
                    time.sleep(0.01)
            assert worker.poll() is None, worker.communicate()[1]
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        assert [store.view(e).state.value for e in ids] == ["done"] * 8
    finally:
        store.close()
    return most, owners


def test_a_named_worker_with_a_concurrency_runs_that_many_at_once(cli: Any, url: str) -> None:
    most, owners = _worker_run(cli, url, "--name", "w1", "--concurrency", "1")
    assert most == 1
    assert owners and all(o.endswith(":w1") for o in owners), owners


def test_control_without_a_concurrency_it_runs_them_together(cli: Any, url: str) -> None:
    most, _ = _worker_run(cli, url)
    assert most > 1  # (so the sampling above can see more than one)


def test_a_bad_worker_name_is_one_clear_error(cli: Any, url: str) -> None:
    done = cli("worker", "--name", "a:b c", ERRANDS_STORE_URL=url)
    assert done.returncode != 0 and "--name" in done.stderr and "Traceback" not in done.stderr


class OneSession(PostgresStore):
    """Control: a batch whose session is gone is not run again on a new one."""

    attempts = 1


@pytest.mark.parametrize("kind", [PostgresStore, OneSession], ids=["store", "CONTROL"])
async def test_a_restarted_server_costs_no_write(kind: type[PostgresStore]) -> None:
    """PostgreSQL restarts under an open store (its sessions ended): the next append and
    the next read go through on new sessions; nothing acknowledged is lost. (A server of
    the test's own: the session's stays up for the other tests.)"""
    from helpers.postgres import PostgresServer

    from errands.errors import StoreUnavailable

    own = PostgresServer()
    try:
        store = kind(own.url(own.new_database()))
        try:
            await store.create("e1", _created())
            await store.append("e1", [_note("before")])
            own.restart()
            if kind is OneSession:
                with pytest.raises(StoreUnavailable):  # (nothing of it written)
                    await store.append("e1", [_note("after")])
                await store.append("e1", [_note("after")])  # the next batch, a new session
            else:
                assert await store.append("e1", [_note("after")]) == [3]
            notes = [s.event.content.text for s in await store.read("e1") if s.seq > 1]
            assert notes == ["before", "after"]
        finally:
            await store.close()
    finally:
        own.stop()


def _takeover_seconds(cli: Any, url: str, lease_seconds: float) -> float:
    """Worker a runs an errand whose model takes 6 s; worker b waits beside it; a is
    SIGKILLed mid-call. Returns the seconds until b holds the errand's lease (it then
    finishes it). ``[store] lease_seconds`` is *lease_seconds*."""
    import json
    import signal
    import subprocess
    import time

    from errands.config import load_settings
    from errands.engine.operations import create_errand
    from errands.store.sync import BlockingStore

    (cli.home / "errands.toml").write_text(f"[store]\nlease_seconds = {lease_seconds}\n")
    slow = cli.home / "slow.json"
    slow.write_text(json.dumps({"name": "slow", "latency_ms": 6000, "turns": [{"text": "ok"}]}))
    store = BlockingStore(make=lambda: PostgresStore(url))
    procs: list[subprocess.Popen[str]] = []

    def holder() -> str:
        found = store.lease_holder(eid)
        return "" if found is None else found[0]

    try:
        eid = store.run(
            create_errand(store.store, load_settings(cli.home), "slow", model=f"scripted:{slow}")
        )
        procs.append(cli.popen("worker", "--name", "a", ERRANDS_STORE_URL=url))
        deadline = time.monotonic() + 60
        while not holder().endswith(":a"):
            assert time.monotonic() < deadline, "worker a never took the errand"
            time.sleep(0.05)
        procs.append(cli.popen("worker", "--name", "b", ERRANDS_STORE_URL=url))
        time.sleep(3)  # b is up and looking (it cannot take a's live lease)
        assert holder().endswith(":a")
        procs[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while not holder().endswith(":b"):
            assert time.monotonic() < killed + 60, "worker b never took the errand over"
            time.sleep(0.05)
        taken = time.monotonic() - killed
        while store.view(eid).state.value != "done":
            assert time.monotonic() < killed + 90, store.view(eid).state
            time.sleep(0.1)
        return taken
    finally:
        for proc in procs:  # (the processes this test started, by their handles)
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        store.close()


@pytest.mark.slow
def test_a_dead_worker_s_errand_is_taken_over_within_the_lease_time(cli: Any, url: str) -> None:
    taken = _takeover_seconds(cli, url, 2.0)
    print(f"taken over {taken:.2f} s after the SIGKILL (lease 2 s)")
    assert taken <= 2.0 + 2.0  # (b looks every 0.1 s; a loaded box)


@pytest.mark.slow
def test_control_a_longer_lease_is_what_it_waits_for(cli: Any, url: str) -> None:
    assert _takeover_seconds(cli, url, 8.0) >= 5.0
