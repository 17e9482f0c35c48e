"""``errands backup`` and ``errands restore``, through the real CLI, on real files.

- A backup taken while another real process appends continuously (eight errands at
  once, now and then a body big enough to be a blob) holds every append acknowledged
  before the backup started; restored into a fresh home, every one of them is there,
  with its content, each log contiguous and every projection equal to its fold.
- Control: a copy of the database file alone, taken at the same moment, lacks
  acknowledged appends (they were in the WAL) -- what ``cp`` of a live store does.
- ``restore`` is refused while ``errands up`` runs for the home, and refuses a damaged
  backup; both leave the store as it was. A restore keeps the store it replaced.
- ``backup`` never replaces a file unless told to (``--force``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers.server import ServerProc, clean_env

from errands.store.sqlite import SQLiteStore

WIDE = "2000"  # console columns: keep each error on one line despite long paths
BIG = 20_000  # characters: a body over the 16 KiB blob threshold

APPENDER = f"""
import asyncio, sys
from errands.core import events as ev
from errands.core.labels import Provenance
from errands.store.sqlite import SQLiteStore

async def main(path):
    store = SQLiteStore(path)
    created = ev.ErrandCreated(
        title="t", model="scripted:demo", workspace="/tmp/ws",
        content=ev.Content(text="x", provenance=Provenance(kind="user")))
    ids = [f"e{{i}}" for i in range(8)]
    for e in ids:
        await store.create(e, created)
        print(e, 1, flush=True)

    async def writer(e):
        n = 0
        while True:
            n += 1
            text = f"{{e}} note {{n}} " + ("x" * {BIG} if n % 40 == 0 else "")
            [seq] = await store.append(e, [ev.ErrorRaised(kind="note", message=text)])
            sys.stdout.write(f"{{e}} {{seq}}\\n")
            sys.stdout.flush()

    await asyncio.gather(*(writer(e) for e in ids))

asyncio.run(main(sys.argv[1]))
"""


class Appender:
    """A real process appending to the store at *db* without pause; ``acked`` is every
    (errand, seq) it was told is on disk, in order."""

    def __init__(self, db: Path) -> None:
        db.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(db.parent),
        )
        self.acked: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            errand, seq = line.split()
            with self._lock:
                self.acked.append((errand, int(seq)))

    def snapshot(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self.acked)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"the appender died: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the appender is too slow"
            time.sleep(0.01)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(10)


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "errands", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(home, COLUMNS=WIDE),
        stdin=subprocess.DEVNULL,
    )


def refused(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    text = r.stderr.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


def events_in(db: Path) -> dict[tuple[str, int], str]:
    """(errand, seq) -> the body, blobs joined back, read from the file (and its WAL)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT e.errand_id, e.seq, COALESCE(b.data, e.body) FROM events e"
            " LEFT JOIN blobs b ON b.hash = e.blob"
        ).fetchall()
    finally:
        conn.close()
    return {(str(e), int(s)): str(body) for e, s, body in rows}


async def _integrity(db: Path) -> list[str]:
    store = SQLiteStore(db)
    try:
        return await store.integrity_check()
    finally:
        await store.close()


def test_a_backup_while_a_process_appends_holds_every_acknowledged_append(
    tmp_path: Path,
) -> None:
    home, fresh = tmp_path / "home", tmp_path / "fresh"
    backup = tmp_path / "backup.sqlite"
    appender = Appender(home / "errands.sqlite")
    try:
        appender.wait_for(2_000)
        acked = appender.snapshot()  # acknowledged before the backup starts
        r = cli(home, "backup", str(backup))
        assert r.returncode == 0, r.stderr
        assert "backed up" in r.stdout and "quick_check ok" in r.stdout
        appender.wait_for(len(acked) + 500)  # (it went on writing throughout)
    finally:
        appender.kill()
    assert not Path(f"{backup}-wal").exists()  # one self-contained file

    r = cli(fresh, "restore", str(backup))
    assert r.returncode == 0, r.stderr
    db = fresh / "errands.sqlite"
    restored = events_in(db)
    missing = acked - restored.keys()
    assert not missing, f"{len(missing)} acknowledged appends are not in the backup"
    # every log is contiguous (a consistent snapshot: no append half there)
    by_errand: dict[str, list[int]] = {}
    for errand, seq in restored:
        by_errand.setdefault(errand, []).append(seq)
    assert len(by_errand) == 8
    for seqs in by_errand.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    # content, blobs included
    big = [body for (e, s), body in restored.items() if s > 1 and (s - 1) % 40 == 0]
    assert big and all(len(body) > BIG for body in big)
    assert all(f"note {s - 1} " in restored[(e, s)] for e, s in acked if s > 1)
    assert asyncio.run(_integrity(db)) == []
    # and errands reads it
    r = cli(fresh, "ls", "--json")
    assert r.returncode == 0 and r.stdout.count('"id"') == 8


