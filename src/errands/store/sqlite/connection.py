"""SQLite connections for the store: WAL, ``synchronous=FULL``, and the writer's own
settings; waiting for another process's write lock; the checkpointer; and what a
failure says about the world (:func:`unavailable`).

A full disk, another process holding the write lock past ``BUSY_TIMEOUT``, an I/O
error, a file that cannot be opened or written: conditions of the world, not bugs.
:func:`unavailable` turns each into :class:`~errands.errors.StoreUnavailable`, one line
naming the condition and the file, which every caller of the store gets instead of
SQLite's own error.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from errands.errors import StoreUnavailable

__all__ = [
    "BUSY_TIMEOUT",
    "CHECKPOINT_INTERVAL",
    "UNAVAILABLE_WAIT",
    "WAL_RESTART_FRAMES",
    "WriteGate",
    "begin_immediate",
    "checkpointer",
    "connect",
    "disk_has_room",
    "disk_is_full",
    "probe_write",
    "unavailable",
    "writer_connection",
]

WRITER_CACHE_KIB = 64 * 1024  # the writer's page cache: the hot leaf pages of every errand
# Checkpoints run in their own thread, off the writer's path (see checkpointer).
CHECKPOINT_INTERVAL = 0.5  # seconds between two checkpoints at most
WAL_RESTART_FRAMES = 16_384  # past this many WAL frames (64 MiB), restart the WAL
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # what a restarted WAL file is truncated back to
BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write lock
# ... once a write has already found the lock held past BUSY_TIMEOUT: the next ones
# wait this long before they answer "locked" (a person's request need not wait 30 s
# again; the lock is looked at again on every write, and by the writer's probe)
UNAVAILABLE_WAIT = 1.0
_FULL_BELOW = 64 * 1024  # bytes free under which an I/O error is taken for a full disk
_ROOM = 1024 * 1024  # bytes free from which a full disk is taken to be over
_WAITS = "(errands up waits for it and goes on by itself)"
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_IO_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.ENXIO, errno.ESTALE})
_NO_ACCESS = (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM)


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return None
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserve
    return free * st.f_frsize


def disk_is_full(path: str) -> bool:
    """Is the file system holding *path* (all but) out of space for this process?"""
    free = _free_bytes(path)
    return free is not None and free < _FULL_BELOW


def disk_has_room(path: str) -> bool:
    """Is there room again on the file system holding *path*, after it was full? (A
    full disk still takes writes that fit in the WAL's free frames: a write that went
    through does not mean the disk is no longer full.)"""
    free = _free_bytes(path)
    return free is None or free >= _ROOM


def unavailable(exc: BaseException, path: str) -> StoreUnavailable | None:
    """The condition of the world *exc* reports about the store at *path*, as the
    error errands tells a person; None when *exc* is not one (a bug, a damaged file).

    SQLITE_FULL (or ENOSPC, EDQUOT) is a full disk; SQLITE_BUSY/LOCKED past the busy
    wait is another process's write lock; an SQLITE_IOERR on a disk with no space left
    is a full disk too (SQLite reports a shared-memory file it cannot grow as an I/O
    error); any other I/O error, a read-only file, or an existing store that cannot be
    opened is an I/O error. A damaged file (SQLITE_CORRUPT, NOTADB) is not here.
    """
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if not isinstance(code, int):
            return None
        name = getattr(exc, "sqlite_errorname", None) or f"SQLite error {code}"
        primary = code & 0xFF
        if primary == sqlite3.SQLITE_FULL:
            return _full(path)
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL):
            return StoreUnavailable(
                f"another process holds the write lock on {path}; nothing was written -- "
                f"try again when it lets go {_WAITS}",
                "locked",
            )
        if primary == sqlite3.SQLITE_IOERR:
            return _full(path) if disk_is_full(path) else _io(path, f"an I/O error ({name})")
        if primary == sqlite3.SQLITE_READONLY:
            return _io(path, f"a file it cannot write to ({name})")
        if primary == sqlite3.SQLITE_CANTOPEN and os.path.exists(path):
            return _io(path, f"a file it cannot open ({name})")
        return None
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return _full(path)
        if exc.errno in _IO_ERRNOS:
            return _io(path, f"an I/O error ({exc.strerror})")
    return None


def _mapped(exc: BaseException, path: str, *, opening: bool = False) -> BaseException:
    """*exc* as StoreUnavailable, if it is a condition of the world; else *exc*. While
    the writer opens the store (*opening*), a file it may not write or open is left as
    it is, for the open-time checks to explain (:func:`errands.store.health.explain`)."""
    code = getattr(exc, "sqlite_errorcode", 0) if isinstance(exc, sqlite3.Error) else 0
    if opening and isinstance(code, int) and code & 0xFF in _NO_ACCESS:
        return exc
    return unavailable(exc, path) or exc


def _full(path: str) -> StoreUnavailable:
    return StoreUnavailable(
        f"the disk holding {path} is full; nothing was written -- free some space {_WAITS}",
        "disk_full",
    )


def _io(path: str, what: str) -> StoreUnavailable:
    return StoreUnavailable(
        f"the disk holding {path} reports {what}; nothing was written -- check the disk {_WAITS}",
        "io_error",
    )


def connect(path: str, *, opening: bool = False) -> sqlite3.Connection:
    """A connection to the store at *path*; a condition of the world is raised as
    StoreUnavailable (see :func:`_mapped` for *opening*)."""
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
        )
    except sqlite3.Error as exc:
        raise _mapped(exc, path, opening=opening) from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    except sqlite3.Error as exc:
        conn.close()
        raise _mapped(exc, path, opening=opening) from exc
    return conn


def writer_connection(
    path: str, migrate: Callable[[sqlite3.Connection], object]
) -> sqlite3.Connection:
    """The writer's connection, with the schema brought up to date."""
    conn = connect(path, opening=True)
    try:
        # purged content is overwritten on disk, not just unlinked
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        # the checkpointer thread checkpoints, not the writer's COMMIT
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        migrate(conn)
        # the writer waits for other processes' locks itself (see begin_immediate)
        conn.execute("PRAGMA busy_timeout = 0")
    except sqlite3.Error as exc:
        conn.close()
        raise _mapped(exc, path, opening=True) from exc
    except BaseException:
        conn.close()
        raise
    return conn


