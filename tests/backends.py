"""The store backends the tests run on, and what a test needs of each beyond the protocol.

``ERRANDS_TEST_BACKENDS=sqlite,postgres`` chooses which run (default: every backend
errands has). A backend here knows how to open a fresh store in a directory (with a
test's clock), how to hold every commit back for a moment (so that appends pile up and
share one batch), and how to leave its files as a SIGKILL would.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from errands.clock import Clock
from errands.store import Store
from errands.store.sqlite import SQLiteStore

__all__ = ["BACKENDS", "Backend", "backend"]



@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path, Clock | None], Store]  # a store kept in this directory
    hold_commits: Callable[[Path], AbstractContextManager[None]]  # commits wait meanwhile
    crash_copy: Callable[[Path, Path], None]  # the directory's store, as SIGKILL leaves it


def _sqlite_open(directory: Path, clock: Clock | None) -> Store:
    path = directory / "errands.sqlite"
    return SQLiteStore(path) if clock is None else SQLiteStore(path, clock=clock)


@contextmanager
def _sqlite_hold(directory: Path) -> Iterator[None]:
    blocker = sqlite3.connect(directory / "errands.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer waits for the lock: operations pile up
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def _sqlite_crash_copy(source: Path, target: Path) -> None:
    """The file and its WAL as they are: no checkpoint, no clean close."""
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        src = source / f"errands.sqlite{suffix}"
        if src.exists():
            shutil.copyfile(src, target / f"errands.sqlite{suffix}")


_ALL = {"sqlite": Backend("sqlite", _sqlite_open, _sqlite_hold, _sqlite_crash_copy)}

BACKENDS = [
    name.strip()
    for name in os.environ.get("ERRANDS_TEST_BACKENDS", ",".join(_ALL)).split(",")
    if name.strip()
]
for _name in BACKENDS:
    if _name not in _ALL:
        raise ValueError(
            f"ERRANDS_TEST_BACKENDS: unknown backend {_name!r} (known: {sorted(_ALL)})"
        )


def backend(name: str) -> Backend:
    return _ALL[name]
