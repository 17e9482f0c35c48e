"""What the API's routes do: start, tell, decide -- with the refusals spelled out.

404 for an unknown errand or approval, 409 when the request conflicts with the
errand's state (decided already, cancelled, finished), 422 for a request that cannot
be carried out (a bad model, an invalid edit): each is an
:class:`~errands.errors.ErrandsError`, answered with its ``http_status``
(:func:`error_response`, the one table the CLI shares). A store that cannot write right
now (a full disk, a held lock, an I/O error) is a ``503`` with ``Retry-After`` and the
condition: nothing was written, and the same request may succeed later. Anything else
is a bug: a 500.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from fastapi.responses import JSONResponse

from errands.core import events as ev
from errands.core.errand import ApprovalOut
from errands.core.faults import fault
from errands.core.ids import new_errand_id
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.errors import ErrandExists, ErrandsError, NotFound, StoreUnavailable, UserError
from errands.server.context import ServerContext
from errands.server.marks import Marks, marks_at
from errands.server.schemas import (
    APPROVAL,
    ApproveBody,
    CreateErrand,
    Decision,
    DenyBody,
    Message,
    PolicyPreview,
    ResumeBody,
)

__all__ = [
    "ACTIVITY_WINDOW",
    "ApiError",
    "Order",
    "approvals_json",
    "caller",
    "create",
    "decide_approve",
    "decide_deny",
    "error_response",
    "listing",
    "marks",
    "message",
    "pending_with_titles",
    "resume",
    "store_condition",
    "view_or_404",
]

# ordered by last activity: among this many of the most recently created errands (the
# store lists errands newest first; an errand older than these that is still active is
# not moved up)
ACTIVITY_WINDOW = 1000

Order = Literal["created", "activity"]


class ApiError(ErrandsError):
    """A refusal with its HTTP status named where it is raised."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.http_status = status  # type: ignore[misc]
        self.detail = detail


def caller(by: str) -> str:
    """The X-Errands-By header, if it is a name worth recording; else 'api'."""
    if by and len(by) <= 64 and by.isprintable() and by.strip():
        return by.strip()
    return "api"


async def pending_with_titles(ctx: ServerContext) -> list[ApprovalOut]:
    if len(ctx.titles) >= 100_000:  # (a bound on the cache of a server up for months)
        ctx.titles.clear()
    return await ApprovalOut.waiting(ctx.store, ctx.titles)


async def approvals_json(ctx: ServerContext) -> bytes:
    """``GET /api/approvals``: every pending approval with its errand's title, as the JSON
    list ``APPROVALS.dump_json`` makes -- each card encoded once. The store hands back
    the same approval object for an approval whose errand did not change since it was
    last read (the SQLite store does), and its card's JSON is kept with it; what is
    returned is always the store's answer now."""
    if len(ctx.titles) >= 100_000:
        ctx.titles.clear()
    kept, cards = ctx.approval_cards, {}
    parts: list[bytes] = []
    for p in await ctx.store.pending_approvals():
        card = kept.get(p.id)
        if card is None or card[0] is not p:
            title = ctx.titles.get(p.errand_id)
            if title is None:
                title = ctx.titles[p.errand_id] = (await ctx.store.view(p.errand_id)).title
            card = (p, APPROVAL.dump_json(ApprovalOut.of(p, title)))
        cards[p.id] = card
        parts.append(card[1])
    ctx.approval_cards = cards  # (the approvals pending now: its size is theirs)
    return b"[" + b",".join(parts) + b"]"


def marks(ctx: ServerContext) -> Marks:
    """What the person archived and has read (in ``server.sqlite``, :mod:`.marks`)."""
    return marks_at(ctx.idempotency.path)


