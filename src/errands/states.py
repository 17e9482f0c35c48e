"""Errand states, derived from the log by folding its events.

One set of states, used everywhere (CLI, API, inbox). A state is never stored as the
truth: :func:`apply` folds one event into an :class:`ErrandView`, and the store's
projection tables are only a cache of that fold, rebuildable from the log.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from errands import events as ev

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


class ErrandView(BaseModel):
    """Everything about an errand that is derived from its log."""

    model_config = ConfigDict(extra="forbid")

    id: str
    state: ErrandState = ErrandState.queued
    title: str = ""
    model: str = ""
    workspace: str = ""
    parent: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    last_seq: int = 0
    steps: int = 0  # model turns answered
    usage: ev.Usage = ev.Usage()
    result: str | None = None
    reason: str = ""  # why the errand is in its state (failed, needs_attention, cancelled)
    pending: dict[int, PendingApproval] = {}
    cancel_requested: bool = False
    purged: bool = False


def apply(view: ErrandView, seq: int, event: ev.Event) -> None:
    """Fold one event into *view* (in place). Pure in (view, seq, event)."""
    assert seq == view.last_seq + 1, f"gap or duplicate in {view.id}: {view.last_seq} -> {seq}"
    view.last_seq = seq
    view.updated_at = max(view.updated_at, event.at)
    terminal = view.state in TERMINAL
    match event:
        case ev.ErrandCreated():
            view.title = event.title
            view.model = event.model
            view.workspace = event.workspace
            view.parent = event.parent
            view.created_at = event.at
            view.state = ErrandState.queued
        case ev.UserMessage():
            # a follow-up reopens a finished errand, or joins a running one
            if terminal or view.state is ErrandState.needs_attention:
                view.state = ErrandState.queued
                view.result = None
                view.reason = ""
                view.cancel_requested = False
        case ev.ModelResponded():
            view.steps += 1
            view.usage = view.usage + event.usage
            _running(view)
        case ev.ModelRequested() | ev.ToolIntent() | ev.ToolResult():
            _running(view)
        case ev.ApprovalRequested():
            view.pending = {
                **view.pending,
                seq: PendingApproval(
                    errand_id=view.id,
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
                ),
            }
            if not terminal:
                view.state = ErrandState.waiting_approval
        case ev.ApprovalGranted() | ev.ApprovalDenied():
            view.pending = {k: v for k, v in view.pending.items() if k != event.request_seq}
            if view.state is ErrandState.waiting_approval and not view.pending:
                view.state = ErrandState.running
        case ev.StateChanged():
            view.state = ErrandState(event.state)
            view.reason = event.reason
            if event.result is not None:
                view.result = event.result.text
        case ev.CancelRequested():
            view.cancel_requested = True
            if not terminal:
                view.state = ErrandState.cancelled
                view.reason = event.reason or "cancelled"
                view.pending = {}
        case ev.ErrorRaised():
            pass
        case ev.ErrandPurged():
            view.purged = True


def _running(view: ErrandView) -> None:
    if view.state in (ErrandState.queued, ErrandState.sleeping):
        view.state = ErrandState.running


def fold(errand_id: str, events: list[tuple[int, ev.Event]]) -> ErrandView:
    view = ErrandView(id=errand_id)
    for seq, event in events:
        apply(view, seq, event)
    return view
