"""Several hosts, for real: ``errands worker`` processes on two worker hosts and
PostgreSQL on a database host, each host a network namespace on one switch
(tests/helpers/netns.py), and the faults a fleet meets -- a host's processes killed, a
host cut off past its lease, PostgreSQL restarted, a worker paused past its lease -- and
a failover to a synchronous replica.

The workload: errands whose scripted model (900 ms a turn) calls ``ledger_once`` three
times (a send: not idempotent, keys ignored) and ``ledger_idem`` once
(tests/helpers/ledger_tools.py). The ledger -- a file outside errands' store -- records
every effect, and every event a worker's store acknowledged (``ack``: the append
returned, the commit was made). The test process watches the ``leases`` table through
the database's Unix socket (every 50 ms) and keeps who held what, when.

After each fault (:meth:`Fleet.check`):

1. every errand finished: ``done`` -- or ``needs_attention`` with an ``in_doubt``
   result for a ``ledger_once`` call (a fault between the send and its result's commit:
   errands cannot know whether it ran, so it asks a person rather than send twice);
2. no acknowledged event lost: every ``ack`` is in the final log at its seq, the same
   event (type and hash); for the faults on one server, every event the watcher read
   before the fault is still there, unchanged;
3. no send twice: at most one ``effect`` per (errand, ``ledger_once`` key), exactly one
   for a ``done`` errand, and each after its intent (the outbox);
4. one run per errand: a ``done`` errand's log has one model reply per scripted turn;
5. no fenced-out write landed: no ``ack`` of a process on an errand after the watcher
   saw another process take that errand's lease (and not it again);
6. the worker that was cut off or paused says in its log that its writes were refused
   or its lease taken over.

The negative control runs the cut-off with fencing disabled in that worker's store
(``ERRANDS_TEST_UNFENCED``, read by the test's tool module): its late write lands, and
the checks must say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.ledger_tools import event_hash, read_journal
from helpers.netns import Host, Network, PgHost

from errands.config import load_settings
from errands.engine.operations import create_errand
from errands.store.postgres import PostgresStore
from errands.store.sync import BlockingStore

TESTS = Path(__file__).parent
LEASE = 2.0  # [store] lease_seconds of every worker
LATENCY_MS = 900  # the scripted model's time per turn
ERRANDS = 8
ONCE_KEYS = ("k1", "k3", "k4")
SETTLE_TIMEOUT = 90.0
CONTROL_WAIT = 20.0  # seconds the failover's control waits for a write to the new primary


def _call(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "arguments": {"key": key}}


SCRIPT = {
    "name": "multihost",
    "latency_ms": LATENCY_MS,
    "turns": [
        {"text": "First, the send.", "tool_calls": [_call("ledger_once", "k1")]},
        {
            "text": "A record and another send.",
            "tool_calls": [_call("ledger_idem", "k2"), _call("ledger_once", "k3")],
        },
        {"text": "The last send.", "tool_calls": [_call("ledger_once", "k4")]},
        {"text": "All sent."},
    ],
}
TURNS = len(SCRIPT["turns"])  # type: ignore[arg-type]


# ------------------------------------------------------------------ the watcher


class Watcher:
    """Reads the ``leases`` table every 50 ms (through a Unix socket: the test process
    is on no host of the network) and keeps each change of holder, timed on the
    machine's monotonic clock -- the clock the workers' ``ack`` lines carry."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.changes: list[tuple[float, str, str | None]] = []  # (t, errand, new holder)
        self.holders: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                rows = conn.execute("SELECT errand_id, owner FROM leases").fetchall()
                now = time.monotonic()
                seen = {str(e): str(o) for e, o in rows}
                with self._lock:
                    for e, o in seen.items():
                        if self.holders.get(e) != o:
                            self.changes.append((now, e, o))
                    for e in set(self.holders) - set(seen):
                        self.changes.append((now, e, None))
                    self.holders = seen
            except psycopg.Error:
                conn = None  # (a restart, a failover: connect again)
            self._stop.wait(0.05)
        if conn is not None:
            conn.close()

    def held(self) -> dict[str, str]:
        with self._lock:
            return dict(self.holders)

    def takeovers(self, since: float, gone: str) -> dict[str, float]:
        """For each errand host *gone* held at *since*: the seconds until another
        host's process was seen holding it."""
        with self._lock:
            at: dict[str, str | None] = {}
            for t, e, o in self.changes:
                if t <= since:
                    at[e] = o
            victims = {e for e, o in at.items() if o is not None and o.startswith(gone + ":")}
            taken: dict[str, float] = {}
            for t, e, o in self.changes:
                if t > since and e in victims and e not in taken and o and not o.startswith(gone):
                    taken[e] = t - since
            return taken

    def late_writes(self, acks: list[list[str]]) -> list[str]:
        """Acks of a process on an errand after another process was seen taking the
        errand's lease, and the first one not seen holding it again since."""
        with self._lock:
            changes = list(self.changes)
        bad = []
        for ack in acks:
            errand, owner, t = ack[1], ack[5], float(ack[7])
            if owner == "-":
                continue
            others = [c for c, e, o in changes if e == errand and o not in (None, owner) and c < t]
            mine = [c for c, e, o in changes if e == errand and o == owner]
            if others and not any(c > max(others) for c in mine):
                bad.append(f"{errand}: seq {ack[2]} ({ack[3]}) of {owner} committed after "
                           f"another process took its lease")  # fmt: skip
        return bad

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def committed(url: str) -> dict[tuple[str, int], tuple[str, str, str]]:
    """Every event in the database: (errand, seq) -> (type, body, blob)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT errand_id, seq, type, body, coalesce(blob, '') FROM events")
        return {(str(e), int(s)): (str(t), str(b), str(x)) for e, s, t, b, x in rows}


# ------------------------------------------------------------------ the fleet


@dataclass
class Worker:
    host: Host
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def owner(self) -> str:
        return f"{self.host.name}:{self.proc.pid}:{self.name}"

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "serving" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} did not start:\n{self.text()[-3000:]}")
            time.sleep(0.05)


@dataclass
class Outcome:
    bad: list[str]
    done: int = 0
    in_doubt: int = 0
    acks: int = 0
    sends: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


class Fleet:
    """A database for one test, the errands in it, the workers on the hosts, the
    watcher, and the checks."""

    def __init__(self, root: Path, local_url: str, worker_url: str) -> None:
        self.root = root
        self.local_url = local_url
        self.worker_url = worker_url
        self.ledger = root / "ledger.log"
        self.ledger.touch()
        self.script = root / "script.json"
        self.script.write_text(json.dumps(SCRIPT))
        self.workers: list[Worker] = []
        self.ids: list[str] = []
        self.watcher = Watcher(local_url)

    def worker(self, host: Host, name: str, *flags: str, **env: str) -> Worker:
        home = self.root / f"home-{name}"
        home.mkdir(mode=0o700)
        (home / "errands.toml").write_text(
            f'[store]\nlease_seconds = {LEASE}\n\n[tools]\nmodules = ["helpers.ledger_tools"]\n'
        )
        (home / "policy.toml").write_text('[effects]\nexternal = "allow"\n')
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "ERRANDS_HOME": str(home),
            "ERRANDS_STORE_URL": self.worker_url,
            "ERRANDS_TEST_LEDGER": str(self.ledger),
            "PYTHONPATH": str(TESTS),
            **env,
        }
        log = home / "worker.log"
        argv = [sys.executable, "-m", "errands", "worker", "--name", name, *flags]
        worker = Worker(host, name, host.popen(argv, env=full, log=log), log)
        self.workers.append(worker)
        return worker

    def create(self, n: int = ERRANDS) -> None:
        home = self.root / "admin"
        home.mkdir(mode=0o700, exist_ok=True)
        settings = load_settings(home)
        store = BlockingStore(make=lambda: PostgresStore(self.local_url))
        try:
            for i in range(n):
                made = create_errand(
                    store.store, settings, f"errand {i}", model=f"scripted:{self.script}"
                )
                self.ids.append(store.run(made))
        finally:
            store.close()

    def wait(self, what: str, ok: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.text()[-2000:]}" for w in self.workers)
                raise AssertionError(f"timed out waiting for {what}; holders "
                                     f"{self.watcher.held()}\n{logs}")  # fmt: skip
            time.sleep(0.05)

    def held_by(self, worker: Worker) -> set[str]:
        return {e for e, o in self.watcher.held().items() if o == worker.owner}

    def states(self, url: str | None = None) -> dict[str, str]:
        with psycopg.connect(url or self.local_url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute("SELECT id, state FROM errands").fetchall()
        return {str(e): str(s) for e, s in rows}

    def settled(self, url: str | None = None) -> bool:
        try:
            states = self.states(url)
        except psycopg.Error:
            return False
        return all(states.get(e) in ("done", "needs_attention", "failed") for e in self.ids)

    def wait_settled(self, url: str | None = None) -> None:
        self.wait("every errand to finish", lambda: self.settled(url), SETTLE_TIMEOUT)

    def check(
        self,
        url: str | None = None,
        before: dict[tuple[str, int], tuple[str, str, str]] | None = None,
    ) -> Outcome:
        url = url or self.local_url
        out = Outcome(bad=[])
        journal = read_journal(self.ledger.read_text(errors="replace"))
        acks = [f for f in journal if f[0] == "ack" and f[1] in self.ids]
        effects = [f for f in journal if f[0] == "effect"]
        out.acks, out.sends = len(acks), sum(f[1] == "ledger_once" for f in effects)
        store = BlockingStore(make=lambda: PostgresStore(url))
        try:
            logs = {e: store.read(e) for e in self.ids}
            problems = store.run(store.store.integrity_check())
        finally:
            store.close()
        out.bad += [f"integrity: {p}" for p in problems]
        final = {(e, s.seq): (s.event.type, event_hash(s.event)) for e in logs for s in logs[e]}
        sends = Counter((f[2], f[3]) for f in effects if f[1] == "ledger_once")
        states = self.states(url)
        for e, log in logs.items():
            events: list[Any] = [s.event for s in log]
            state = states.get(e)
            doubt = [x for x in events if x.type == "tool_result" and x.error_kind == "in_doubt"]
            intents = {x.arguments["key"]: s.seq for s, x in zip(log, events, strict=True)
                       if x.type == "tool_intent"}  # fmt: skip
            if state == "done":
                out.done += 1
                replies = sum(x.type == "model_responded" for x in events)
                if replies != TURNS:
                    out.bad.append(f"{e}: {replies} model replies logged, not {TURNS}")
                for key in ONCE_KEYS:
                    if sends[(e, key)] != 1:
                        out.bad.append(f"{e}: done, but {key} was sent {sends[(e, key)]} times")
            elif state == "needs_attention" and doubt:
                out.in_doubt += 1
            else:
                out.bad.append(f"{e}: ended {state} without a call in doubt")
            for key in ONCE_KEYS:
                if sends[(e, key)] > 1:
                    out.bad.append(f"{e}: ledger_once {key} sent {sends[(e, key)]} times")
                if sends[(e, key)] and key not in intents:
                    out.bad.append(f"{e}: {key} was sent without its intent logged")
        for ack in acks:
            if final.get((ack[1], int(ack[2]))) != (ack[3], ack[4]):
                out.bad.append(f"acknowledged event lost: {ack[1]} seq {ack[2]} ({ack[3]})")
        if before is not None:  # what the watcher read before the fault is still there
            after = committed(url)
            lost = [k for k, v in before.items() if k[0] in self.ids and after.get(k) != v]
            out.bad += [f"committed event lost: {e} seq {s}" for e, s in lost]
        out.bad += self.watcher.late_writes(acks)
        return out

    def close(self) -> None:
        self.watcher.close()
        for w in self.workers:  # (the processes this test started, by their handles)
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=10)


def refused(worker: Worker) -> list[str]:
    """The worker's log lines of writes fencing refused."""
    return [line for line in worker.text().splitlines() if "refused: the lease is" in line]


