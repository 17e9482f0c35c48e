"""The policy kept in a shared store (PostgreSQL): every process and host decides alike.

With the store on PostgreSQL, ``policy.toml``'s text lives in the store, versioned
(:class:`~errands.store.postgres.policy.PolicyVersions`): the newest version is the
policy in force everywhere. The first process that finds none stores the home's
``policy.toml`` (written with the commented defaults if missing) as version 1. After
that a change is a new version -- ``errands policy reload`` (the home's file, checked),
``errands policy revoke NAME``, a standing approval from any channel -- and reaches every
running process within :data:`~errands.policy.reload.WITHIN` seconds: each
:class:`StoredPolicy` ``LISTEN``s for the change's ``NOTIFY`` and takes the new version at
once, and also looks every :attr:`StoredPolicy.interval` seconds (the net under a lost
notification). A version that does not load here (written by a newer errands) is
refused, logged, and the policy in force stays -- as with an invalid ``policy.toml``.

The check itself never waits for the database: it reads the policy in force, which a
thread of its own replaces.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from errands.config import ConfigError
from errands.errors import StoreError
from errands.policy.hook import PolicyCall, Verdict
from errands.policy.reload import INTERVAL, PolicyFile
from errands.policy.rules import DEFAULT_POLICY_TOML, Policy, parse_policy

if TYPE_CHECKING:
    from errands.store.postgres.store import PostgresStore
    from errands.store.protocol import Listening

__all__ = ["StoredPolicy", "policy_for", "seed_text", "stored_path"]

log = logging.getLogger("errands.policy")


def policy_for(home: Path, store: object) -> PolicyFile | StoredPolicy:
    """The policy hook for a harness: the store's versions on a store that keeps them
    (PostgreSQL), else the home's ``policy.toml``."""
    if hasattr(store, "policies"):
        return StoredPolicy(store, home)  # type: ignore[arg-type]
    return PolicyFile(home)


def stored_path(version: int) -> Path:
    """How errors name a stored version (as a file's path names the file)."""
    return Path(f"policy version {version} in the store")


def seed_text(home: Path) -> str:
    """The text version 1 gets: the home's ``policy.toml``, or the defaults."""
    path = home / "policy.toml"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return DEFAULT_POLICY_TOML
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


class StoredPolicy:
    """The policy in force: the newest version *store* keeps (see the module docstring).

    Built from the newest version (storing the home's file as version 1 when there is
    none); one that does not load raises :class:`ConfigError`, as there is no policy
    in force to keep."""

    interval = INTERVAL

    def __init__(self, store: PostgresStore, home: Path) -> None:
        self.store = store
        self.home = home
        self.versions = store.policies
        newest = self.versions.newest()
        if newest is None:
            seed = seed_text(home)
            parse_policy(seed, home / "policy.toml")  # (a bad file is refused, not stored)
            self.versions.change(lambda old: seed if old is None else None, by="seed")
            newest = self.versions.newest()
            assert newest is not None
        self.version, text = newest
        self._policy = parse_policy(text, stored_path(self.version))
        self.reloads = 0  # versions taken after the first
        self.refusals = 0  # versions that did not load here
        self._look = threading.Event()
        self._closed = threading.Event()
        self.listening: Listening | None = self.listen()
        self._thread = threading.Thread(target=self._keep, name="errands-policy", daemon=True)
        self._thread.start()

    def listen(self) -> Listening | None:
        from errands.store.postgres.listen import POLICY

        return self.store.listen(lambda _channel, _payload: self._look.set(), (POLICY,))

    @property
    def current(self) -> Policy:
        """The policy in force."""
        return self._policy

    def check(self, call: PolicyCall) -> Verdict:
        return self._policy.check(call)

    def _keep(self) -> None:
        while not self._closed.is_set() and not getattr(self.store, "_closed", False):
            self._look.wait(self.interval)
            self._look.clear()
            try:
                self.refresh()
            except StoreError as exc:  # the store is down: the policy in force stays
                log.info("looking for a new policy version waits for the store: %s", exc)
        if self.listening is not None:
            self.listening.close()

    def refresh(self) -> bool:
        """Take the newest version if it is newer; True if a new policy is in force."""
        if self.versions.version() == self.version:
            return False
        newest = self.versions.newest()
        if newest is None or newest[0] == self.version:
            return False
        version, text = newest
        try:
            policy = parse_policy(text, stored_path(version))
        except ConfigError as exc:
            self.refusals += 1
            self.version = version  # (refused once, not at every look)
            log.warning("%s; the policy in force stays", exc)
            return False
        self._policy, self.version = policy, version
        self.reloads += 1
        log.info("policy version %d taken (%d rules)", version, len(policy.rules))
        return True

    def change(self, edit: Callable[[str], str], *, by: str) -> int:
        """Store *edit(text in force)* as a new version (checked as a whole policy
        first: a text that would not load is refused, nothing stored); this process
        takes it at once. Returns the version."""

        def checked(old: str | None) -> str:
            new = edit(old if old is not None else seed_text(self.home))
            parse_policy(new, Path("the policy"))
            return new

        stored = self.versions.change(checked, by=by)
        assert stored is not None
        self.refresh()
        return stored[0]

    def close(self) -> None:
        self._closed.set()
        self._look.set()
