"""What retention keeps of a finished errand's log, whatever the backend.

A finished errand (done, failed, cancelled) whose log is past its retention is
*compacted*: its log is rewritten as

1. its ``errand_created`` (the request, its text cut to ``REQUEST_CHARS``),
2. every event that carries a cost -- ``model_responded`` with its content, tool calls
   and provider state taken out, ``model_used`` as it was -- at their own times, so the
   cost report, the budgets and ``spend`` add up exactly as before,
3. its ``cancel_requested`` events (the fold's ``cancel_requested``),
4. one ``state_changed`` with the final state, reason and result,
5. ``errand_compacted``: a short summary of what the full log held.

Tool results, tool arguments, messages, approvals and blobs go. The compacted log folds
to the same state, result, reason, cost and step count as the full one
(:func:`same_outcome`); a store compacts nothing when it would not.

Only a finished errand is ever compacted: the guard (:func:`finished_before`) runs on
the errand's current view *inside* the transaction that rewrites it, so a message that
reopened it a moment before is never lost.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from errands.core import events as ev
from errands.core.states import TERMINAL, ErrandView, fold
from errands.errors import StoreError

__all__ = [
    "REQUEST_CHARS",
    "Compacted",
    "GcReport",
    "RetentionPlan",
    "compacted_log",
    "finished_before",
    "same_outcome",
]

REQUEST_CHARS = 2000  # of the request's text a compacted errand keeps
_SUMMARY_REQUEST = 160  # of it the summary quotes


@dataclass(frozen=True, slots=True)
class Compacted:
    """One errand compacted: the events and stored bytes its log had, and has now."""

    errand_id: str
    events_before: int
    bytes_before: int
    events_after: int
    bytes_after: int


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """What retention would do now (read without writing anything)."""

    errands: tuple[str, ...]  # finished errands to compact, oldest first
    past_runs: tuple[str, ...]  # of them, runs of a schedule past its newest N (any age)
    events: int  # the events of their logs
    bytes: int  # and their stored bytes (bodies and blobs)
    runs: int  # schedule run rows beyond each schedule's last N
    items: int  # watch items not seen within the watch window
    wakeups: int  # wake-up rows already read
    file_bytes: int  # the store file (and its WAL) now
    free_bytes: int  # unused pages in the file
    auto_vacuum: str  # none | full | incremental


@dataclass(slots=True)
class GcReport:
    """What a run of retention did (or, dry, would do)."""

    dry_run: bool
    errands: int = 0  # errands compacted
    events: int = 0  # events removed from their logs
    bytes: int = 0  # stored bytes removed from their logs
    refused: int = 0  # candidates that changed meanwhile (left for the next run)
    runs: int = 0
    items: int = 0
    wakeups: int = 0
    file_bytes_before: int = 0
    file_bytes_after: int = 0
    reclaimed_bytes: int = 0  # free pages given back to the file system (incremental vacuum)
    auto_vacuum: str = ""
    compacted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def finished_before(
    cutoff: float, also: frozenset[str] = frozenset()
) -> Callable[[ErrandView], None]:
    """The guard a compaction runs on the errand's current view, in its transaction:
    refuse unless the errand is finished (done, failed, cancelled), not compacted yet,
    and finished before *cutoff* (or one of *also*: old runs of a schedule)."""

    def check(view: ErrandView) -> None:
        if view.state not in TERMINAL:
            raise StoreError(f"errand {view.id} is {view.state.value}: only a finished one")
        if view.compacted:
            raise StoreError(f"errand {view.id} is compacted already")
        if view.updated_at >= cutoff and view.id not in also:
            raise StoreError(f"errand {view.id} finished too recently to compact")

    return check


def compacted_log(view: ErrandView, bodies: Sequence[str], now: float) -> list[ev.Event]:
    """The compacted log of the finished errand *view*, from its stored event bodies."""
    events = [ev.load_event(body) for body in bodies]
    kept: list[ev.Event] = []
    result: ev.Content | None = None
    for event in events:
        if isinstance(event, ev.ErrandCreated):
            kept.append(_short_request(event))
        elif isinstance(event, ev.ModelResponded):
            kept.append(
                event.model_copy(update={"content": None, "tool_calls": [], "replay": None})
            )
        elif isinstance(event, ev.ModelUsed | ev.CancelRequested):
            kept.append(event)
        elif isinstance(event, ev.StateChanged) and event.result is not None:
            result = event.result
        elif isinstance(event, ev.UserMessage):
            result = None  # a follow-up reopened it: a result before it is not the result
    if result is not None and result.text != view.result:
        result = None
    last_at = max((e.at for e in events), default=now)
    kept.append(
        ev.StateChanged(state=view.state.value, reason=view.reason, result=result, at=last_at)
    )
    size = sum(len(body) for body in bodies)
    kept.append(
        ev.ErrandCompacted(summary=_summary(events), events=len(events), bytes=size, at=now)
    )
    return kept


def same_outcome(before: ErrandView, kept: Sequence[ev.Event], errand_id: str) -> bool:
    """Does the compacted log fold to the same state, result, reason, cost, steps and
    request as the full one did?"""
    after = fold(errand_id, [(i, e) for i, e in enumerate(kept, start=1)])
    fields = ("state", "result", "reason", "usage", "steps", "title", "created_at", "parent")
    return all(getattr(after, f) == getattr(before, f) for f in fields)


def _short_request(created: ev.ErrandCreated) -> ev.ErrandCreated:
    text = created.content.text
    if len(text) <= REQUEST_CHARS:
        return created
    content = created.content.model_copy(update={"text": text[:REQUEST_CHARS] + " [compacted]"})
    return created.model_copy(update={"content": content})


def _summary(events: Sequence[ev.Event]) -> str:
    """A line saying what the full log held: turns, tool calls by tool, approvals,
    messages, and the start of the request."""
    tools: Counter[str] = Counter()
    turns = approvals = messages = 0
    request = ""
    for event in events:
        if isinstance(event, ev.ModelResponded):
            turns += 1
        elif isinstance(event, ev.ToolResult):
            tools[event.tool] += 1
        elif isinstance(event, ev.ApprovalRequested):
            approvals += 1
        elif isinstance(event, ev.UserMessage):
            messages += 1
        elif isinstance(event, ev.ErrandCreated):
            request = event.content.text
    calls = sum(tools.values())
    by_tool = ", ".join(f"{name} x{n}" for name, n in tools.most_common(5))
    parts = [f"{turns} model turn{'s' * (turns != 1)}"]
    parts.append(f"{calls} tool call{'s' * (calls != 1)}" + (f" ({by_tool})" if by_tool else ""))
    if approvals:
        parts.append(f"{approvals} approval{'s' * (approvals != 1)} asked")
    if messages:
        parts.append(f"{messages} message{'s' * (messages != 1)}")
    quoted = json.dumps(
        request[:_SUMMARY_REQUEST] + ("..." if len(request) > _SUMMARY_REQUEST else "")
    )
    return "; ".join(parts) + f"; asked: {quoted}"
