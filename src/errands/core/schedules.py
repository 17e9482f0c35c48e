"""Schedules and watches: what they are, and when their slots fall -- pure, no I/O.

A **schedule** starts an ordinary errand at each of its *slots*: the times of a cron
expression evaluated in the schedule's time zone, the multiples of an interval, or one
time. A **watch** is a schedule whose slots are checks: errands fetches a page without
the model and starts an errand only when what it extracts from the page has new items.

Times are seconds since the epoch (UTC); a slot is a whole second. A slot's run is keyed
by ``(schedule, slot)`` in the store, which is what makes it run exactly once whatever
restarts, crashes or second processes happen (:mod:`errands.engine.scheduler`).

Cron expressions are evaluated by ``cronsim`` (the library healthchecks.io runs on) in
the schedule's zone, with Debian cron's daylight-saving rules: a time that does not
exist on the spring-forward day (02:30 in Europe/Paris) runs once, at the first minute
that exists (03:00); a time that happens twice on the fall-back day runs once, at its
first occurrence. Expressions with a wildcard hour or minute (``*/30 * * * *``) run at
every instant they match, both occurrences included.

:func:`plan` decides, for a schedule whose first unhandled slot is *due_at*, what to do
at *now*: which slots start a run, which are skipped (and why), and the next slot.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field

from errands.errors import UserError

__all__ = [
    "MIN_EVERY",
    "CatchUp",
    "Overlap",
    "Plan",
    "ScheduleError",
    "ScheduleKind",
    "ScheduleSpec",
    "ScheduleStatus",
    "check_spec",
    "describe",
    "due_slots",
    "first_slot",
    "format_duration",
    "jitter",
    "local_zone_name",
    "next_slot",
    "parse_at",
    "parse_duration",
    "plan",
    "resolve_zone",
]

ScheduleKind = Literal["cron", "every", "at", "watch"]
CatchUp = Literal["one", "all", "skip"]
Overlap = Literal["skip", "allow"]

MIN_EVERY = 1.0  # the shortest interval (tests and demos); a watch's checks are cheap
MAX_EVERY = 366 * 86400.0
MAX_AHEAD = 10 * 366 * 86400.0  # an ``at`` at most ten years ahead
MAX_CATCH_UP = 100  # catch_up = "all" starts at most this many missed runs at once
MAX_COUNT = 100_000  # missed cron slots counted at most (a year of every minute is 525,600)
GRACE = 60.0  # a slot at most this late (or half an interval) is on time, not missed
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


class ScheduleError(UserError):
    """A schedule's definition is not valid; *field* names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ScheduleSpec(BaseModel):
    """A schedule as a person defined it (kept as JSON in the store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: ScheduleKind
    text: str  # what each run is asked to do (for a watch: what to do with a change)
    cron: str | None = None
    tz: str = "UTC"  # an IANA zone, resolved when the schedule was made
    every: float | None = None  # seconds (every, watch)
    at: float | None = None  # a time (at)
    anchor: float = 0.0  # intervals count from here (when the schedule was made)
    # a watch: what to fetch and what to extract from it
    url: str | None = None
    select: str | None = None  # a CSS selector
    json_path: str | None = None  # a JSONPath (RFC 9535)
    headers: dict[str, str] = Field(default_factory=dict)  # header -> "secret:NAME"
    # each run
    model: str = ""  # pinned when the schedule was made
    max_cost_usd: float | None = None  # per run
    daily_usd: float | None = None  # every run of the schedule, per day (person's zone)
    max_steps: int | None = None  # per run (None: the config's default)
    tools: list[str] | None = None  # only these tools (None: every tool)
    mode: Literal["plan"] | None = None  # each run in plan mode (errands.core.plan)
    catch_up: CatchUp = "one"
    overlap: Overlap = "skip"
    by: str = "local"
    created_at: float = 0.0


class ScheduleStatus(BaseModel):
    """What the scheduler keeps about a schedule between slots (not an event log: a
    one-second watch that sees nothing new writes no event)."""

    model_config = ConfigDict(extra="forbid")

    last_slot: float | None = None  # the newest slot handled (run, skipped or checked)
    last_run: str | None = None  # the errand of the newest run
    last_run_slot: float | None = None
    runs: int = 0
    skipped: int = 0
    checks: int = 0  # watches: checks made
    changes: int = 0  # watches: checks that found new items
    last_check_at: float | None = None
    baseline: bool = False  # watches: the first check has recorded what is there
    etag: str | None = None
    last_modified: str | None = None
    errors: int = 0  # failures in a row (a watch's fetch; a run that could not start)
    last_error: str = ""
    last_error_at: float | None = None
    retry_at: float | None = None  # backing off until then
    note: str = ""  # a watch's new items that wait (its daily budget is spent), and why


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now: start these runs (slot, slots missed before it), log these skips
    (slot, how many, why), and look again at *next_at* (None: the schedule is over)."""

    runs: list[tuple[float, int]] = field(default_factory=list)
    skips: list[tuple[float, int, str]] = field(default_factory=list)
    next_at: float | None = None


