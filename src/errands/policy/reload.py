"""``policy.toml`` as it is now: re-read when it changes, in every running process.

:class:`PolicyFile` is the policy hook a harness uses. Each check first looks -- at
most once a second, with one ``stat`` -- whether the file changed (its inode, size,
modification or change time); if it did, it is read again. A file that is not valid is
refused: the policy in force stays, and the refusal is logged once (``errands up``
shows it on stderr; so does a foreground ``errands run``). A file that disappeared is
treated the same way: the policy in force stays. So a change reaches every running
errands process within :data:`WITHIN` seconds, without a restart.

Every process also looks on a timer (one daemon thread per process, for every
:class:`PolicyFile` it holds), not only when it checks a call: otherwise a process that
checked nothing while a valid change came and went -- one of ``errands up``'s workers, say
-- would keep an older policy when the file next turned invalid, and processes would
disagree about the policy in force.

``errands policy reload`` validates the file and touches it, which is all a running
process needs to notice it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from errands.config import ConfigError
from errands.policy.hook import PolicyCall, Verdict
from errands.policy.rules import Policy, load_policy

__all__ = ["INTERVAL", "WITHIN", "PolicyFile", "touch"]

log = logging.getLogger("errands.policy")

INTERVAL = 1.0  # seconds between two looks at the file (a look is one stat)
WITHIN = 2.0  # a change reaches every running process within this many seconds (documented)

Signature = tuple[int, int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PolicyFile:
    """The policy in ``home/policy.toml``, kept current (see the module docstring).

    Built from the file as it is (written with the commented defaults if missing); a
    file that is not valid at this point raises :class:`~errands.errors.ConfigError`, as
    there is no policy in force to keep.
    """

    interval = INTERVAL

    def __init__(self, home: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.home = home
        self.path = home / "policy.toml"
        self._clock = clock
        self._signature = _signature(self.path)  # before reading: a later write is seen
        self._policy = load_policy(home)
        if self._signature is None:  # (it was just written)
            self._signature = _signature(self.path)
        self._next_look = clock() + self.interval
        self._lock = threading.Lock()
        self.reloads = 0  # how many times a changed file was taken
        self.refusals = 0  # how many changed files were refused
        _watch(self)

    @property
    def current(self) -> Policy:
        """The policy in force."""
        return self._policy

    def check(self, call: PolicyCall) -> Verdict:
        now = self._clock()
        if now >= self._next_look:
            self._next_look = now + self.interval
            self.refresh()
        return self._policy.check(call)

    def refresh(self) -> bool:
        """Read the file again if it changed; True if a new policy is now in force."""
        if not self._lock.acquire(blocking=False):
            return False  # another thread is looking right now
        try:
            signature = _signature(self.path)
            if signature == self._signature:
                return False
            self._signature = signature
            if signature is None:
                self.refusals += 1
                log.warning("%s was removed; the policy read before stays in force", self.path)
                return False
            try:
                policy = load_policy(self.home, create=False)
            except ConfigError as exc:
                self.refusals += 1
                log.warning("%s; the policy read before stays in force", exc)
                return False
            self._policy = policy
            self.reloads += 1
            log.info("%s changed: read again (%d rules)", self.path, len(policy.rules))
            return True
        finally:
            self._lock.release()


def touch(path: Path) -> None:
    """Mark *path* changed for every :class:`PolicyFile` watching it (a newer mtime)."""
    st = os.stat(path)
    now = time.time_ns()
    os.utime(path, ns=(now, max(now, st.st_mtime_ns + 1)))


_watched: weakref.WeakSet[PolicyFile] = weakref.WeakSet()
_watcher: threading.Thread | None = None
_watch_lock = threading.Lock()


def _watch(policy: PolicyFile) -> None:
    """Have this process's watcher thread look at *policy*'s file every second."""
    global _watcher
    with _watch_lock:
        _watched.add(policy)
        if _watcher is None or not _watcher.is_alive():
            _watcher = threading.Thread(target=_look_forever, name="errands-policy", daemon=True)
            _watcher.start()


def _look_forever() -> None:
    while True:
        time.sleep(INTERVAL)
        for policy in list(_watched):
            try:
                policy.refresh()
            except Exception:  # (a look must never end the watch for the others)
                log.exception("looking at %s failed", policy.path)
