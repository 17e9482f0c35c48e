"""``errands doctor``'s permissions line: what in ``ERRANDS_HOME`` other users can read.

errands creates the home, the store, the server's files and the workspaces folder
``0700``/``0600`` (:mod:`errands.private`); a home made by an older errands, copied, or
restored by hand may be looser, and then any local user can read every errand's log
and every file an errand read or wrote. The doctor names each such file or directory
and the ``chmod`` that fixes it; it changes nothing itself.
"""

from __future__ import annotations

import stat
from pathlib import Path

from errands.config import Settings
from errands.models.inventory import Check

__all__ = ["loose", "permissions_check"]

_STORES = ("errands.sqlite", "server.sqlite")


def _private(home: Path) -> list[tuple[Path, int]]:
    """What must be private, with the mode errands gives it."""
    found = [(home, 0o700), (home / "workspaces", 0o700), (home / "server-token", 0o600)]
    for name in _STORES:
        found += [(home / f"{name}{suffix}", 0o600) for suffix in ("", "-wal", "-shm")]
    return found


def loose(home: Path) -> list[tuple[Path, int, int]]:
    """(path, its mode, the mode it should have) for each private path that users other
    than its owner may read, write or enter; missing paths are fine."""
    found = []
    for path, wanted in _private(home):
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            found.append((path, mode, wanted))
    return found


def permissions_check(settings: Settings) -> Check:
    """The doctor's check: one problem per loose path, saying how to fix it."""
    check = Check("permissions", True)
    for path, mode, wanted in loose(settings.home):
        check.problems.append(
            f"{path} is open to other users (mode {mode:04o}): fix it with chmod {wanted:o} {path}"
        )
    if not check.problems:
        check.notes.append(f"{settings.home} and the store are private to their owner")
    check.ok = not check.problems
    return check
