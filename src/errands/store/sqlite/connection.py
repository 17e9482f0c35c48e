"""SQLite connections for the store: WAL, ``synchronous=FULL``, and the writer's own
settings; waiting for another process's write lock; the checkpointer."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

__all__ = [
    "BUSY_TIMEOUT",
    "CHECKPOINT_INTERVAL",
    "WAL_RESTART_FRAMES",
    "begin_immediate",
    "checkpointer",
    "connect",
    "writer_connection",
]

WRITER_CACHE_KIB = 64 * 1024  # the writer's page cache: the hot leaf pages of every errand
# Checkpoints run in their own thread, off the writer's path (see checkpointer).
CHECKPOINT_INTERVAL = 0.5  # seconds between two checkpoints at most
WAL_RESTART_FRAMES = 16_384  # past this many WAL frames (64 MiB), restart the WAL
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # what a restarted WAL file is truncated back to
BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write lock


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def writer_connection(
    path: str, migrate: Callable[[sqlite3.Connection], object]
) -> sqlite3.Connection:
    """The writer's connection, with the schema brought up to date."""
    conn = connect(path)
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
    except BaseException:
        conn.close()
        raise
    return conn


def begin_immediate(conn: sqlite3.Connection, while_waiting: Callable[[], None]) -> None:
    """BEGIN IMMEDIATE, waiting (up to ``BUSY_TIMEOUT``) while another process writes;
    *while_waiting* runs before each wait (the writer tells its committed callers)."""
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
                deadline = now + BUSY_TIMEOUT
            elif now >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


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
