"""What the API's routes do: start, tell, decide -- with the refusals spelled out.

404 for an unknown errand or approval, 409 when the request conflicts with the
errand's state (decided already, cancelled, finished), 422 for a request that cannot
be carried out (a bad model, an invalid edit). Each raises :class:`ApiError` or lets a
known exception through (see :func:`error_response`); nothing else becomes a 4xx.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from errands.config import ConfigError
from errands.core import events as ev
from errands.core.ids import new_errand_id
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.engine.operations import UserError, create_errand, tell_errand
from errands.models.spec import ModelSpecError
from errands.policy.approvals import ApprovalRefused, EditRefused, approve, deny
from errands.server.context import ServerContext
from errands.server.idempotency import KeyReused
from errands.server.schemas import (
    ApprovalOut,
    ApproveBody,
    CreateErrand,
    Decision,
    DenyBody,
    Message,
    approval_out,
)
from errands.store.base import ErrandExists, NotFound
from errands.tools.workspace import WorkspaceRefused

__all__ = [
    "ApiError",
    "create",
    "decide_approve",
    "decide_deny",
    "error_response",
    "message",
    "pending_with_titles",
    "view_or_404",
]


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def pending_with_titles(ctx: ServerContext) -> list[ApprovalOut]:
    pending = await ctx.store.pending_approvals()
    return [approval_out(p, ctx.title(p.errand_id)) for p in pending]


# Small reads run on the event loop itself (a fraction of a millisecond each): a hop to
# a thread and back costs more than the read, twice over when the process is busy.


def view_or_404(ctx: ServerContext, errand_id: str) -> ErrandView:
    try:
        return ctx.store.view_sync(errand_id)
    except NotFound:
        raise ApiError(404, f"no errand {errand_id}") from None


async def _create(
    ctx: ServerContext, body: CreateErrand, by: str, channel: str, errand_id: str | None = None
) -> str:
    """:func:`errands.engine.operations.create_errand` from a request body (under *errand_id*
    when one was chosen, and reserved, first)."""
    return await create_errand(
        ctx.store,
        ctx.settings,
        body.text,
        model=body.model,
        workspace=body.workspace,
        max_cost_usd=body.max_cost_usd,
        by=by,
        channel=channel,
        errand_id=errand_id,
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
        try:
            ctx.store.view_sync(errand_id)  # that attempt created it, then died: answer now
        except NotFound:
            try:
                await _create(ctx, body, by, channel, errand_id)
            except ErrandExists:
                pass  # created meanwhile under the reserved id: the same errand
            except (UserError, ModelSpecError, WorkspaceRefused, ConfigError):
                await idem.forget("create", key)
                raise
        response = {"id": errand_id}
        await idem.finish("create", key, 201, response)
        ctx.nudge()
        return 201, response


async def message(
    ctx: ServerContext, errand_id: str, body: Message, key: str | None, by: str, channel: str
) -> tuple[int, dict[str, Any]]:
    view = view_or_404(ctx, errand_id)
    if key is None:
        seq = await tell_errand(ctx.store, errand_id, body.text, by=by, channel=channel)
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
            found = await tell_errand(ctx.store, errand_id, body.text, by=by, channel=channel)
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
    view = view_or_404(ctx, errand_id)
    pending = view.pending.get(seq)
    if pending is not None:
        return view, pending
    asked = [s for s in ctx.store.read_sync(errand_id, after=seq - 1) if s.seq == seq]
    if not asked or not isinstance(asked[0].event, ev.ApprovalRequested):
        raise ApiError(404, f"no approval {approval_id}")
    if view.cancel_requested or view.state is ErrandState.cancelled:
        raise ApiError(409, f"errand {errand_id} was cancelled; its approvals are void")
    raise ApiError(409, f"approval {approval_id} is not pending: it was decided already")


async def decide_approve(
    ctx: ServerContext, approval_id: str, body: ApproveBody, by: str, channel: str
) -> Decision:
    _, pending = await _pending_or_refuse(ctx, approval_id)
    if body.always_pattern is not None and not body.always:
        raise ApiError(422, "always_pattern goes with always: true")
    try:
        grant = await approve(
            ctx.store,
            ctx.registry,
            approval_id,
            by=by,
            channel=channel,
            edited_arguments=body.edited_arguments,
            always=body.always,
            always_pattern=body.always_pattern,
            seen_hash=body.args_hash,
        )
    except EditRefused as exc:
        raise ApiError(422, str(exc)) from None
    except ApprovalRefused as exc:
        raise ApiError(409, str(exc)) from None
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
    try:
        await deny(ctx.store, approval_id, reason=body.reason, by=by, channel=channel)
    except ApprovalRefused as exc:
        raise ApiError(409, str(exc)) from None
    ctx.nudge()
    return Decision(approval_id=approval_id, errand_id=pending.errand_id, decision="denied")


def error_response(exc: Exception) -> JSONResponse | None:
    """The answer for an exception the API knows how to explain; None for the rest."""
    if isinstance(exc, ApiError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)
    if isinstance(exc, KeyReused):  # the key conflicts with an earlier, different request
        return JSONResponse({"detail": str(exc)}, status_code=409)
    if isinstance(exc, NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)
    if isinstance(exc, (UserError, ModelSpecError, WorkspaceRefused, ConfigError)):
        return JSONResponse({"detail": str(exc)}, status_code=422)
    return None
