"""``wait``: the errand sleeps until a time, or until a message comes.

The call is not run like other tools: routing turns it into a ``sleeping`` event with
the time it wakes (:func:`wake_time`), the errand sleeps with no task, thread or model
call, and it wakes when the timer fires or a message arrives, whichever is first --
the call's result says which (:mod:`errands.engine.loop`). A restart changes nothing:
the timer is in the store, and one that fell due while errands was down fires at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from errands.tools.tool import ToolArgumentError, ToolError

__all__ = ["MAX_WAIT_SECONDS", "wait", "wake_time"]

MAX_WAIT_SECONDS = 366 * 86400  # a year: anything longer is a schedule's job


def wait(seconds: float | None = None, until: str | None = None, reason: str = "") -> str:
    """Pause this errand until a time, or until the person sends a message, whichever
    comes first; the result says which. Use it to wait for an answer or for a time of day.
    Give either seconds or until.

    Args:
        seconds: How long to wait, in seconds (at most a year).
        until: When to wake, as ISO 8601 with a UTC offset, e.g. 2026-12-09T09:00:00+01:00.
        reason: What the errand is waiting for (shown to the person).
    """
    raise ToolError("wait is carried out by errands itself, not called")


def wake_time(args: Mapping[str, Any], now: float) -> float:
    """When a ``wait`` with *args*, called at *now* (wall time), wakes; a clear
    :class:`ToolArgumentError` for anything else."""
    seconds, until = args.get("seconds"), args.get("until")
    if (seconds is None) == (until is None):
        raise ToolArgumentError("wait: give either seconds or until (one of them)")
    if seconds is not None:
        if not 0 < float(seconds) <= MAX_WAIT_SECONDS:
            raise ToolArgumentError(
                f"wait: seconds must be more than 0 and at most {MAX_WAIT_SECONDS} (a year)"
            )
        return now + float(seconds)
    try:
        when = datetime.fromisoformat(str(until).strip())
    except ValueError:
        raise ToolArgumentError(
            f"wait: until {until!r} is not an ISO 8601 time, e.g. 2026-12-09T09:00:00+01:00"
        ) from None
    if when.tzinfo is None:
        raise ToolArgumentError(
            f"wait: until {until!r} has no UTC offset; write it as 2026-12-09T09:00:00+01:00"
        )
    at = when.timestamp()
    if at - now > MAX_WAIT_SECONDS:
        raise ToolArgumentError("wait: until is more than a year away")
    return max(at, now)  # (a time already past wakes at once)