async def listing(
    ctx: ServerContext,
    *,
    states: Sequence[ErrandState] | None = None,
    limit: int = 50,
    order: Order = "created",
    archived: bool | None = None,
) -> list[ErrandView]:
    """Errands, newest first (or by last activity), in *states*, archived or not (None:
    both), at most *limit*."""
    hidden = marks(ctx).archived() if archived is not None else frozenset()
    if archived:  # the archived ones, wherever they are in the store's order
        views = []
        for errand_id in hidden:
            try:
                views.append(await ctx.store.view(errand_id))
            except NotFound:
                continue
        if states is not None:
            views = [v for v in views if v.state in states]
        views.sort(key=lambda v: v.created_at, reverse=True)
    else:
        window = limit + len(hidden)  # (enough to leave the archived ones out)
        if order == "activity":
            window = max(window, ACTIVITY_WINDOW + len(hidden))
        views = await ctx.store.list_errands(states=states, limit=window)
        if archived is not None:
            views = [v for v in views if v.id not in hidden]
    if order == "activity":
        views.sort(key=lambda v: v.updated_at, reverse=True)
    return views[:limit]


async def resume(
    ctx: ServerContext, errand_id: str, body: ResumeBody, by: str, channel: str
) -> ErrandView:
    """Give the errand more steps; one stopped at its step limit goes on. 404 unknown,
    422 a done or cancelled errand (nothing to continue), 409 it changed meanwhile."""
    await view_or_404(ctx, errand_id)
    try:
        await ctx.harness.continue_errand(errand_id, body.more_steps, by=by, channel=channel)
    except NotFound:
        raise ApiError(404, f"no errand {errand_id}") from None
    ctx.nudge()
    return await ctx.store.view(errand_id)


async def view_or_404(ctx: ServerContext, errand_id: str) -> ErrandView:
    try:
        return await ctx.store.view(errand_id)
    except NotFound:
        raise ApiError(404, f"no errand {errand_id}") from None


async def _create(
    ctx: ServerContext, body: CreateErrand, by: str, channel: str, errand_id: str | None = None
) -> str:
    """Create the errand a request body asks for (under *errand_id* when one was
    chosen, and reserved, first)."""
    return await ctx.harness.create(
        body.text,
        model=body.model,
        workspace=body.workspace,
        max_cost_usd=body.max_cost_usd,
        by=by,
        channel=channel,
        errand_id=errand_id,
        mode=body.mode,
    )


async def create(
    ctx: ServerContext, body: CreateErrand, key: str | None, by: str, channel: str
) -> tuple[int, dict[str, Any]]:
    if key is None:
        errand_id = await _create(ctx, body, by, channel)
        ctx.nudge()
        return 201, {"id": errand_id}
    idem = ctx.idempotency
    async with idem.held("create", key):
        fresh = new_errand_id()
        # fields left unset are left out: adding an optional field keeps old keys valid
        r = await idem.begin("create", key, body.model_dump(exclude_none=True), reserve=fresh)
        if r.done:
            return r.status or 201, r.response
        errand_id = r.reserved or fresh  # reserved by an attempt that died, or just now
        fault("after_reserve")
        try:
            await ctx.store.view(errand_id)  # that attempt created it, then died: answer now
        except NotFound:
            try:
                await _create(ctx, body, by, channel, errand_id)
            except ErrandExists:
                pass  # created meanwhile under the reserved id: the same errand
            except UserError:
                await idem.forget("create", key)
                raise
        fault("after_create")
        response = {"id": errand_id}
        await idem.finish("create", key, 201, response)
        ctx.nudge()
        return 201, response


async def message(
    ctx: ServerContext, errand_id: str, body: Message, key: str | None, by: str, channel: str
) -> tuple[int, dict[str, Any]]:
    view = await view_or_404(ctx, errand_id)
    if key is None:
        seq = await ctx.harness.tell(errand_id, body.text, by=by, channel=channel)
        ctx.nudge()
        return 201, {"errand_id": errand_id, "seq": seq}
    idem = ctx.idempotency
    scope = f"message:{errand_id}"
    async with idem.held(scope, key):
        r = await idem.begin(scope, key, body.model_dump(), reserve=str(view.last_seq))
        if r.done:
            return r.status or 201, r.response
        found: int | None = None
        if r.reserved is not None:  # a crash after sending, before answering?
            for stored in await ctx.store.read(errand_id, after=int(r.reserved)):
                e = stored.event
                if isinstance(e, ev.UserMessage) and e.content.text == body.text:
                    found = stored.seq
                    break
        if found is None:
            found = await ctx.harness.tell(errand_id, body.text, by=by, channel=channel)
        response = {"errand_id": errand_id, "seq": found}
        await idem.finish(scope, key, 201, response)
        ctx.nudge()
        return 201, response