# ------------------------------------------------------------------ parsing input


def parse_duration(text: str, field: str = "every") -> float:
    """``30m``, ``1h30m``, ``90s``, ``1d``, ``2w`` or a number of seconds -> seconds."""
    raw = text.strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        parts = _DURATION.findall(raw)
        if not parts or _DURATION.sub("", raw).strip():
            raise ScheduleError(
                field, f"{field}: {text!r} is not a duration; write e.g. 30s, 15m, 1h30m or 1d"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds == seconds or seconds < MIN_EVERY:  # (NaN, 0, negative, too short)
        raise ScheduleError(field, f"{field}: {text!r} is shorter than the minimum, 1s")
    if seconds > MAX_EVERY:
        raise ScheduleError(field, f"{field}: {text!r} is longer than a year")
    return seconds


def format_duration(seconds: float) -> str:
    """3600 -> ``1h``, 5400 -> ``1h30m``, 45 -> ``45s``."""
    left, out = round(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out.append(f"{left // size}{unit}")
            left %= size
    return "".join(out) or "0s"


def local_zone_name() -> str:
    """The machine's IANA time zone (``TZ``, else ``/etc/localtime``), else ``UTC``."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    with_file = Path("/etc/timezone")
    if with_file.is_file():
        candidates.append(with_file.read_text(errors="replace").strip())
    for name in candidates:
        if name and _zone(name) is not None:
            return name
    return "UTC"


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def resolve_zone(name: str | None, default: str) -> str:
    """The zone a schedule keeps: *name*, or *default* (the person's ``timezone``;
    ``local`` is the machine's) -- an IANA name, or a :class:`ScheduleError`."""
    chosen = (name or default or "local").strip()
    if chosen == "local":
        chosen = local_zone_name()
    if _zone(chosen) is None:
        raise ScheduleError(
            "tz", f"tz: unknown time zone {chosen!r}; use an IANA name such as Europe/Paris"
        )
    return chosen


def parse_at(text: str, tz: str, *, field: str = "at", need_offset: bool = False) -> float:
    """An ISO 8601 time -> seconds since the epoch; one without an offset is read in
    *tz* (refused with *need_offset*)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(
            field, f"{field}: {text!r} is not an ISO 8601 time, e.g. 2026-12-08T09:00+01:00"
        ) from None
    if when.tzinfo is None:
        if need_offset:
            raise ScheduleError(
                field, f"{field}: {text!r} has no UTC offset; write e.g. 2026-12-08T09:00+01:00"
            )
        when = when.replace(tzinfo=ZoneInfo(tz))
    return when.timestamp()


# ------------------------------------------------------------------ validity


def check_spec(spec: ScheduleSpec, now: float) -> None:
    """Refuse a definition that cannot work, naming the field (nothing is written)."""
    if not _NAME.fullmatch(spec.name):
        raise ScheduleError(
            "name",
            f"name: {spec.name!r} is not a schedule name; use letters, digits, '-', '_' "
            "or '.' (at most 64, starting with a letter or digit)",
        )
    if not spec.text.strip():
        raise ScheduleError("text", "text: say what each run should do")
    if _zone(spec.tz) is None:
        raise ScheduleError("tz", f"tz: unknown time zone {spec.tz!r}")
    needs = {"cron": "cron", "every": "every", "at": "at", "watch": "every"}[spec.kind]
    given = {"cron": spec.cron, "every": spec.every, "at": spec.at}
    if given[needs] is None:
        raise ScheduleError(needs, f"{needs}: a {spec.kind} schedule needs one")
    for other, value in given.items():
        if other != needs and value is not None:
            raise ScheduleError(other, f"{other}: a {spec.kind} schedule takes no {other}")
    if spec.kind == "cron":
        assert spec.cron is not None
        if len(spec.cron.split()) != 5:
            raise ScheduleError(
                "cron", f"cron: {spec.cron!r} needs 5 fields: minute hour day month weekday"
            )
        try:
            CronSim(spec.cron, datetime.fromtimestamp(now, ZoneInfo(spec.tz)))
        except (CronSimError, ValueError) as exc:
            raise ScheduleError("cron", f"cron: {spec.cron!r} is not valid: {exc}") from None
        if next_slot(spec, now) is None:
            raise ScheduleError("cron", f"cron: {spec.cron!r} never matches a date")
    if spec.every is not None and not MIN_EVERY <= spec.every <= MAX_EVERY:
        raise ScheduleError("every", "every: at least 1s and at most a year")
    if spec.kind == "at" and spec.at is not None and spec.at <= now:
        raise ScheduleError("at", "at: that time has passed; give a time in the future")
    if spec.kind == "at" and spec.at is not None and spec.at - now > MAX_AHEAD:
        raise ScheduleError("at", "at: more than ten years ahead; give a nearer time")
    if spec.kind == "watch":
        if not spec.url:
            raise ScheduleError("url", "url: a watch needs the URL of the page to watch")
    else:
        for part, present in (
            ("url", bool(spec.url)),
            ("select", bool(spec.select)),
            ("json_path", bool(spec.json_path)),
            ("headers", bool(spec.headers)),
        ):
            if present:
                raise ScheduleError(part, f"{part}: only a watch fetches a page")
    for header, value in spec.headers.items():
        if not value.startswith("secret:") or not value[7:]:
            raise ScheduleError(
                "headers", f"headers: {header} must name a secret (secret:NAME), not a value"
            )
    if spec.max_cost_usd is not None and not spec.max_cost_usd > 0:
        raise ScheduleError("max_cost_usd", "max_cost_usd: more than 0")
    if spec.daily_usd is not None and not spec.daily_usd > 0:
        raise ScheduleError("daily_usd", "daily_usd: more than 0")
    if spec.max_steps is not None and spec.max_steps < 1:
        raise ScheduleError("max_steps", "max_steps: at least 1")


# ------------------------------------------------------------------ slots


def next_slot(spec: ScheduleSpec, after: float) -> float | None:
    """The schedule's first slot strictly after *after* (None: there is none)."""
    if spec.kind == "at":
        assert spec.at is not None
        slot = float(int(spec.at))
        return slot if slot > after else None
    if spec.kind == "cron":
        assert spec.cron is not None
        start = datetime.fromtimestamp(math.floor(after), ZoneInfo(spec.tz))
        try:
            return next(CronSim(spec.cron, start)).timestamp()
        except (StopIteration, CronSimError):
            return None
    return _nth(spec, _index(spec, after) + 1)


def _nth(spec: ScheduleSpec, k: int) -> float:
    """An interval's *k*-th slot: anchor + k * every, in whole seconds."""
    assert spec.every is not None
    return float(math.floor(spec.anchor + k * spec.every))


def _index(spec: ScheduleSpec, t: float) -> int:
    """The largest k whose slot is at or before *t*."""
    assert spec.every is not None
    k = math.floor((t - spec.anchor) / spec.every)
    while _nth(spec, k + 1) <= t:
        k += 1
    while _nth(spec, k) > t:
        k -= 1
    return k


def first_slot(spec: ScheduleSpec, now: float) -> float | None:
    """A new schedule's first slot: the first one after *now*."""
    return next_slot(spec, now)


def jitter(spec: ScheduleSpec) -> float:
    """How long after its slot a watch checks: spread watches over up to a tenth of
    their interval (at most 30 s) so that they do not all fetch at once; fixed per name."""
    if spec.kind != "watch" or spec.every is None:
        return 0.0
    spread = min(spec.every / 10, 30.0)
    return int(hashlib.sha256(spec.name.encode()).hexdigest()[:6], 16) % 1000 / 1000 * spread


def due_slots(spec: ScheduleSpec, due_at: float, now: float, keep: int) -> tuple[int, list[float]]:
    """How many slots fall in [*due_at*, *now*] (*due_at* is a slot), and the newest
    *keep* of them, oldest first. (A cron schedule's are counted up to :data:`MAX_COUNT`.)"""
    if due_at > now:
        return 0, []
    if spec.kind == "at":
        return 1, [due_at]
    if spec.kind == "cron":
        listed: list[float] = []
        count, slot = 0, due_at
        while count < MAX_COUNT:
            count += 1
            listed.append(slot)
            if len(listed) > keep:
                listed.pop(0)
            following = next_slot(spec, slot)
            if following is None or following > now:
                break
            slot = following
        return count, listed
    first, last = _index(spec, due_at), _index(spec, now)
    return last - first + 1, [_nth(spec, k) for k in range(max(first, last - keep + 1), last + 1)]


def plan(spec: ScheduleSpec, due_at: float, now: float, *, running: str | None) -> Plan:
    """What to do at *now* for the slots from *due_at* on. *running*: the previous run,
    when it is still going (with ``overlap = "skip"`` the due slots are skipped).

    The newest due slot is on time if at most :data:`GRACE` seconds (or half an
    interval, if shorter) late; slots before it were missed (errands was down, or busy).
    Missed slots are caught up as ``catch_up`` says: ``one`` run for the newest slot,
    told how many were missed; ``all`` (at most :data:`MAX_CATCH_UP` runs, the rest
    skipped); ``skip`` (only an on-time slot runs). A watch checks once, for the newest.
    """
    count, newest = due_slots(spec, due_at, now, MAX_CATCH_UP)
    result = Plan(next_at=next_slot(spec, max(newest[-1] if newest else due_at - 1, now)))
    if not count:
        return result
    slot = newest[-1]
    missed = count - 1
    if spec.kind == "watch":
        result.runs.append((slot, missed))
    elif running is not None and spec.overlap == "skip":
        result.skips.append((slot, count, f"the previous run {running} was still going"))
    elif spec.catch_up == "all":
        if count > len(newest):
            why = f"more than {MAX_CATCH_UP} missed slots: catch_up = all starts the newest"
            result.skips.append((newest[0], count - len(newest), why))
        result.runs.extend((s, 0) for s in newest)
    elif spec.catch_up == "skip":
        late = now - slot > min(GRACE, (spec.every or 2 * GRACE) / 2)
        skipped = count if late else missed
        if skipped:
            result.skips.append((slot, skipped, "missed while errands was not running"))
        if not late:
            result.runs.append((slot, 0))
    else:
        result.runs.append((slot, missed))
    return result


def describe(spec: ScheduleSpec) -> str:
    """When the schedule runs, in words: ``cron 0 8 * * 1-5 (Europe/Paris)``, ``every 30m``."""
    if spec.kind == "cron":
        return f"cron {spec.cron} ({spec.tz})"
    if spec.kind == "at":
        assert spec.at is not None
        when = datetime.fromtimestamp(spec.at, ZoneInfo(spec.tz))
        return f"once at {when:%Y-%m-%d %H:%M} ({spec.tz})"
    assert spec.every is not None
    what = "checks " if spec.kind == "watch" else ""
    return f"{what}every {format_duration(spec.every)}"
