"""The processes that run errands from a PostgreSQL store, as ``errands workers`` lists
them.

Nothing extra runs for it: a runner renews its leases every third of the lease time
(whether it holds any or not), and the renewal upserts its row in ``workers`` -- its
heartbeat, on the lease clock every host shares. A worker is *live* while its last
heartbeat is younger than its lease time (after that, its leases are free for others to
take); a worker that stops cleanly deletes its row, and one that died is shown ``dead``
until :data:`FORGET_SECONDS` after its last heartbeat, when the next renewal anywhere
deletes it. Each lease records when its owner took it (``taken_at``), for the age shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FORGET_SECONDS", "Held", "WorkerRow", "beat", "gone", "listing"]

FORGET_SECONDS = 600.0  # a dead worker is listed this long after its last heartbeat


@dataclass(frozen=True)
class Held:
    errand_id: str
    age: float  # seconds this worker has held the lease
    expires_in: float  # seconds until it expires unless renewed (negative: expired)


@dataclass(frozen=True)
class WorkerRow:
    owner: str  # HOST:PID:NAME, as the leases name it
    host: str
    pid: int
    name: str
    started_at: float  # wall time of its first heartbeat
    seen_ago: float  # seconds since its last heartbeat
    lease_seconds: float
    held: list[Held] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.seen_ago <= self.lease_seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "last_heartbeat_seconds_ago": round(self.seen_ago, 3),
            "lease_seconds": self.lease_seconds,
            "live": self.live,
            "errands": [
                {
                    "id": h.errand_id,
                    "lease_age_seconds": round(h.age, 3),
                    "lease_expires_in_seconds": round(h.expires_in, 3),
                }
                for h in self.held
            ],
        }


def split_owner(owner: str) -> tuple[str, int, str]:
    """(host, pid, name) of a lease owner ``HOST:PID:NAME`` (pid 0 if not one)."""
    host, _, rest = owner.partition(":")
    pid, _, name = rest.partition(":")
    return host, int(pid) if pid.isdigit() else 0, name


def beat(conn: Any, owner: str, now: float, wall: float, lease_seconds: float) -> None:
    """*owner* is alive at *now* (the lease clock); the long dead are forgotten."""
    conn.execute(
        "INSERT INTO workers(owner, started_at, seen_at, lease_seconds) VALUES (%s,%s,%s,%s)"
        " ON CONFLICT (owner) DO UPDATE SET seen_at = EXCLUDED.seen_at,"
        " lease_seconds = EXCLUDED.lease_seconds",
        (owner, wall, now, lease_seconds),
    )
    conn.execute("DELETE FROM workers WHERE seen_at < %s", (now - FORGET_SECONDS,))


def gone(conn: Any, owner: str) -> None:
    """*owner* stopped cleanly."""
    conn.execute("DELETE FROM workers WHERE owner = %s", (owner,))


def listing(conn: Any, now: float) -> list[WorkerRow]:
    """Every worker with a heartbeat in the last :data:`FORGET_SECONDS`, live first,
    each with the leases it holds (oldest first)."""
    rows = conn.execute(
        "SELECT owner, started_at, seen_at, lease_seconds FROM workers"
        " WHERE seen_at >= %s ORDER BY owner",
        (now - FORGET_SECONDS,),
    ).fetchall()
    leases: dict[str, list[Held]] = {}
    for errand_id, owner, expires_at, taken_at in conn.execute(
        "SELECT errand_id, owner, expires_at, taken_at FROM leases ORDER BY taken_at, errand_id"
    ).fetchall():
        age = 0.0 if taken_at is None else now - float(taken_at)
        leases.setdefault(str(owner), []).append(Held(str(errand_id), age, float(expires_at) - now))
    found = []
    for owner, started_at, seen_at, lease_seconds in rows:
        host, pid, name = split_owner(str(owner))
        found.append(
            WorkerRow(
                owner=str(owner),
                host=host,
                pid=pid,
                name=name,
                started_at=float(started_at),
                seen_ago=now - float(seen_at),
                lease_seconds=float(lease_seconds),
                held=leases.get(str(owner), []),
            )
        )
    return sorted(found, key=lambda w: (not w.live, w.owner))
