"""Where the errands servers of this machine listen: so that no errands process's network
tools ever reach an errands server's API, whatever home either belongs to.

An errand reaching ``errands up``'s API could start errands and approve its own actions.
``errands up`` refuses its own port to its own errands (``settings.server_port``); this
registry extends that to every errands process: ``errands run`` in another home, a
second server, a script using :func:`errands.harness.build`.

Each ``errands up`` *publishes* its port in one small file, ``PORT-PID.json``
(``{"pid", "port", "host", "home"}``), and removes it when it stops. The directory is
the first of these it can use:

- ``$XDG_RUNTIME_DIR/errands/`` (the user's runtime directory; mode 0700);
- ``/run/errands/`` for root (mode 0755: every user's errands refuse root's servers);
- ``/tmp/errands-UID/`` (mode 0700, owned by the user, never a symbolic link).

:func:`published_ports` reads all of them (and ``/run/user/UID/errands/``, the usual
runtime directory, for a process started without ``XDG_RUNTIME_DIR``, from cron say)
on every call, so a server started after an errand still counts. A file whose process
is gone (a crash leaves it behind) is ignored, and removed by the next publication. A
stray file can only add a refusal, never remove one.

Not covered: the servers of *other* non-root users, whose registries are private to
them; a server reachable by other local users should ask for its token
(``[server] require_token = true``; docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

__all__ = [
    "PublishFailed",
    "pid_alive",
    "publish",
    "published",
    "published_ports",
    "registry_dirs",
    "withdraw",
]


class PublishFailed(OSError):
    """No registry directory could take the server's file; the message says why."""


def _uid() -> int:
    return os.geteuid()


def _runtime_dir() -> Path | None:
    value = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    return Path(value) / "errands" if value and os.path.isabs(value) else None


def registry_dirs() -> list[Path]:
    """Where servers publish, in the order a server tries them (see the module doc)."""
    dirs = []
    runtime = _runtime_dir()
    if runtime is not None:
        dirs.append(runtime)
    if _uid() == 0:
        dirs.append(Path("/run/errands"))
    dirs.append(Path(f"/tmp/errands-{_uid()}"))
    return dirs


def _read_dirs() -> list[Path]:
    dirs = registry_dirs()
    for extra in (Path(f"/run/user/{_uid()}/errands"), Path("/run/errands")):
        if extra not in dirs:
            dirs.append(extra)
    return dirs


def pid_alive(pid: int) -> bool:
    """Is process *pid* running (on this host; another user's counts)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _entries(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    try:
        names = os.listdir(directory)
    except OSError:  # missing, or not ours to read
        return []
    found = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = directory / name
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("port"), int):
            found.append((path, entry))
    return found


def published() -> list[dict[str, Any]]:
    """Every live server's entry (``pid``, ``port``, ``host``, ``home``)."""
    live = []
    for directory in _read_dirs():
        for _, entry in _entries(directory):
            pid = entry.get("pid")
            if isinstance(pid, int) and pid_alive(pid):
                live.append(entry)
    return live


def published_ports() -> dict[int, str]:
    """The ports errands servers on this machine listen on, each with the home it
    serves (for the refusal's message)."""
    return {int(e["port"]): str(e.get("home", "?")) for e in published()}


def _usable(directory: Path) -> bool:
    """Make *directory* (its parent must exist) and check it is a real directory of
    this user's (or root's, for /run/errands), writable, and not writable by others."""
    if not directory.parent.is_dir():
        return False
    public = directory == Path("/run/errands")
    mode = 0o755 if public else 0o700
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, mode)
        os.chmod(directory, mode)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != _uid():
        return False
    if stat.S_IMODE(info.st_mode) & 0o022:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def publish(port: int, host: str, home: Path) -> Path:
    """Publish a server's port; the file's path (give it to :func:`withdraw`).

    Raises :class:`PublishFailed` if no registry directory can take it: the server
    should not start, since other errands processes could then reach it."""
    problems = []
    for directory in registry_dirs():
        try:
            if not _usable(directory):
                problems.append(f"{directory} is not a private directory of this user's")
                continue
            for stale, entry in _entries(directory):
                pid = entry.get("pid")
                if not (isinstance(pid, int) and pid_alive(pid)):
                    with contextlib.suppress(OSError):
                        stale.unlink()
            path = directory / f"{port}-{os.getpid()}.json"
            tmp = directory / f".{port}-{os.getpid()}.tmp"
            body = {"pid": os.getpid(), "port": port, "host": host, "home": str(home)}
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, json.dumps(body).encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
            return path
        except OSError as exc:
            problems.append(f"{directory}: {exc.strerror or exc}")
    raise PublishFailed(
        "cannot publish the server's port where other errands processes look for it ("
        + "; ".join(problems)
        + "); set XDG_RUNTIME_DIR to a directory of yours"
    )


def withdraw(path: Path) -> None:
    """Remove a server's entry (at its stop); a missing file is fine."""
    with contextlib.suppress(OSError):
        path.unlink()
