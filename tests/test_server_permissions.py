"""File permissions around the server, checked as unprivileged users.

The tests run as root in CI, where no permission check can fail; so each check runs in
a forked child that has dropped to ``nobody`` (or ``daemon``) with setgid/setuid. The
child calls the real code with the modules it needs already imported (an unprivileged
user may not be able to read the interpreter's files, e.g. under /root), and reports
back through a pipe.
"""

from __future__ import annotations

import codecs
import json
import os
import pwd
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import errands.server.serve  # noqa: F401  (imported before forking: the child may not read it)
from errands.config import load_settings
from errands.server.files import TOKEN_FILE, ServerRefused, load_token
from errands.server.serve import run_server


def _users_exist() -> bool:
    try:
        pwd.getpwnam("nobody")
        pwd.getpwnam("daemon")
    except KeyError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not _users_exist(),
    reason="needs root (to become nobody/daemon) and those users",
)


def as_user(user: str, fn: Callable[[], object]) -> tuple[str, str]:
    """Run *fn* in a child process as *user*: ('ok', repr(result)) or (exception, message)."""
    pw = pwd.getpwnam(user)
    # the child may not be able to read the interpreter's own files (a Python installed
    # under /root, mode 0700): load here, before the fork, the codecs it may look up
    for codec in ("ascii", "utf-8", "latin-1"):
        codecs.lookup(codec)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        outcome: tuple[str, str]
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            try:
                outcome = ("ok", repr(fn()))
            except BaseException as exc:
                outcome = (type(exc).__name__, str(exc))
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    kind, message = json.loads(b"".join(chunks) or b'["crashed", ""]')
    return kind, message


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="errands-perm-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def owned_home(shared: Path, user: str) -> Path:
    home = shared / f"home-{user}"
    home.mkdir()
    pw = pwd.getpwnam(user)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    return home


def test_the_token_file_is_readable_by_its_owner_only(shared: Path) -> None:
    home = owned_home(shared, "nobody")
    kind, created = as_user("nobody", lambda: load_token(home, create=True))
    assert kind == "ok" and created.endswith("True)")
    token_file = home / TOKEN_FILE
    info = token_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == pwd.getpwnam("nobody").pw_uid
    kind, _ = as_user("daemon", lambda: token_file.read_text())
    assert kind == "PermissionError"  # another user cannot read it
    kind, again = as_user("nobody", lambda: load_token(home, create=True))
    assert kind == "ok" and again == repr((token_file.read_text().strip(), False))


def test_a_token_file_others_can_read_is_refused(shared: Path) -> None:
    home = owned_home(shared, "nobody")
    assert as_user("nobody", lambda: load_token(home, create=True))[0] == "ok"
    (home / TOKEN_FILE).chmod(0o644)
    kind, message = as_user("nobody", lambda: load_token(home, create=True))
    assert kind == ServerRefused.__name__
    assert "can be read by other users (mode 0644)" in message and "chmod 600" in message


def test_a_token_file_it_cannot_read_is_refused_clearly(shared: Path) -> None:
    home = owned_home(shared, "nobody")
    token_file = home / TOKEN_FILE
    token_file.write_text("a-token-that-belongs-to-root-only\n")
    token_file.chmod(0o600)  # owned by root
    kind, message = as_user("nobody", lambda: load_token(home, create=True))
    assert kind == ServerRefused.__name__
    assert "cannot read the token file" in message and "Permission denied" in message


def test_up_refuses_a_home_it_cannot_write(shared: Path) -> None:
    home = shared / "root-home"
    home.mkdir(mode=0o755)  # root's
    settings = load_settings(home)
    kind, message = as_user("nobody", lambda: run_server(settings, "127.0.0.1", 0))
    assert kind == ServerRefused.__name__
    assert f"ERRANDS_HOME {home} is not writable" in message
    assert not (home / "server.json").exists()