GATE_POLL = 0.0005  # seconds between looks at a write gate another process holds
FAVOURED_POLL = 0.0001  # (the favoured process's: the server, with a person's decisions)


class WriteGate:
    """One errands writer at a time across processes (``errands up --workers``), handed
    over in turn as soon as it is free.

    SQLite's own write lock is the guarantee; but a writer that finds it held can only
    try again later, and with several processes writing all the time the wait grows
    until a person's approve waits hundreds of milliseconds behind the workers' batches.
    Each errands writer therefore takes an advisory ``flock`` on ``FILE-gate`` around its
    transaction. A writer that finds it taken waits in turn: it holds a shared lock on
    ``FILE-gate-want`` while it looks again every ``GATE_POLL`` seconds, and a writer
    that could take the gate at once (the one that just committed, say) first checks
    that nobody is waiting -- so a busy process cannot keep the gate from the others.
    The favoured process (:meth:`favour`, the server) looks more often, so it is
    usually next; while it waits it also holds a shared lock on ``FILE-gate-urgent``,
    which the holder's writer looks at as it stages (:meth:`urgent`) and, seeing it,
    commits what it has staged and leaves the rest of its batch for its next turn -- a
    person's decision waits for part of a batch, not a whole one. A process that is not
    errands (a backup, the ``sqlite3`` shell) does
    not take the gate; it is met by SQLite's lock as before. Within one process the
    gate is always free: a few ``flock`` calls a batch."""

    def __init__(self, path: str) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self.fd = os.open(f"{path}-gate", flags, 0o600)
        self.want = os.open(f"{path}-gate-want", flags, 0o600)
        self.hurry = os.open(f"{path}-gate-urgent", flags, 0o600)
        self.poll = GATE_POLL
        self.held = False
        self.favoured = False

    def favour(self) -> None:
        self.poll = FAVOURED_POLL
        self.favoured = True

    def urgent(self) -> bool:
        """Does the favoured process wait for the gate? (Asked by its holder.)"""
        return not self.favoured and _locked_by_others(self.hurry)

    def acquire(self, wait: float, while_waiting: Callable[[], None]) -> None:
        """Take the gate, waiting in turn up to *wait* seconds; past that, go on without
        it (the transaction then meets SQLite's lock, whose wait ends in a clear
        condition)."""
        if not self._others_wait() and self._try():
            return
        while_waiting()
        fcntl.flock(self.want, fcntl.LOCK_SH)  # (in the queue)
        if self.favoured:
            fcntl.flock(self.hurry, fcntl.LOCK_SH)  # (the holder cuts its batch short)
        try:
            deadline = time.monotonic() + wait
            while not self._try() and time.monotonic() < deadline:
                time.sleep(self.poll)
        finally:
            if self.favoured:
                fcntl.flock(self.hurry, fcntl.LOCK_UN)
            fcntl.flock(self.want, fcntl.LOCK_UN)

    def _others_wait(self) -> bool:
        return _locked_by_others(self.want)

    def _try(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        os.close(self.fd)
        os.close(self.want)
        os.close(self.hurry)


def _locked_by_others(fd: int) -> bool:
    """Does another process hold a lock on *fd* (a waiter's shared lock, say)?"""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def begin_immediate(
    conn: sqlite3.Connection, while_waiting: Callable[[], None], *, known_locked: bool = False
) -> None:
    """BEGIN IMMEDIATE, waiting (up to ``BUSY_TIMEOUT``; ``UNAVAILABLE_WAIT`` when the last
    try already found the lock held that long, *known_locked*) while another process
    writes; *while_waiting* runs before each wait (the writer tells its committed
    callers). Past the wait SQLite's SQLITE_BUSY is raised (see :func:`unavailable`)."""
    wait = UNAVAILABLE_WAIT if known_locked else BUSY_TIMEOUT
    deadline = 0.0
    delay = 0.001
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            while_waiting()
            now = time.monotonic()
            if not deadline:
                deadline = now + wait
            elif now >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def probe_write(conn: sqlite3.Connection) -> None:
    """Write a row and take it away again, in the caller's transaction: pages that go to
    the WAL (and its sync) on commit, and nothing left in the store."""
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('write_probe', ?)", (repr(time.time()),)
    )
    conn.execute("DELETE FROM meta WHERE key = 'write_probe'")


