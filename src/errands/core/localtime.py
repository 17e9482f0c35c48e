"""Times as a person reads them: in their zone (``timezone`` in errands.toml; ``local``
is the machine's), short, with the zone's abbreviation -- ``Tue 8 Dec 08:00 CET``.

Shared by the CLI and the inbox, so a schedule's next run reads the same in both.
"""

from __future__ import annotations

import time
from datetime import datetime

from errands.clock import zone

__all__ = ["local_time"]


def local_time(ts: float | None, zone_name: str = "local", *, now: float | None = None) -> str:
    """*ts* (seconds since the epoch) in the zone *zone_name*: ``Tue 8 Dec 08:00 CET``;
    seconds when it is not on the minute, the year when it is not this year; ``—`` for
    None. An unknown zone name reads as the machine's."""
    if ts is None:
        return "—"
    try:
        tz = zone(zone_name)
    except (ValueError, LookupError):
        tz = None
    try:
        moment = datetime.fromtimestamp(ts, tz) if tz is not None else datetime.fromtimestamp(ts)
        if tz is None:
            moment = moment.astimezone()
    except (ValueError, OverflowError, OSError):  # (beyond what datetime holds)
        return f"{ts:.0f} s after 1970 (UTC)"
    this_year = datetime.fromtimestamp(time.time() if now is None else now, moment.tzinfo).year
    day = f"{moment:%a} {moment.day} {moment:%b}"
    if moment.year != this_year:
        day += f" {moment.year}"
    clock = f"{moment:%H:%M:%S}" if moment.second else f"{moment:%H:%M}"
    return f"{day} {clock} {moment.tzname() or ''}".rstrip()
