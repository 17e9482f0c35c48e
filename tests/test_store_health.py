"""A damaged store is refused early and explained; a home this user cannot write can
still be read. Everything through the real CLI, in subprocesses, on real files.

- ``errands up`` on a truncated file, a file with a damaged page, or a file that is not
  a database: exit 2 and one line naming the file and the way out (``errands
  restore``), never a start that then answers 500 to every call.
- ``errands show`` / ``ls`` on such a file: the same kind of line, not "this is a bug".
- ``errands doctor``: the store's full ``integrity_check``, one line per problem.
- a home owned by another user (the tests run as root, so the CLI runs as ``nobody``
  through ``setpriv``): ``ls``, ``show`` and ``cost`` work -- with no server (the file
  alone), with a server writing (its WAL read through the existing ``-shm``), after a
  crash (commits only in the WAL); a write is refused in one line.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.server import ServerProc, clean_env

# -- helpers ------------------------------------------------------------------------------

WIDE = "2000"  # columns: the temporary paths are long, and the console wraps at its width


def run_cli(
    home: Path, *args: str, user: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    prefix = []
    env = clean_env(home, COLUMNS=WIDE)
    if user is not None:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
        prefix = ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups"]
        env["HOME"] = str(home.parent)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "errands", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home.parent,
        stdin=subprocess.DEVNULL,
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a refused command (no traceback, no 'bug')."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    text = r.stderr.strip()
    assert "Traceback" not in text and "this is a bug" not in text, text
    assert len(text.splitlines()) == 1, text
    return text


def demo_home(home: Path, errands: int = 1) -> list[str]:
    """A home with *errands* finished demo errands; their ids."""
    for _ in range(errands):
        r = run_cli(home, "demo", "--json")
        assert r.returncode == 0, r.stderr
    r = run_cli(home, "ls", "--json")
    assert r.returncode == 0, r.stderr
    return [e["id"] for e in json.loads(r.stdout)]


def truncate(db: Path) -> None:
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)


def damage_a_page(db: Path) -> None:
    """Overwrite the first leaf page of the ``events`` table with garbage: the file
    opens (page 1 and the schema are whole), its log cannot be read."""
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    conn = sqlite3.connect(db)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        [page] = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'"
            " ORDER BY pageno LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    with db.open("r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(b"\xa5" * page_size)


def not_a_database(db: Path) -> None:
    db.write_bytes(os.urandom(8192))


DAMAGE = {"truncated": truncate, "damaged page": damage_a_page, "not a database": not_a_database}


# -- damage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_up_refuses_a_damaged_store_at_start(tmp_path: Path, how: str) -> None:
    home = tmp_path / "home"
    demo_home(home)
    db = home / "errands.sqlite"
    DAMAGE[how](db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "errands", "up", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(home, COLUMNS=WIDE),
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"errands up started on a {how} store:\n{out}\n{err}") from None
    line = one_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert f"the store {db} is damaged" in line
    assert "errands restore PATH" in line and "move the file aside" in line
    assert "errands is up" not in out
    assert not (home / "server.json").exists()


def test_show_and_ls_on_a_damaged_store_say_so_not_a_bug(tmp_path: Path) -> None:
    home = tmp_path / "home"
    [errand] = demo_home(home)
    db = home / "errands.sqlite"
    pristine = db.read_bytes()
    damage_a_page(db)
    # the projection is whole, so ls works; the log is not, and show says so
    assert run_cli(home, "ls").returncode == 0
    line = one_line(run_cli(home, "show", errand))
    assert f"the store {db} is damaged" in line and "malformed" in line
    assert "errands restore PATH" in line
    db.write_bytes(pristine)
    truncate(db)
    for args in (("ls",), ("show", errand), ("cost",)):
        line = one_line(run_cli(home, *args))
        assert f"the store {db} is damaged (it is truncated" in line, args


def test_doctor_runs_the_full_integrity_check(tmp_path: Path) -> None:
    home = tmp_path / "home"
    demo_home(home, errands=2)
    r = run_cli(home, "doctor", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    [store] = [c for c in json.loads(r.stdout)["checks"] if c["subject"] == "store file"]
    assert store["ok"] and any("integrity_check ok" in n for n in store["notes"])
    assert any("schema 3 of 3" in n or "schema" in n for n in store["notes"])

    damage_a_page(home / "errands.sqlite")
    r = run_cli(home, "doctor", "--json")
    assert r.returncode == 1
    [store] = [c for c in json.loads(r.stdout)["checks"] if c["subject"] == "store file"]
    [problem] = store["problems"]
    assert "is damaged (integrity_check:" in problem and "errands restore PATH" in problem
    text = run_cli(home, "doctor")
    assert text.returncode == 1
    fixes = [line for line in text.stdout.splitlines() if line.startswith("FIX")]
    assert len(fixes) == 1 and "integrity_check" in fixes[0]


# -- a home this user cannot write ---------------------------------------------------------


def _unprivileged() -> str:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.fail("these tests need the user 'nobody'")
    assert shutil.which("setpriv"), "these tests need setpriv (util-linux)"
    assert os.geteuid() == 0, "these tests drop from root to nobody"
    return "nobody"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory other users can read (pytest's tmp_path is root-only), writable by
    root alone."""
    path = Path(tempfile.mkdtemp(prefix="errands-ro-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def readable_by_all(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        Path(dirpath).chmod(0o755)
        for name in filenames:
            (Path(dirpath) / name).chmod(0o644)


def test_a_home_this_user_cannot_write_can_still_be_read(shared: Path) -> None:
    user = _unprivileged()
    home = shared / "home"
    [errand] = demo_home(home)
    readable_by_all(home)
    db = home / "errands.sqlite"
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()

    r = run_cli(home, "ls", "--json", user=user)
    assert r.returncode == 0, r.stderr
    assert [e["id"] for e in json.loads(r.stdout)] == [errand]
    r = run_cli(home, "show", errand, user=user)
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout
    r = run_cli(home, "cost", "--json", user=user)
    assert r.returncode == 0, r.stderr
    # a write is refused in one line that says what to do
    line = one_line(run_cli(home, "run", "hello", "--model", "scripted:demo", user=user))
    assert f"cannot write the store {db}" in line and "the user who owns" in line
    line = one_line(run_cli(home, "cancel", errand, user=user))
    assert "cannot write the store" in line
    # nothing was written by the reader: no WAL, no -shm, no lock file
    assert sorted(p.name for p in home.iterdir()) == ["errands.sqlite", "policy.toml", "workspaces"]


def test_reading_another_users_home_while_its_server_writes(shared: Path) -> None:
    user = _unprivileged()
    home = shared / "home"
    demo_home(home)
    server = ServerProc(home).start()
    try:
        with server.client() as api:
            created = api.post("/api/errands", json={"text": "hi", "model": "scripted:demo"})
            assert created.status_code in (200, 201), created.text
            new = created.json()["id"]
        readable_by_all(home)
        r = run_cli(home, "ls", "--json", user=user)
        assert r.returncode == 0, r.stderr
        assert new in [e["id"] for e in json.loads(r.stdout)]  # (read through the WAL)
        assert run_cli(home, "show", new, user=user).returncode == 0
    finally:
        server.kill()


def test_reading_another_users_home_after_a_crash(shared: Path) -> None:
    user = _unprivileged()
    home = shared / "home"
    demo_home(home)
    db = home / "errands.sqlite"
    # a writer that dies before closing: its commits are only in the WAL
    code = (
        "import asyncio, os, sys\n"
        "from errands.config import load_settings\n"
        "from errands.harness import build\n"
        "async def main():\n"
        "    h = build(load_settings())\n"
        "    print(await h.create('left in the WAL', model='scripted:demo'), flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
        "asyncio.run(main())\n"
    )
    crashed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(home)
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    new = crashed.stdout.strip()
    assert Path(f"{db}-wal").stat().st_size > 0 and Path(f"{db}-shm").exists()
    readable_by_all(home)
    r = run_cli(home, "ls", "--json", user=user)
    assert r.returncode == 0, r.stderr
    assert new in [e["id"] for e in json.loads(r.stdout)]
    # without its -shm the WAL cannot be read by a user who may not make one: refused
    # in one line, rather than showing the store without its latest commits
    Path(f"{db}-shm").unlink()
    line = one_line(run_cli(home, "ls", user=user))
    assert f"{db}-wal" in line and "the user who owns it" in line