def lost(worker: Worker) -> list[str]:
    """The worker's log lines of errands it stopped running: its lease taken over, or a
    write refused."""
    return [
        line
        for line in worker.text().splitlines()
        if "its lease was taken over" in line or "a write was refused" in line
    ]


# ------------------------------------------------------------------ fixtures


@dataclass
class Lan:
    net: Network
    pg: PgHost
    w1: Host
    w2: Host
    w3: Host


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    """A database host and three worker hosts (one set per test module and process)."""
    net = Network("mh")
    pg: PgHost | None = None
    try:
        db = net.host("db")
        w1, w2, w3 = net.host("w1"), net.host("w2"), net.host("w3")
        pg = PgHost(db)
        pg.start()
        yield Lan(net, pg, w1, w2, w3)
    finally:
        if pg is not None:
            pg.close()
        net.close()


@pytest.fixture
def fleet(lan: Lan, tmp_path: Path) -> Iterator[Fleet]:
    database = "t_" + os.urandom(6).hex()
    with psycopg.connect(lan.pg.local_url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    PostgresStore(lan.pg.local_url(database))._close()  # (migrated before the workers start)
    f = Fleet(tmp_path, lan.pg.local_url(database), lan.pg.url(database))
    try:
        yield f
    finally:
        f.close()
        for host in (lan.w1, lan.w2, lan.w3):  # anything the test left on the worker hosts
            host.kill()


def _report(name: str, out: Outcome) -> None:
    print(f"\n{name}: {out.done} done, {out.in_doubt} in doubt, {out.acks} acks, "
          f"{out.sends} sends; {json.dumps(out.notes)}")  # fmt: skip


# ------------------------------------------------------------------ the faults


@pytest.mark.slow
def test_a_killed_host_s_errands_are_taken_over_within_the_lease(lan: Lan, fleet: Fleet) -> None:
    """A worker on each of three hosts; SIGKILL every process of the host that runs the
    errands, mid-step, then of the host that took them over: the third takes them over
    in turn, each once its lease expires (p99 <= lease + 2 s), and finishes them;
    nothing acknowledged is lost, nothing sent twice."""
    hosts = {h.name: h for h in (lan.w1, lan.w2, lan.w3)}
    workers = [fleet.worker(h, f"on-{h.name}") for h in hosts.values()]
    for w in workers:
        w.wait_serving()
    fleet.create()
    fleet.wait("one worker to hold every errand",
               lambda: len(fleet.watcher.held()) == ERRANDS)  # fmt: skip
    times: list[float] = []
    for _ in range(2):
        time.sleep(0.5)  # (mid-step)
        held = Counter(o.split(":")[0] for o in fleet.watcher.held().values())
        victim = hosts[held.most_common(1)[0][0]]
        killed = time.monotonic()
        assert victim.kill(), f"{victim.name} had no process to kill"
        gone = [w for w in workers if w.host is victim]
        fleet.wait(f"{victim.name}'s leases to be taken",
                   lambda gone=gone: not any(fleet.held_by(w) for w in gone), 30)  # type: ignore[misc]  # fmt: skip
        taken = fleet.watcher.takeovers(killed, victim.name)
        assert taken, f"nothing of {victim.name} was taken over"
        times += taken.values()
    fleet.wait_settled()
    out = fleet.check()
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    out.notes = {
        "takeovers_s": [round(t, 2) for t in times],
        "p99_s": round(p99, 2),
        "median_s": round(statistics.median(times), 2),
    }
    _report("SIGKILL a host", out)
    assert out.bad == [], out.bad
    assert p99 <= LEASE + 2.0, times


def _cut_or_pause(lan: Lan, fleet: Fleet, fault: str, **env: str) -> tuple[Outcome, Worker]:
    """A worker on w1 and one on w2 run the errands; the host of the one that holds
    more is cut off (or that worker paused) mid-step for the lease and 3 s more, then
    comes back. Returns the outcome and that worker."""
    workers = [fleet.worker(lan.w1, "a", **env), fleet.worker(lan.w2, "b", **env)]
    for w in workers:
        w.wait_serving()
    fleet.create()
    fleet.wait("the errands to be held", lambda: len(fleet.watcher.held()) == ERRANDS)
    time.sleep(0.3)  # (mid-step)
    victim = max(workers, key=lambda w: len(fleet.held_by(w)))
    before = committed(fleet.local_url)
    mine = fleet.held_by(victim)
    began = time.monotonic()
    if fault == "cut":
        victim.host.cut()
    else:
        victim.proc.send_signal(signal.SIGSTOP)
    try:
        fleet.wait("its errands to be taken over", lambda: not fleet.held_by(victim), LEASE + 10)
        time.sleep(max(0.0, LEASE + 3.0 - (time.monotonic() - began)))
    finally:
        if fault == "cut":
            victim.host.heal()
        else:
            victim.proc.send_signal(signal.SIGCONT)
    taken = fleet.watcher.takeovers(began, victim.host.name)
    fleet.wait_settled()
    fleet.wait("it to stop running what it lost", lambda: len(lost(victim)) >= len(mine), 30)
    out = fleet.check(before=before)
    out.notes = {
        "held": len(mine),
        "takeovers_s": sorted(round(t, 2) for t in taken.values()),
        "refused_writes": len(refused(victim)),
        "log": [line[-150:] for line in (refused(victim) or lost(victim))[:1]],
    }
    assert mine, "the worker held nothing when the fault came"
    assert victim.proc.poll() is None, "the worker should live on after the fault"
    return out, victim


@pytest.mark.slow
@pytest.mark.parametrize("fencing", ["fenced", "CONTROL"])
def test_a_host_cut_off_past_its_lease_cannot_write_when_it_comes_back(
    lan: Lan, fleet: Fleet, fencing: str
) -> None:
    """w1's cable is pulled for lease + 3 s while its worker is mid-step; b takes its
    errands over; when w1 comes back its late writes are refused (fencing) and its log
    says so. The control disables fencing in a's store: its late write lands, and the
    checks see it."""
    env = {"ERRANDS_TEST_UNFENCED": "1"} if fencing == "CONTROL" else {}
    out, a = _cut_or_pause(lan, fleet, "cut", **env)
    _report(f"cut off ({fencing})", out)
    if fencing == "CONTROL":
        assert out.bad, "with fencing disabled the late write should have landed"
        assert not refused(a)
    else:
        assert out.bad == [], out.bad
        assert refused(a), "the late writes were not refused, or not logged"


@pytest.mark.slow
def test_a_worker_paused_past_its_lease_cannot_write_when_it_resumes(
    lan: Lan, fleet: Fleet
) -> None:
    """SIGSTOP a worker mid-step for lease + 3 s, then SIGCONT: the other has taken
    its errands over; its late writes are refused and logged."""
    out, a = _cut_or_pause(lan, fleet, "pause")
    _report("SIGSTOP", out)
    assert out.bad == [], out.bad
    assert refused(a), "the late writes were not refused, or not logged"


@pytest.mark.slow
def test_workers_carry_on_through_a_postgres_restart(lan: Lan, fleet: Fleet) -> None:
    """PostgreSQL stops at once (``pg_ctl stop -m immediate``: a crash, every session
    cut) mid-run and starts again: the workers reconnect and finish every errand."""
    a = fleet.worker(lan.w1, "a", "--concurrency", "4")
    b = fleet.worker(lan.w2, "b", "--concurrency", "4")
    a.wait_serving()
    b.wait_serving()
    fleet.create()
    fleet.wait("both to hold 4 errands", lambda: len(fleet.watcher.held()) == ERRANDS)
    time.sleep(1.2)  # mid-step
    before = committed(fleet.local_url)
    began = time.monotonic()
    lan.pg.restart("immediate")
    restarted = time.monotonic() - began
    fleet.wait_settled()
    out = fleet.check(before=before)
    out.notes = {"restart_s": round(restarted, 2), "after_restart_s": round(
        time.monotonic() - began, 2)}  # fmt: skip
    _report("PostgreSQL restart", out)
    assert out.bad == [], out.bad
    assert a.proc.poll() is None and b.proc.poll() is None


# ------------------------------------------------------------------ failover


@pytest.mark.slow
@pytest.mark.parametrize("sessions", ["defaults", "CONTROL"])
def test_failover_to_a_synchronous_replica_loses_no_acknowledged_step(
    tmp_path: Path, sessions: str
) -> None:
    """A primary (db1) and its synchronous streaming replica (db2,
    ``synchronous_standby_names = '*'``); the workers connect with both hosts and
    ``target_session_attrs=read-write``. Mid-run db1 dies as a machine does -- its cable
    pulled, then every process SIGKILLed, so no reset reaches the workers' sessions (only
    errands' keepalives and TCP user timeout end them) -- and db2 is promoted: the
    workers reconnect to it and finish; every acknowledged event is in the new primary's
    log, and nothing was sent twice. The control turns errands' keepalives and TCP user
    timeout off in the workers' URL: their sessions to the dead primary hang, and they
    write nothing to the new one for CONTROL_WAIT seconds (with them: ~13 s)."""
    net = Network("fo")
    primary: PgHost | None = None
    replica: PgHost | None = None
    fleet: Fleet | None = None
    try:
        db1, db2 = net.host("db1"), net.host("db2")
        w1, w2 = net.host("w1"), net.host("w2")
        primary = PgHost(db1)
        primary.start()
        with psycopg.connect(primary.local_url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE errands")
        PostgresStore(primary.local_url("errands"))._close()  # (migrated)
        replica = primary.replica(db2)
        with psycopg.connect(primary.local_url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
            ).fetchone() != (1,):
                assert time.monotonic() < deadline, "the replica never became synchronous"
                time.sleep(0.1)
        both = f"{db1.addr}:5432,{db2.addr}:5432"
        worker_url = (
            f"postgresql://postgres@{both}/errands?target_session_attrs=read-write"
            "&connect_timeout=3"
            + ("&tcp_user_timeout=0&keepalives=0" if sessions == "CONTROL" else "")
        )
        local = (
            f"postgresql://postgres@/errands?host={primary.root},{replica.root}"
            "&port=5432,5432&target_session_attrs=read-write&connect_timeout=3"
        )
        fleet = Fleet(tmp_path, local, worker_url)
        a = fleet.worker(w1, "a", "--concurrency", "4")
        b = fleet.worker(w2, "b", "--concurrency", "4")
        a.wait_serving()
        b.wait_serving()
        fleet.create()
        fleet.wait("both to hold 4 errands", lambda: len(fleet.watcher.held()) == ERRANDS)
        time.sleep(1.5)  # mid-step
        killed = time.monotonic()
        acked_before = sum(1 for f in read_journal(fleet.ledger.read_text()) if f[0] == "ack")
        db1.cut()  # a dead machine: nothing answers there, not even a reset ...
        assert db1.kill(), "db1 had no process to kill"  # (... of its sessions' ends)
        time.sleep(1.0)  # the operator (or the failover manager) notices
        replica.promote()
        promoted = time.monotonic()
        new_url = replica.local_url("errands")
        if sessions == "CONTROL":
            time.sleep(CONTROL_WAIT)
            journal = read_journal(fleet.ledger.read_text())
            late = [f for f in journal if f[0] == "ack" and float(f[7]) > promoted]
            assert not late, "without keepalives the workers still found the new primary"
            return
        fleet.wait_settled(new_url)
        journal = read_journal(fleet.ledger.read_text())
        after = sorted(float(f[7]) for f in journal if f[0] == "ack" and float(f[7]) > promoted)
        out = fleet.check(new_url)
        out.notes = {
            "acks_before_kill": acked_before,
            "first_ack_after_promotion_s": round(after[0] - promoted, 2) if after else None,
            "settled_after_kill_s": round(time.monotonic() - killed, 2),
        }
        _report("failover", out)
        assert out.bad == [], out.bad
        assert after, "no worker wrote to the new primary"
        assert a.proc.poll() is None and b.proc.poll() is None
    finally:
        if fleet is not None:
            fleet.close()
        for pg in (replica, primary):
            if pg is not None:
                pg.close()
        net.close()


def test_sessions_get_timeouts_unless_the_url_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """errands' sessions end a vanished host's session in seconds (keepalives, TCP user
    timeout), and the server ends the writer's transaction left idle; the URL (or
    PGCONNECT_TIMEOUT) wins over each."""
    from helpers.postgres import server

    from errands.store.postgres.store import SESSION_DEFAULTS, session_defaults

    assert session_defaults("postgresql://u@h/db") == SESSION_DEFAULTS
    given = session_defaults("postgresql://u@h1,h2/db?connect_timeout=3&tcp_user_timeout=500")
    assert "connect_timeout" not in given and "tcp_user_timeout" not in given
    assert given["keepalives_idle"] == 5
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    assert "connect_timeout" not in session_defaults("postgresql://u@h/db")
    monkeypatch.delenv("PGCONNECT_TIMEOUT")
    url = server().url(server().new_database())
    store = PostgresStore(url)
    try:
        # (the writer's session, while its thread is idle)
        shown = store._wconn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        store._wconn.rollback()
        assert shown == ("10s",)
        assert store._wconn.info.get_parameters()["tcp_user_timeout"] == "10000"
        # and the LISTEN session, which sits idle the longest
        listening = store.listen(lambda channel, payload: None)
        try:
            assert listening.wait_connected(10)
            assert listening._conn is not None
            assert listening._conn.info.get_parameters()["tcp_user_timeout"] == "10000"
            assert listening._conn.info.get_parameters()["keepalives_idle"] == "5"
        finally:
            listening.close()
    finally:
        store._close()
