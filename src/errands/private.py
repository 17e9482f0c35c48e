"""Files and directories only their owner may read: ``ERRANDS_HOME``, the store, the
server's files, the workspaces.

Every errand's log, every file it read or wrote, every key a tool was given lives in
``ERRANDS_HOME``; on a machine with other users none of it is theirs to read. What
errands creates there is made ``0700`` (directories) and ``0600`` (files) whatever the
umask says: the mode is given at creation and set again with ``chmod`` (a umask of
``0o077`` or ``0o022`` alike). What exists already is left alone (``errands doctor``
reports anything looser, with the ``chmod`` that fixes it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``mkdir -p`` *path*; the directory itself, if this call makes it, is ``DIR_MODE``
    (missing parents get the usual mode: they hold nothing of errands')."""
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return path  # made by another process just now: not ours to chmod
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create *path* empty with ``FILE_MODE`` if it does not exist (an existing file is
    left as it is). SQLite gives a database's ``-wal`` and ``-shm`` files the mode of
    the database, so a store created through this stays private with its journal."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return path
    try:
        with contextlib.suppress(OSError):  # (a file system without modes)
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path
