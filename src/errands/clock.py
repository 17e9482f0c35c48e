"""The one clock errands reads: wall time for what people see, steady time for durations.

Two kinds of time, never mixed:

- **wall** (:meth:`Clock.wall`, seconds since the epoch): timestamps in the log, calendar
  days (the daily budget, schedules), anything a person reads. It can step -- NTP, a
  person fixing the date, a VM resumed -- so no duration is ever measured with it.
- **steady** (:meth:`Clock.steady`, seconds since the host booted, suspend included):
  durations -- deadlines, timeouts, wall-time limits inside a run, backoff -- and, on the
  SQLite store, lease and budget-hold expiry. Every process on the host reads the same
  steady clock (``CLOCK_BOOTTIME``), so one process's "expires at" means the same to
  another; it restarts at boot, which :meth:`Clock.boot_id` tells apart (a lease from an
  earlier boot has no living holder). On PostgreSQL the database's own time is the
  lease clock instead (one clock source per store).

Tests use :class:`FakeClock`, whose wall clock can be stepped forward or back without
moving its steady clock -- the fault that an ``time.time()``-based lease cannot survive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

__all__ = [
    "LOCAL",
    "SYSTEM",
    "Clock",
    "FakeClock",
    "ReadingClock",
    "SystemClock",
    "date_line",
    "zone",
]


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch (may step; for timestamps and calendars only)."""
        ...

    def steady(self) -> float:
        """Seconds on a clock that never steps, shared by every process on the host."""
        ...

    def boot_id(self) -> str:
        """Names the current boot: steady readings from another boot mean nothing."""
        ...

    async def sleep(self, seconds: float) -> None: ...


_STEADY = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def _read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: approximate the boot by when it happened, to the minute
        return f"boot@{round((time.time() - time.clock_gettime(_STEADY)) / 60)}"


class SystemClock:
    """The host's clocks."""

    def __init__(self) -> None:
        self._boot = _read_boot_id()

    def wall(self) -> float:
        return time.time()

    def steady(self) -> float:
        return time.clock_gettime(_STEADY)

    def boot_id(self) -> str:
        return self._boot

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM: Clock = SystemClock()


class FakeClock:
    """A clock a test moves by hand. :meth:`advance` moves both clocks (time passes);
    :meth:`step_wall` moves only the wall clock (someone changed the date); :meth:`reboot`
    starts a new boot with the steady clock back near zero. :meth:`sleep` advances the
    clock instead of waiting (and yields once, so other tasks run)."""

    def __init__(self, wall: float = 1_800_000_000.0, steady: float = 1_000.0) -> None:
        self._wall = wall
        self._steady = steady
        self._boot = "boot-1"

    def wall(self) -> float:
        return self._wall

    def steady(self) -> float:
        return self._steady

    def boot_id(self) -> str:
        return self._boot

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not run backwards; step_wall() steps the wall clock"
        self._wall += seconds
        self._steady += seconds

    def step_wall(self, seconds: float) -> None:
        self._wall += seconds

    def reboot(self, downtime: float = 60.0) -> None:
        self._wall += downtime
        self._steady = 5.0
        self._boot = f"boot-{int(self._boot.rpartition('-')[2]) + 1}"

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


class ReadingClock:
    """A clock whose wall and steady clocks both read *now()* -- for a test that keeps
    one number as "the time" (a state machine's model) and wants the store to read it."""

    def __init__(self, now: Callable[[], float], boot_id: str = "boot-1") -> None:
        self._now = now
        self._boot = boot_id

    def wall(self) -> float:
        return self._now()

    def steady(self) -> float:
        return self._now()

    def boot_id(self) -> str:
        return self._boot

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


LOCAL = "local"  # the time zone of the machine errands runs on


def zone(name: str) -> tzinfo | None:
    """The time zone called *name* (an IANA name such as ``Europe/Paris``; ``local``:
    the machine's, as None). ``ZoneInfoNotFoundError`` / ``ValueError`` for a bad name."""
    return None if name == LOCAL else ZoneInfo(name)


def date_line(wall: float, zone_name: str) -> str:
    """What the model is told about the date: the local date at *wall* in the zone --
    the day only, so that it changes once a day (the prompt's prefix stays cacheable)."""
    tz = zone(zone_name)
    local = datetime.fromtimestamp(wall, tz) if tz is not None else datetime.fromtimestamp(wall)
    label = zone_name if tz is not None else (local.astimezone().tzname() or "local time")
    return f"(Today is {local:%A} {local.day} {local:%B %Y}, time zone {label}.)"
