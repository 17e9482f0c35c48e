"""Errand states, derived from the log by folding its events.

One set of states, used everywhere (CLI, API, inbox). A state is never stored as the
truth: :func:`apply` folds one event into an :class:`ErrandView`, and the store's
projection tables are only a cache of that fold, rebuildable from the log.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from errands.core import events as ev

__all__ = ["TERMINAL", "ErrandState", "ErrandView", "PendingApproval", "apply", "fold"]


class ErrandState(StrEnum):
    queued = "queued"
    running = "running"
    waiting_approval = "waiting_approval"
    sleeping = "sleeping"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"
    needs_attention = "needs_attention"


SEARCH_TOOLS = "search_tools"  # the tool that finds others (errands.tools.search)
TERMINAL = frozenset({ErrandState.done, ErrandState.failed, ErrandState.cancelled})
# States a worker should pick the errand up in.
RUNNABLE = frozenset({ErrandState.queued, ErrandState.running})


class PendingApproval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    errand_id: str
    seq: int
    call_id: str
    tool: str
    arguments: dict[str, Any]
    args_hash: str
    effect: str
    reason: str
    rule: str
    preview: str = ""
    at: float

    @property
    def id(self) -> str:
        return f"{self.errand_id}.{self.seq}"

    @classmethod
    def of(cls, errand_id: str, seq: int, event: ev.ApprovalRequested) -> PendingApproval:
        """The approval that the event logged at *seq* asks for."""
        return cls(
            errand_id=errand_id,
            seq=seq,
            call_id=event.call_id,
            tool=event.tool,
            arguments=event.arguments,
            args_hash=event.args_hash,
            effect=event.effect.value,
            reason=event.reason,
            rule=event.rule,
            preview=event.preview,
            at=event.at,
        )


class ErrandView(BaseModel):
    """Everything about an errand that is derived from its log."""

    model_config = ConfigDict(extra="forbid")

    id: str
    state: ErrandState = ErrandState.queued
    title: str = ""
    model: str = ""
    workspace: str = ""
    parent: str | None = None
    budget_usd: float | None = None  # the errand's cost cap, for it and its descendants
    created_at: float = 0.0
    updated_at: float = 0.0
    last_seq: int = 0
    steps: int = 0  # model turns answered
    usage: ev.Usage = Field(default_factory=ev.Usage)
    result: str | None = None
    reason: str = ""  # why the errand is in its state (failed, needs_attention, cancelled)
    pending: dict[int, PendingApproval] = Field(default_factory=dict)
    cancel_requested: bool = False
    purged: bool = False
    compacted: bool = False  # retention kept only its result, cost and a summary
    wake_at: float | None = None  # sleeping: when its timer fires (wall time)
    schedule: str | None = None  # the schedule this errand is a run of
    schedule_daily_usd: float | None = None  # that schedule's daily cap
    result_untrusted: bool = False  # the result was derived from untrusted content
    tools: list[str] | None = None  # the only tools it may use (None: every tool)
    mode: str | None = None  # "plan": plan-then-execute (errands.core.plan)
    # the queries of its search_tools calls, in log order: the tools they found join its
    # requests (errands.tools.search)
    tool_searches: list[str] = Field(default_factory=list)


def apply(view: ErrandView, seq: int, event: ev.Event) -> None:
    """Fold one event into *view* (in place). Pure in (view, seq, event).

    Nested values (``usage``, ``pending``) are replaced, never mutated in place, so a
    value read from a view stays as it was (the store relies on this to tell which
    projection columns changed).
    """
    fields = view.__dict__  # (the two fields every event sets, written where pydantic keeps
    # them, without its per-assignment dispatch: this runs for every event the store writes)
    assert seq == fields["last_seq"] + 1, f"gap or duplicate in {view.id}: {view.last_seq} -> {seq}"
    fields["last_seq"] = seq
    if event.at > fields["updated_at"]:
        fields["updated_at"] = event.at
    view.__pydantic_fields_set__.update(_EVERY_EVENT_SETS)
    _FOLD[type(event)](view, seq, event)


_EVERY_EVENT_SETS = ("last_seq", "updated_at")


# One rule per event type (a table rather than a chain of isinstance checks: the
# store folds every event it writes).


def _errand_created(view: ErrandView, seq: int, event: ev.ErrandCreated) -> None:
    view.title = event.title
    view.model = event.model
    view.workspace = event.workspace
    view.parent = event.parent
    view.budget_usd = event.limits.max_cost_usd
    if event.schedule is not None:
        view.schedule = event.schedule
        view.schedule_daily_usd = event.schedule_daily_usd
    if event.tools is not None:
        view.tools = event.tools
    if event.mode is not None:
        view.mode = event.mode
    view.created_at = event.at
    view.state = ErrandState.queued


def _user_message(view: ErrandView, seq: int, event: ev.UserMessage) -> None:
    # a follow-up reopens a finished errand, wakes a sleeping one, or joins a running one
    if view.state is ErrandState.sleeping:
        view.state = ErrandState.queued
        return
    if view.state in TERMINAL or view.state is ErrandState.needs_attention:
        view.state = ErrandState.queued
        view.result = None
        view.reason = ""
        view.cancel_requested = False


def _model_responded(view: ErrandView, seq: int, event: ev.ModelResponded) -> None:
    view.steps += 1
    view.usage = view.usage + event.usage
    _running(view)
    if view.state is ErrandState.running:
        view.reason = ""  # (no longer waiting for a provider, if it was)


def _working(
    view: ErrandView, seq: int, event: ev.ModelRequested | ev.ToolIntent | ev.ToolResult
) -> None:
    _running(view)
    if view.wake_at is not None:
        view.wake_at = None  # (awake)
        view.reason = ""


def _tool_intent(view: ErrandView, seq: int, event: ev.ToolIntent) -> None:
    _working(view, seq, event)
    if event.tool == SEARCH_TOOLS:  # (replaced, not appended to: see apply)
        view.tool_searches = [*view.tool_searches, str(event.arguments.get("query", ""))]


def _sleeping(view: ErrandView, seq: int, event: ev.Sleeping) -> None:
    if view.state not in TERMINAL and not view.cancel_requested:
        view.state = ErrandState.sleeping
        view.wake_at = event.wake_at
        view.reason = event.reason  # what it waits for


def _approval_requested(view: ErrandView, seq: int, event: ev.ApprovalRequested) -> None:
    view.pending = {**view.pending, seq: PendingApproval.of(view.id, seq, event)}
    if view.state not in TERMINAL:
        view.state = ErrandState.waiting_approval


def _approval_decided(
    view: ErrandView, seq: int, event: ev.ApprovalGranted | ev.ApprovalDenied
) -> None:
    view.pending = {k: v for k, v in view.pending.items() if k != event.request_seq}
    if view.state is ErrandState.waiting_approval and not view.pending:
        view.state = ErrandState.running


def _state_changed(view: ErrandView, seq: int, event: ev.StateChanged) -> None:
    view.state = ErrandState(event.state)
    view.reason = event.reason
    if event.result is not None:
        view.result = event.result.text
        view.result_untrusted = event.result.integrity == "untrusted"


def _cancel_requested(view: ErrandView, seq: int, event: ev.CancelRequested) -> None:
    view.cancel_requested = True
    if view.state not in TERMINAL:
        view.state = ErrandState.cancelled
        view.reason = event.reason or "cancelled"
        view.pending = {}


def _error_raised(view: ErrandView, seq: int, event: ev.ErrorRaised) -> None:
    if event.kind == "model" and event.retryable and view.state is ErrandState.running:
        view.reason = event.message  # what it waits for: a provider that is down


def _limits_raised(view: ErrandView, seq: int, event: ev.LimitsRaised) -> None:
    if view.state is ErrandState.failed or view.state is ErrandState.needs_attention:
        view.state = ErrandState.queued  # it goes on
        view.reason = ""


def _model_used(view: ErrandView, seq: int, event: ev.ModelUsed) -> None:
    view.usage = view.usage + event.usage  # (not a step: no turn of the conversation)


def _errand_purged(view: ErrandView, seq: int, event: ev.ErrandPurged) -> None:
    view.purged = True


def _errand_compacted(view: ErrandView, seq: int, event: ev.ErrandCompacted) -> None:
    view.compacted = True


_FOLD: dict[type[Any], Callable[[ErrandView, int, Any], None]] = {
    ev.ErrandCreated: _errand_created,
    ev.UserMessage: _user_message,
    ev.ModelRequested: _working,
    ev.ModelResponded: _model_responded,
    ev.ToolIntent: _tool_intent,
    ev.ToolResult: _working,
    ev.ApprovalRequested: _approval_requested,
    ev.ApprovalGranted: _approval_decided,
    ev.ApprovalDenied: _approval_decided,
    ev.StateChanged: _state_changed,
    ev.ErrorRaised: _error_raised,
    ev.CancelRequested: _cancel_requested,
    ev.ErrandPurged: _errand_purged,
    ev.LimitsRaised: _limits_raised,
    ev.Sleeping: _sleeping,
    ev.ModelUsed: _model_used,
    ev.ErrandCompacted: _errand_compacted,
    ev.ContextCompacted: _working,
}
assert set(_FOLD) == set(ev.EVENT_TYPES.values()), "every event type has a fold rule"


_STARTS_RUNNING = frozenset({ErrandState.queued, ErrandState.sleeping})


def _running(view: ErrandView) -> None:
    if view.state in _STARTS_RUNNING:
        view.state = ErrandState.running


def fold(errand_id: str, events: list[tuple[int, ev.Event]]) -> ErrandView:
    view = ErrandView(id=errand_id)
    for seq, event in events:
        apply(view, seq, event)
    return view
