"""The home's exclusive lock: ``ERRANDS_HOME/errands.lock``, held by ``errands up`` for
the server's life and by ``errands restore`` while it swaps the database.

An ``flock(LOCK_EX | LOCK_NB)`` on an open file: taking it is one atomic step (two
``errands up`` started at the same instant cannot both pass, as they could a check of
``server.json``'s pid followed by writing it), and the kernel drops it when the process
dies, however it dies -- there is no stale lock to clean up after a crash. The file
itself holds nothing; it is left in place (removing it would let a process that opened
it before the removal lock a file nobody else can see).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_FILE", "HomeLock", "is_held", "try_lock"]

LOCK_FILE = "errands.lock"


class HomeLock:
    """The exclusive lock on one home, held until :meth:`release` (or the process ends)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(home: Path) -> HomeLock | None:
    """Take *home*'s exclusive lock; None if another process holds it. Raises OSError
    if the lock file cannot be created or opened (an unwritable home)."""
    path = home / LOCK_FILE
    # readable by others, so that a reader without write access can tell whether a
    # server runs (is_held); the file holds nothing. (os.open's fds are not inherited
    # by child processes: a tool's subprocess never keeps the home locked.)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return HomeLock(fd, path)


def is_held(home: Path) -> bool | None:
    """Does a process hold *home*'s lock right now? None if that cannot be told (the
    lock file exists but cannot be opened). Takes and drops a shared lock; needs only
    read access."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (closing drops the shared lock)
    return False
