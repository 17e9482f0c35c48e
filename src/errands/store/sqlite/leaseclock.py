"""The SQLite store's lease clock: the host's steady clock, and which boot it belongs to.

Leases and budget holds expire at a time on :meth:`errands.clock.Clock.steady` (seconds
since boot, the same for every process on the host, never stepped), so that a wall
clock stepped forward cannot make every lease look expired (and hand an errand whose
calls are in flight to a second process) and one stepped back cannot stall takeover.
The steady clock restarts at boot; the ``meta`` row ``lease_clock_boot`` names the
boot the stored times belong to, and the first open in a new boot forgets every lease
and hold (their holders died with the old boot).
"""

from __future__ import annotations

import sqlite3

from errands.clock import SYSTEM, Clock

__all__ = ["BOOT_KEY", "forget_other_boots", "to_lease_clock"]

BOOT_KEY = "lease_clock_boot"


def to_lease_clock(conn: sqlite3.Connection, clock: Clock = SYSTEM) -> None:
    """Migration 0004: the expiry times written on the wall clock, moved to the lease
    clock (a lease held by a running older errands keeps the time it has left)."""
    shift = clock.steady() - clock.wall()
    conn.execute("UPDATE leases SET expires_at = expires_at + ?", (shift,))
    conn.execute("UPDATE budget_holds SET expires_at = expires_at + ?", (shift,))
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (BOOT_KEY, clock.boot_id())
    )


def forget_other_boots(conn: sqlite3.Connection, clock: Clock = SYSTEM) -> bool:
    """At open: if the stored times belong to another boot, drop every lease and hold
    (nobody from that boot is alive). True if it did. Read first without the write
    lock: the common case (same boot) costs one indexed read."""
    boot = clock.boot_id()
    if _stored_boot(conn) == boot:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _stored_boot(conn) == boot:  # another process got there first
            conn.execute("ROLLBACK")
            return False
        conn.execute("DELETE FROM leases")
        conn.execute("DELETE FROM budget_holds")
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (BOOT_KEY, boot))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True


def _stored_boot(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (BOOT_KEY,)).fetchone()
    return None if row is None else str(row[0])
