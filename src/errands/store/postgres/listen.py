"""Notifications between the processes that share a PostgreSQL store.

A commit that makes something for another process to do -- an errand to claim, a
person's decision, a cancel, a sub-errand ending (its parent wakes), a timer set, a lease
given back, a new policy -- sends ``NOTIFY`` in its own transaction (so it is delivered
only if it commits, and never before). :class:`Listener` keeps one dedicated connection
``LISTEN``ing on those channels, in a thread of its own, and calls back at once.

Notifications are a hint, not a log: a connection that drops loses those sent meanwhile.
So the listener says whether it is connected (:attr:`Listener.connected`); while it is
not, its users poll as they would without it, and when it connects again it calls back
once on every channel (``payload`` :data:`RECONNECTED`): whatever was missed is looked
for. A connection cut silently (a partition) is found by a ``SELECT 1`` every
:data:`PING_SECONDS`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

__all__ = [
    "POLICY",
    "RECONNECTED",
    "WAKE",
    "Listener",
    "notify",
]

WAKE = "errands_wake"  # something became runnable or was written to (payload: what)
POLICY = "errands_policy"  # a new policy version (payload: its number)
RECONNECTED = "reconnected"  # the payload of the call back after a (re)connection
PING_SECONDS = 5.0  # a silent connection is checked this often
RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between two tries to connect (doubling)
CONNECT_TIMEOUT = 5

log = logging.getLogger("errands.store")

Notified = Callable[[str, str], None]  # (channel, payload), called on the listener's thread


def notify(conn: Any, channel: str, payload: str) -> None:
    """Send *payload* on *channel* in *conn*'s transaction (delivered at its commit)."""
    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class Listener:
    """``LISTEN`` on *channels* over one connection of its own, in a daemon thread;
    *notified(channel, payload)* is called on that thread (keep it short)."""

    ping_seconds = PING_SECONDS

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        notified: Notified,
        connect: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        # psycopg.connect's options: the store's session defaults (keepalives, a TCP user
        # timeout) so a session to a vanished host fails in seconds, not TCP's ~15 minutes
        self.connect = connect if connect is not None else {"connect_timeout": CONNECT_TIMEOUT}
        self.channels = list(channels)
        self.notified = notified
        self.connected = False
        self.connections = 0  # sessions opened (the first one included)
        self.backend_pid: int | None = None  # the session's server process (tests kill it)
        self._closed = threading.Event()
        self._up = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="errands-listen", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        """True once connected (within *timeout* seconds)."""
        return self._up.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2 * self.ping_seconds)

    def _run(self) -> None:
        pause = 0.0
        while not self._closed.is_set():
            try:
                self._listen()
                pause = 0.0
            except psycopg.Error as exc:
                if self.connected:
                    log.warning("listening for the store's notifications stopped: %s", exc)
                pause = min(max(2 * pause, RETRY_FIRST), RETRY_MAX)
            finally:
                self._down()
            self._closed.wait(pause)

    def _listen(self) -> None:
        conn = psycopg.connect(self.url, autocommit=True, **self.connect)
        self._conn = conn
        for channel in self.channels:
            conn.execute(f'LISTEN "{channel}"')
        self.backend_pid = conn.info.backend_pid
        self.connections += 1
        self.connected = True
        self._up.set()
        for channel in self.channels:  # whatever was sent while nobody listened
            self.notified(channel, RECONNECTED)
        pinged = time.monotonic()
        while not self._closed.is_set():
            for note in conn.notifies(timeout=min(1.0, self.ping_seconds)):
                self.notified(note.channel, note.payload)
            if time.monotonic() - pinged >= self.ping_seconds:
                conn.execute("SELECT 1")
                pinged = time.monotonic()

    def _down(self) -> None:
        self.connected = False
        self._up.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
