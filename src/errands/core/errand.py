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

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView, PendingApproval

if TYPE_CHECKING:
    from errands.store.protocol import StoredEvent, StoreReader

__all__ = ["ApprovalOut", "Errand", "ErrandSummary", "first_line"]


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
        return cls(id=p.id, errand_title=title, **p.model_dump())

    @classmethod
    async def waiting(
        cls, store: StoreReader, titles: dict[str, str] | None = None
    ) -> list[ApprovalOut]:
        """Every approval waiting in *store*, with its errand's title; *titles* holds the
        titles already known (it is filled in with those read: titles never change)."""
        known = {} if titles is None else titles
        out = []
        for p in await store.pending_approvals():
            title = known.get(p.errand_id)
            if title is None:
                title = known[p.errand_id] = (await store.view(p.errand_id)).title
            out.append(cls.of(p, title))
        return out

    def pending(self) -> PendingApproval:
        """Back to the approval itself (what a client got from the API, say)."""
        return PendingApproval.model_validate(self.model_dump(exclude={"id", "errand_title"}))


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
    wake_at: float | None = None  # sleeping: when its timer fires (wall time)
    schedule: str | None = None  # a run of this schedule (or watch)
    mode: str | None = None  # "plan": plan mode (the model never reads untrusted content)

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
            wake_at=view.wake_at,
            schedule=view.schedule,
            mode=view.mode,
        )

    def row(self) -> dict[str, Any]:
        """One errand in JSON, the same everywhere (``errands ls --json``, ``errands inbox
        --json``, the API's lists): ``pending_approvals`` is a count; the approvals
        themselves are in :meth:`Errand.detail`."""
        return self.model_dump(mode="json")

    def inbox_row(self) -> dict[str, Any]:
        """``errands inbox --json``: the same shape as every errand row."""
        return self.row()

    def headline(self, waiting_for: Sequence[str] = ()) -> str:
        """One line saying where the errand got to, for a list: the first line of its
        result, or what waits for the person (*waiting_for*: the tools of its pending
        approvals, when known), or why it stopped."""
        if self.pending_approvals:
            tools = ", ".join(dict.fromkeys(waiting_for))
            if tools:
                return f"waits for your approval: {tools}"
            n = self.pending_approvals
            return (
                f"{n} action{'' if n == 1 else 's'} wait{'s' if n == 1 else ''} for your approval"
            )
        state = self.status
        if state is ErrandState.done:
            return first_line(self.result) or "done"
        if state is ErrandState.needs_attention:
            return f"needs you: {first_line(self.reason) or 'see its page'}"
        if state is ErrandState.failed:
            return f"failed: {first_line(self.reason) or 'see its page'}"
        if state is ErrandState.cancelled:
            reason = first_line(self.reason)
            return f"cancelled: {reason}" if reason else "cancelled"
        if state is ErrandState.sleeping:
            reason = first_line(self.reason)
            until = ""
            if self.wake_at is not None:
                until = " until " + time.strftime("%Y-%m-%d %H:%M", time.localtime(self.wake_at))
            return f"sleeping{until}: {reason}" if reason else f"sleeping{until}"
        n = self.steps
        return f"working ({n} step{'' if n == 1 else 's'} so far)" if n else "starting"


def first_line(text: str | None, limit: int = 200) -> str:
    """The first line of *text* that is not blank, cut at *limit* characters."""
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


_DETAIL_ONLY = {"workspace", "budget_usd", "approvals"}


class Errand(ErrandSummary):
    """Everything errands shows about one errand: its summary, and more."""

    workspace: str
    budget_usd: float | None  # its max_cost_usd (descendants included), or None
    approvals: list[ApprovalOut]

    @classmethod
    def of(cls, view: ErrandView) -> Errand:
        return cls(
            **ErrandSummary.of(view).model_dump(),
            workspace=view.workspace,
            budget_usd=view.budget_usd,
            approvals=[ApprovalOut.of(p, view.title) for p in view.pending.values()],
        )

    def row(self) -> dict[str, Any]:
        """The errand's summary row (see :meth:`ErrandSummary.row`)."""
        return ErrandSummary.model_validate(self.model_dump(exclude=_DETAIL_ONLY)).row()

    def detail(self, events: Sequence[StoredEvent] | None = None) -> dict[str, Any]:
        """``errands show --json`` / ``errands run --json`` (and the API's errand): the
        row's fields, the workspace, the budget, the pending approvals in full
        (``approvals``), and (for show) the events."""
        out: dict[str, Any] = self.model_dump(mode="json")
        if events is not None:
            out["events"] = [{"seq": s.seq, **s.event.model_dump(mode="json")} for s in events]
        return out
