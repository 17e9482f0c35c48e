"""Issue 13, item 8: a fresh ``ERRANDS_HOME`` was 0755 and ``errands.sqlite`` 0644, so
any local user could read every log and every file an errand wrote.

The home, the store (and its ``-wal``/``-shm``), ``server.sqlite``, the token and the
workspaces are created 0700/0600 whatever the umask (here 0000, the loosest); checked
by reading them as ``nobody`` (the tests run as root, so they drop to an unprivileged
user with ``setpriv``). ``errands doctor`` names a looser home, file by file, with the
``chmod`` that fixes it.

Negative controls: ``loose_modes`` (errands creating with 0755/0644) and
``blind_doctor`` (a doctor that finds nothing), each installed in the CLI's process.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.server import ServerProc, clean_env
from seams import child_env

USER, GROUP = "nobody", "nogroup"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user can enter and read (pytest's tmp_path is root-only: a
    check made under it would pass whatever errands did)."""
    for needed in ("setpriv", "cat", "ls"):
        assert shutil.which(needed), f"these tests need {needed}"
    assert os.geteuid() == 0, "these tests drop from root to nobody"
    pwd.getpwnam(USER)
    path = Path(tempfile.mkdtemp(prefix="errands-perm-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def cli(home: Path, *args: str, control: str | None = None) -> subprocess.CompletedProcess[str]:
    env = child_env(clean_env(home, COLUMNS="2000"), controls=[control] if control else [])
    return subprocess.run(
        [sys.executable, "-m", "errands", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.umask(0),  # the loosest umask: the modes are errands' own
    )


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups", *command],
        capture_output=True,
        text=True,
        errors="replace",  # (what it printed, if it could read a database)
        timeout=30,
        cwd="/",
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- what errands creates -----------------------------------------------------------------


def observe(shared: Path, control: str | None) -> dict[str, Any]:
    home = shared / "home"
    r = cli(home, "demo", "--json", control=control)
    assert r.returncode == 0, r.stderr
    [workspace] = list((home / "workspaces").iterdir())
    listing = workspace / "shopping-list.md"
    assert listing.exists()
    (home / "errands.toml").write_text("[server]\nrequire_token = true\n")
    env = child_env(clean_env(home), controls=[control] if control else [])
    server = ServerProc(home, env=env, prefix=["sh", "-c", 'umask 0; exec "$@"', "sh"]).start()
    try:
        with server.client() as api:  # writes: the store's -wal and -shm exist now
            assert api.post("/api/errands", json={"text": "x", "model": "scripted:demo"}).is_success
        db = home / "errands.sqlite"
        paths = {
            "home": home,
            "store": db,
            "store-wal": Path(f"{db}-wal"),
            "store-shm": Path(f"{db}-shm"),
            "server.sqlite": home / "server.sqlite",
            "token": home / "server-token",
            "workspaces": home / "workspaces",
            "workspace": workspace,
        }
        modes = {name: mode(path) for name, path in paths.items()}
        reads = {
            "list the home": as_nobody("ls", str(home)),
            "read the store": as_nobody("cat", str(db)),
            "read the store's WAL": as_nobody("cat", str(paths["store-wal"])),
            "read the token": as_nobody("cat", str(paths["token"])),
            "read a file an errand wrote": as_nobody("cat", str(listing)),
        }
    finally:
        server.kill()
    return {"modes": modes, "reads": {k: (v.returncode, v.stderr) for k, v in reads.items()}}


def check(obs: dict[str, Any]) -> None:
    for name, found in obs["modes"].items():
        wanted = 0o700 if name in ("home", "workspaces", "workspace") else 0o600
        assert found == wanted, f"{name}: {found:04o}, not {wanted:04o}"
    for what, (code, err) in obs["reads"].items():
        assert code != 0 and "Permission denied" in err, f"nobody could {what}"


def test_a_fresh_home_is_private_to_its_owner(shared: Path) -> None:
    check(observe(shared, None))


def test_control_with_the_usual_modes_any_user_reads_every_log(shared: Path) -> None:
    obs = observe(shared, "loose_modes")
    assert obs["reads"]["read the store"][0] == 0  # what the outside attack run did
    with pytest.raises(AssertionError):
        check(obs)


# -- errands doctor ---------------------------------------------------------------------


def loosen(home: Path) -> None:
    home.chmod(0o755)
    (home / "workspaces").chmod(0o755)
    (home / "errands.sqlite").chmod(0o644)


def observe_doctor(shared: Path, control: str | None) -> dict[str, Any]:
    home = shared / "home"
    assert cli(home, "demo", "--json").returncode == 0
    loosen(home)
    before = as_nobody("cat", str(home / "errands.sqlite")).returncode
    r = cli(home, "doctor", "--json", control=control)
    [perms] = [c for c in json.loads(r.stdout)["checks"] if c["subject"] == "permissions"]
    text = cli(home, "doctor", control=control)
    return {"home": home, "code": r.returncode, "perms": perms, "text": text.stdout, "before": before}


def check_doctor(obs: dict[str, Any]) -> None:
    home: Path = obs["home"]
    assert obs["before"] == 0  # loose indeed: nobody could read the store
    assert obs["code"] == 1 and not obs["perms"]["ok"]
    problems = obs["perms"]["problems"]
    expected = {
        home: "chmod 700",
        home / "workspaces": "chmod 700",
        home / "errands.sqlite": "chmod 600",
    }
    assert len(problems) == len(expected), problems
    for path, fix in expected.items():
        [line] = [p for p in problems if p.startswith(f"{path} is open")]
        assert line.endswith(f"{fix} {path}"), line
        assert f"FIX   {line}" in obs["text"]  # the same line, on the terminal


def test_doctor_names_each_loose_file_and_the_chmod_that_fixes_it(shared: Path) -> None:
    obs = observe_doctor(shared, None)
    check_doctor(obs)
    home: Path = obs["home"]
    for problem in obs["perms"]["problems"]:  # do what it says
        mode_text, path = re.search(r"chmod (\d+) (.+)$", problem).groups()  # type: ignore[union-attr]
        subprocess.run(["chmod", mode_text, path], check=True)
    r = cli(home, "doctor", "--json")
    assert r.returncode == 0, r.stdout
    [perms] = [c for c in json.loads(r.stdout)["checks"] if c["subject"] == "permissions"]
    assert perms["ok"] and perms["problems"] == []
    after = as_nobody("cat", str(home / "errands.sqlite"))
    assert after.returncode != 0 and "Permission denied" in after.stderr


def test_control_a_doctor_that_looks_at_nothing_says_all_is_well(shared: Path) -> None:
    obs = observe_doctor(shared, "blind_doctor")
    with pytest.raises(AssertionError):
        check_doctor(obs)


# -- backups and restores -------------------------------------------------------------------


def observe_backup(shared: Path, control: str | None) -> dict[str, Any]:
    home = shared / "home"
    copy = shared / "errands-backup.sqlite"
    assert cli(home, "demo", "--json").returncode == 0
    assert cli(home, "backup", str(copy), control=control).returncode == 0
    restored = cli(home, "restore", str(copy), control=control)
    assert restored.returncode == 0, restored.stderr
    store = home / "errands.sqlite"
    home.chmod(0o755)  # (the home is 0700 anyway: open it, to try the store's own mode)
    return {
        "modes": {"backup": mode(copy), "restored store": mode(store)},
        "reads": {
            "read the backup": as_nobody("cat", str(copy)).returncode,
            "read the restored store": as_nobody("cat", str(store)).returncode,
        },
    }


def check_backup(obs: dict[str, Any]) -> None:
    assert obs["modes"] == {"backup": 0o600, "restored store": 0o600}
    assert all(code != 0 for code in obs["reads"].values()), obs["reads"]


def test_backups_and_restored_stores_are_private(shared: Path) -> None:
    check_backup(observe_backup(shared, None))


def test_control_with_the_usual_modes_a_backup_is_anyones(shared: Path) -> None:
    obs = observe_backup(shared, "loose_modes")
    with pytest.raises(AssertionError):
        check_backup(obs)
