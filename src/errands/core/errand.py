"""An errand as people and machines see it: every JSON shape errands shows, in one place.

Each is built from the errand's :class:`~errands.core.states.ErrandView` (the fold of the
log) -- :class:`Errand` in full, :class:`ErrandSummary` for lists:

- :meth:`ErrandSummary.of` -- the API's errand (``GET /api/errands``);
- :meth:`Errand.row` -- a line of ``errands ls --json``;
- :meth:`ErrandSummary.inbox_row` -- a line of ``errands inbox --json``;
- :meth:`Errand.detail` -- ``errands show --json`` and ``errands run --json``.

A pending approval is shown everywhere as an :class:`ApprovalOut` (the API's approvals,
``errands approvals --json``, the approval card).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView, PendingApproval

if TYPE_CHECKING:
    from errands.store.protocol import StoredEvent

__all__ = ["ApprovalOut", "Errand", "ErrandSummary"]


class ApprovalOut(BaseModel):
    """A pending action, in full, with the title of its errand."""

    id: str = Field(description="ERRAND.SEQ")
    errand_id: str
    errand_title: str
    seq: int
    call_id: str
    tool: str
    arguments: dict[str, Any]
    args_hash: str = Field(description="canonical hash of the arguments; send it back as seen")
    effect: str
    reason: str = Field(description="why it needs your approval")
    rule: str = Field(description="the policy rule that asked")
    preview: str = Field(description="what will happen: the diff, the request, the message")
    at: float

    @classmethod
    def of(cls, p: PendingApproval, title: str) -> ApprovalOut:
        return cls(
            id=p.id,
            errand_id=p.errand_id,
            errand_title=title,
            seq=p.seq,
            call_id=p.call_id,
            tool=p.tool,
            arguments=p.arguments,
            args_hash=p.args_hash,
            effect=p.effect,
            reason=p.reason,
            rule=p.rule,
            preview=p.preview,
            at=p.at,
        )

    def pending(self) -> PendingApproval:
        """Back to the approval itself (what a client got from the API, say)."""
        fields = PendingApproval.model_fields
        return PendingApproval.model_validate(
            {k: v for k, v in self.model_dump().items() if k in fields}
        )


class ErrandSummary(BaseModel):
    """The API's errand."""

    id: str
    status: ErrandState
    title: str
    model: str
    parent: str | None
    created_at: float
    updated_at: float
    steps: int
    usage: ev.Usage
    cost_usd: float
    result: str | None
    reason: str | None
    pending_approvals: int
    last_seq: int

    @classmethod
    def of(cls, view: ErrandView) -> ErrandSummary:
        return cls(
            id=view.id,
            status=view.state,
            title=view.title,
            model=view.model,
            parent=view.parent,
            created_at=view.created_at,
            updated_at=view.updated_at,
            steps=view.steps,
            usage=view.usage,
            cost_usd=view.usage.cost_usd,
            result=view.result,
            reason=view.reason or None,
            pending_approvals=len(view.pending),
            last_seq=view.last_seq,
        )

    def inbox_row(self) -> dict[str, Any]:
        """``errands inbox --json``: one line per recent errand."""
        return {
            "id": self.id,
            "status": self.status.value,
            "title": self.title,
            "model": self.model,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "steps": self.steps,
            "cost_usd": self.cost_usd,
            "pending_approvals": self.pending_approvals,
            "reason": self.reason,
        }


class Errand(BaseModel):
    """Everything errands shows about one errand."""

    id: str
    status: ErrandState
    title: str
    model: str
    workspace: str
    parent: str | None
    created_at: float
    updated_at: float
    steps: int
    usage: ev.Usage
    cost_usd: float
    budget_usd: float | None  # its max_cost_usd (descendants included), or None
    result: str | None
    reason: str | None
    last_seq: int
    approvals: list[ApprovalOut]

    @classmethod
    def of(cls, view: ErrandView) -> Errand:
        return cls(
            id=view.id,
            status=view.state,
            title=view.title,
            model=view.model,
            workspace=view.workspace,
            parent=view.parent,
            created_at=view.created_at,
            updated_at=view.updated_at,
            steps=view.steps,
            usage=view.usage,
            cost_usd=view.usage.cost_usd,
            budget_usd=view.budget_usd,
            result=view.result,
            reason=view.reason or None,
            last_seq=view.last_seq,
            approvals=[ApprovalOut.of(p, view.title) for p in view.pending.values()],
        )

    def row(self) -> dict[str, Any]:
        """``errands ls --json``: one line per errand."""
        return {
            "id": self.id,
            "status": self.status.value,
            "title": self.title,
            "created_at": self.created_at,
            "steps": self.steps,
            "cost_usd": self.cost_usd,
            "pending_approvals": len(self.approvals),
        }

    def detail(self, events: Sequence[StoredEvent] | None = None) -> dict[str, Any]:
        """``errands show --json`` / ``errands run --json``: the errand, its approvals in
        full, and (for show) its events."""
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "title": self.title,
            "model": self.model,
            "workspace": self.workspace,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "result": self.result,
            "reason": self.reason,
            "steps": self.steps,
            "usage": self.usage.model_dump(),
            "budget_usd": self.budget_usd,
            "pending_approvals": [a.pending().model_dump() | {"id": a.id} for a in self.approvals],
        }
        if events is not None:
            out["events"] = [{"seq": s.seq, **s.event.model_dump(mode="json")} for s in events]
        return out