def test_control_a_copy_of_the_file_alone_loses_acknowledged_appends(tmp_path: Path) -> None:
    """What the backup command is for: ``cp errands.sqlite`` while errands writes."""
    home = tmp_path / "home"
    db = home / "errands.sqlite"
    appender = Appender(db)
    lost = 0
    try:
        appender.wait_for(2_000)
        for attempt in range(5):
            acked = appender.snapshot()
            copy = tmp_path / f"copy-{attempt}.sqlite"
            shutil.copyfile(db, copy)
            try:
                copied = events_in(copy).keys()
            except sqlite3.OperationalError:  # (no events table yet: it is in the WAL too)
                copied = set()
            lost = len(acked - copied)
            if lost:
                break
            appender.wait_for(len(acked) + 200)
    finally:
        appender.kill()
    assert lost > 0, "a copy of the file alone should lack the appends still in the WAL"


def _seed(home: Path) -> None:
    r = cli(home, "demo", "--json")
    assert r.returncode == 0, r.stderr


def test_restore_is_refused_while_errands_up_runs(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    _seed(home)
    _seed(other)
    _seed(other)
    backup = tmp_path / "other.sqlite"
    assert cli(other, "backup", str(backup)).returncode == 0
    db = home / "errands.sqlite"
    server = ServerProc(home, env=clean_env(home, COLUMNS=WIDE)).start()
    try:
        before = db.stat().st_ino
        line = refused(cli(home, "restore", str(backup)))
        assert "errands up is running for" in line and "stop it before restoring" in line
        assert db.stat().st_ino == before
        assert not list(home.glob("*.before-restore-*"))
        with server.client() as api:
            assert len(api.get("/api/errands").json()) == 1
    finally:
        assert server.stop() == 0
    # with the server stopped, the same restore goes through and keeps the old store
    r = cli(home, "restore", str(backup))
    assert r.returncode == 0, r.stderr
    [aside] = home.glob("errands.sqlite.before-restore-*")
    assert aside.name in r.stdout
    assert len(events_in(aside)) > 0 and not Path(f"{db}-shm").exists()
    assert cli(home, "ls", "--json").stdout.count('"id"') == 2
    # and the server starts on the restored store
    server = ServerProc(home).start()
    try:
        with server.client() as api:
            assert len(api.get("/api/errands").json()) == 2
    finally:
        server.stop()


def test_restore_refuses_a_damaged_backup_and_leaves_the_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed(home)
    backup = tmp_path / "b.sqlite"
    assert cli(home, "backup", str(backup)).returncode == 0
    with backup.open("r+b") as f:
        f.truncate(backup.stat().st_size // 2)
    db = home / "errands.sqlite"
    before = db.read_bytes()
    line = refused(cli(home, "restore", str(backup)))
    assert f"the backup {backup} is damaged" in line and "truncated" in line
    assert db.read_bytes() == before and not list(home.glob("*.before-restore-*"))
    # a file that is not a database at all
    backup.write_bytes(os.urandom(4096))
    assert "is damaged" in refused(cli(home, "restore", str(backup)))


def test_backup_never_replaces_a_file_unless_forced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed(home)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    line = refused(cli(home, "backup", str(target)))
    assert "exists" in line and "--force" in line
    assert target.read_text() == "keep me"
    assert cli(home, "backup", str(target), "--force").returncode == 0
    assert len(events_in(target)) > 0
    assert not list(tmp_path.glob(".precious.txt.partial-*"))