def checkpointer(
    conn: sqlite3.Connection,
    committed: threading.Event,
    stopping: threading.Event,
    restart_wal: Callable[[], None],
) -> None:
    """Copy committed WAL frames into the database file, beside the writer.

    SQLite's automatic checkpoint would run inside the writer's COMMIT, holding up
    every append of the next batch. Here a PASSIVE checkpoint (which never blocks the
    writer) runs after commits, at most every ``CHECKPOINT_INTERVAL``. Under continuous
    load the WAL is never found fully copied when a transaction starts, so it is never
    reset and keeps growing; past ``WAL_RESTART_FRAMES`` this thread asks the writer to
    restart it (*restart_wal*), which the writer does between two batches, when little
    is left to copy. (A RESTART checkpoint from this thread would have to win the write
    lock from a writer that never pauses.) Durability is unaffected: a commit is
    durable once its WAL frames are synced, before any checkpoint.
    """
    try:
        while not stopping.is_set():
            if not committed.wait(timeout=1.0):
                continue
            if stopping.wait(CHECKPOINT_INTERVAL):  # (a pause close can cut short)
                return
            committed.clear()
            try:
                _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                continue  # busy or interrupted: the next commit tries again
            if frames >= WAL_RESTART_FRAMES:
                restart_wal()
    finally:
        conn.close()
