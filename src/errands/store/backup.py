"""Backing the store up while it runs, and restoring a backup.

Copying ``errands.sqlite`` with ``cp`` while errands writes it is not a backup: in WAL
mode the latest commits -- acknowledged, durable -- are in ``errands.sqlite-wal`` until
a checkpoint copies them into the file, so a copy of the file alone silently lacks them
(and a copy taken mid-checkpoint can be torn). :func:`backup` uses SQLite's online
backup API in **one step**: one read transaction, so the copy is the store exactly as
it was at one commit, WAL included, while the server goes on writing beside it. The
copy is one self-contained file (rollback-journal mode, no WAL), checked with
``quick_check`` before it is given its name. Blobs (event bodies over 16 KiB) are a
table of the same file, so they are in it.

:func:`restore` takes the home's exclusive lock (:mod:`errands.store.lock`), so it is
refused while ``errands up`` runs and no server can start halfway; checks the backup
(``quick_check``, schema); copies it in beside the store through the same backup API
(a backup that still has a WAL of its own is read whole); moves the current database
aside -- with its WAL, so the aside copy is complete -- as
``errands.sqlite.before-restore-<time>``; removes the stale ``-shm``; and renames the
copy into place. A stale WAL left beside a restored file would be replayed onto it and
corrupt it; none is left.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from errands.errors import StoreDamaged, StoreError, UserError
from errands.private import private_dir, private_file
from errands.store import health
from errands.store.lock import try_lock

__all__ = ["Copied", "backup", "restore"]


@dataclass(frozen=True)
class Copied:
    """What a backup or a restore wrote."""

    path: Path
    errands: int
    events: int
    size: int
    aside: Path | None = None  # a restore: where the store it replaced went


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _counts(conn: sqlite3.Connection) -> tuple[int, int]:
    def count(table: str) -> int:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) if exists else 0

    return count("errands"), count("events")


def _copy(src: sqlite3.Connection, dest: Path) -> tuple[int, int]:
    """Copy *src* into a new file *dest* in one step (one consistent snapshot), make it
    self-contained (no WAL), check it, and sync it. Returns (errands, events)."""
    private_file(dest)  # 0600, whatever the umask: a copy of every errand's log
    dst = sqlite3.connect(dest, isolation_level=None)
    try:
        src.backup(dst)  # pages=-1: everything, in one read transaction of the source
        dst.execute("PRAGMA journal_mode = DELETE")  # one file, whatever the source used
        found = dst.execute("PRAGMA quick_check(6)").fetchall()
        if [str(r[0]) for r in found] != ["ok"]:
            raise StoreError("; ".join(str(r[0]) for r in found[:5]))
        counts = _counts(dst)
    finally:
        dst.close()
    _fsync(dest)
    return counts


def backup(db: Path, dest: Path, *, force: bool = False) -> Copied:
    """Copy the store *db* to *dest*: consistent while a server writes, one file,
    checked. Refuses to replace an existing *dest* unless *force*."""
    if not db.exists():
        raise UserError(f"there is no store at {db} to back up")
    dest = dest.expanduser()
    if dest.is_dir():
        raise UserError(
            f"{dest} is a directory; give the backup's file name, e.g. {dest}/errands-backup.sqlite"
        )
    if os.path.lexists(dest) and not force:
        raise UserError(f"{dest} exists; choose another name, or --force to replace it")
    if dest.resolve() == db.resolve():
        raise UserError(f"{dest} is the store itself; choose another name")
    problem = health.header_problem(db)
    if problem is not None:
        raise health.damaged(db, problem)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        try:
            src = health.reader(db)
        except sqlite3.Error as exc:
            raise health.explain(db, exc, writing=False) or StoreError(
                f"cannot read the store {db}: {exc}"
            ) from None
        try:
            errands, events = _copy(src, tmp)
        except sqlite3.Error as exc:
            raise health.explain(db, exc, writing=False) or StoreError(
                f"the backup to {dest} failed: {exc}"
            ) from None
        except StoreError as exc:
            raise health.damaged(db, f"the copy fails quick_check: {exc}") from None
        finally:
            src.close()
        if force:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # (never replaces: refused if dest appeared meanwhile)
            except FileExistsError:
                raise UserError(
                    f"{dest} exists; choose another name, or --force to replace it"
                ) from None
    except OSError as exc:
        raise UserError(f"cannot write the backup {dest}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync(dest.parent)
    return Copied(dest, errands, events, dest.stat().st_size)


def restore(source: Path, db: Path) -> Copied:
    """Make the backup *source* the store *db* (see the module). Refused while a server
    (or another restore) holds the home, and for a backup that fails ``quick_check`` or
    was written by a newer errands; the store it replaces is kept beside it."""
    source = source.expanduser()
    home = db.parent
    if not source.is_file():
        raise UserError(f"there is no backup at {source}")
    if source.resolve() == db.resolve():
        raise UserError(f"{source} is the store itself; give a backup")
    private_dir(home)
    try:
        lock = try_lock(home)
    except OSError as exc:
        raise StoreError(f"cannot lock {home}: {exc.strerror}; is it yours and writable?") from None
    if lock is None:
        raise StoreError(
            f"errands up is running for {home} (or another restore is); stop it before "
            "restoring, then start it again"
        )
    with lock:
        report = health.check(source)
        if report.damage is not None:
            raise StoreDamaged(
                f"the backup {source} is damaged ({report.damage}); it cannot be restored"
            )
        if report.newer is not None:
            raise StoreError(f"the backup {source} cannot be restored: {report.newer}")
        tmp = db.with_name(f".{db.name}.restoring-{os.getpid()}")
        try:
            src = health.reader(source)
            try:
                errands, events = _copy(src, tmp)
            finally:
                src.close()
        except (sqlite3.Error, StoreError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"the backup {source} cannot be restored: {exc}") from None
        aside = _move_aside(db)
        os.rename(tmp, db)
        _fsync(home)
    return Copied(db, errands, events, db.stat().st_size, aside)


def _move_aside(db: Path) -> Path | None:
    """Move the store (and its WAL: the aside copy stays whole) out of the way; remove
    its ``-shm``. None if there was no store."""
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    aside: Path | None = None
    if db.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = db.with_name(f"{db.name}.before-restore-{stamp}")
        n = 1
        while os.path.lexists(aside) or os.path.lexists(f"{aside}-wal"):
            n += 1
            aside = db.with_name(f"{db.name}.before-restore-{stamp}-{n}")
        os.rename(db, aside)
        if wal.exists() and wal.stat().st_size > 0:
            os.rename(wal, f"{aside}-wal")
    elif wal.exists() and wal.stat().st_size > 0:
        # a WAL without its database belongs to nothing: replayed onto the restored
        # file it would corrupt it
        os.rename(wal, db.with_name(f"{db.name}-wal.stale-{int(time.time())}"))
    for stale in (wal, shm):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return aside