async def _pending_or_refuse(
    ctx: ServerContext, approval_id: str
) -> tuple[ErrandView, PendingApproval]:
    """The pending approval, or 404 (never asked) / 409 (decided, cancelled, finished)."""
    errand_id, _, seq_text = approval_id.rpartition(".")
    seq = int(seq_text)
    view = await view_or_404(ctx, errand_id)
    pending = view.pending.get(seq)
    if pending is not None:
        return view, pending
    asked = [s for s in await ctx.store.read(errand_id, after=seq - 1) if s.seq == seq]
    if not asked or not isinstance(asked[0].event, ev.ApprovalRequested):
        raise ApiError(404, f"no approval {approval_id}")
    if view.cancel_requested or view.state is ErrandState.cancelled:
        raise ApiError(409, f"errand {errand_id} was cancelled; its approvals are void")
    raise ApiError(409, f"approval {approval_id} is not pending: it was decided already")


async def preview_decision(
    ctx: ServerContext, approval_id: str, edited: dict[str, Any] | None
) -> PolicyPreview:
    """What the policy says now for the approval, as requested or with *edited*."""
    await _pending_or_refuse(ctx, approval_id)
    verdict = await ctx.harness.approvals.decision_for(approval_id, edited)  # (EditRefused: 422)
    if verdict is None:
        return PolicyPreview(approval_id=approval_id, decision=None)
    return PolicyPreview(
        approval_id=approval_id,
        decision=verdict.decision.value,
        rule=verdict.rule,
        reason=verdict.reason,
    )


async def decide_approve(
    ctx: ServerContext, approval_id: str, body: ApproveBody, by: str, channel: str
) -> Decision:
    _, pending = await _pending_or_refuse(ctx, approval_id)
    if body.always_pattern is not None and not body.always:
        raise ApiError(422, "always_pattern goes with always: true")
    if body.standing_pattern is not None and not body.standing:
        raise ApiError(422, "standing_pattern goes with standing: true")
    grant = await ctx.harness.approvals.approve(
        approval_id,
        by=by,
        channel=channel,
        edited_arguments=body.edited_arguments,
        always=body.always,
        always_pattern=body.always_pattern,
        seen_hash=body.args_hash,
        standing=body.standing,
        standing_pattern=body.standing_pattern,
    )  # (EditRefused: 422, ApprovalRefused: 409; a standing pattern not derivable: 422)
    ctx.nudge()
    return Decision(
        approval_id=approval_id,
        errand_id=pending.errand_id,
        decision="approved",
        args_hash=grant.args_hash,
    )


async def decide_deny(
    ctx: ServerContext, approval_id: str, body: DenyBody, by: str, channel: str
) -> Decision:
    _, pending = await _pending_or_refuse(ctx, approval_id)
    await ctx.harness.approvals.deny(approval_id, reason=body.reason, by=by, channel=channel)
    ctx.nudge()
    return Decision(approval_id=approval_id, errand_id=pending.errand_id, decision="denied")


def store_condition(ctx: ServerContext) -> tuple[StoreUnavailable, float] | None:
    """Why the store cannot write right now, and since when; None while it can. (The
    store's writer knows: it records the condition when a commit fails and forgets it
    at the first commit that writes.)"""
    condition = getattr(ctx.store, "unavailable", None)
    if not isinstance(condition, StoreUnavailable):
        return None
    return condition, float(getattr(ctx.store, "unavailable_since", 0.0))


def error_response(exc: Exception) -> JSONResponse | None:
    """The answer for an exception errands explains (:mod:`errands.errors`); None for a bug."""
    if isinstance(exc, StoreUnavailable):  # waited out: try again later
        return JSONResponse(
            {"detail": str(exc), "condition": exc.condition},
            status_code=exc.http_status,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, ErrandsError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.http_status)
    return None
