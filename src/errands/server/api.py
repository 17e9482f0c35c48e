"""The JSON API: errands, their live streams, the approval queue, and schedules
(:mod:`.schedule_api`).

Every body is a pydantic model (:mod:`.schemas`) and every answer is documented in
``/openapi.json``; what each route does is in :mod:`.actions`, the streams in
:mod:`.streams`. Refusals are specific (404, 409, 422), a store that cannot write right
now is a 503 with ``Retry-After`` (and ``/api/health`` says why), and a bug stays a 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from errands import __version__
from errands.core.errand import ApprovalOut, ErrandSummary
from errands.core.states import ErrandState
from errands.errors import NotFound, StoreError, StoreUnavailable
from errands.server.context import ServerContext
from errands.server.handlers import (
    ApiError,
    Order,
    approvals_json,
    caller,
    create,
    decide_approve,
    decide_deny,
    listing,
    marks,
    message,
    preview_decision,
    resume,
    store_condition,
    view_or_404,
)
from errands.server.mcp_api import add_mcp_routes
from errands.server.memory_api import add_memory_routes
from errands.server.schedule_api import add_schedule_routes
from errands.server.schemas import (
    APPROVAL_ID,
    ERRAND_ID,
    MAX_PAGE,
    MAX_SEQ,
    PAGE,
    SUMMARIES,
    ApproveBody,
    ArchiveBody,
    Archived,
    Budget,
    CancelBody,
    Channel,
    Created,
    CreateErrand,
    Decision,
    DenyBody,
    ErrandDetail,
    ErrorBody,
    Health,
    Message,
    MessageSent,
    PolicyPreview,
    PolicyPreviewBody,
    ResumeBody,
    StoredEventOut,
)
from errands.server.streams import all_stream, errand_stream, streaming

__all__ = ["build_router"]


def _json(data: bytes, status: int = 200) -> Response:
    return Response(content=data, status_code=status, media_type="application/json")


Condition = Literal["disk_full", "locked", "io_error"]

# what /api/health says about the store while it cannot write (no path: health is public)
CONDITION_TEXT: dict[str, str] = {
    "disk_full": "the disk holding the store is full",
    "locked": "another process holds the store's write lock",
    "io_error": "the disk holding the store reports I/O errors",
}


class Unavailable(BaseModel):
    """A 503: the store cannot write right now; nothing was written."""

    detail: str
    condition: Condition


class StoreStatus(BaseModel):
    """Why the store cannot write right now (errands waits, and goes on by itself)."""

    condition: Condition
    detail: str
    since: float  # when it began (Unix time)


class HealthOut(Health):
    store: StoreStatus | None = None  # None: the store writes


# -- the router ------------------------------------------------------------------------------


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "malformed request",
        404: "no such errand or approval",
        409: "conflicts with the errand's state, or an Idempotency-Key used for another request",
        422: "cannot be carried out as asked",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


COMMON: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not valid JSON"},
    401: {"model": ErrorBody, "description": "a token is needed"},
    403: {"model": ErrorBody, "description": "cross-origin or CSRF check failed"},
    413: {"model": ErrorBody, "description": "the body is too large"},
    415: {"model": ErrorBody, "description": "the body is not JSON"},
    421: {"model": ErrorBody, "description": "unknown Host"},
    422: {"model": ErrorBody, "description": "invalid request"},
    503: {
        "model": Unavailable,
        "description": "the store cannot write right now (a full disk, a held lock, an I/O "
        "error): nothing was written; try again after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "server-sent events, one JSON object in each `data`: `event` (a log "
        "event: {seq, event}), `view` (the errand's summary), `text` (a model text delta: "
        "{delta}); `changed` (an errand's summary) on the all-errands stream. Reconnecting "
        "with Last-Event-ID resumes after that seq.",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string", "enum": ["event", "view", "text", "changed"]},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "id": {"type": "string", "pattern": "^[0-9]+$"},
                        "retry": {"type": "integer"},
                    },
                }
            }
        },
    }
}

ERRAND_LINKS = {
    op: {"operationId": op, "parameters": {"errand_id": "$response.body#/id"}}
    for op in ("getErrand", "sendMessage", "cancelErrand", "resumeErrand", "archiveErrand")
}
APPROVAL_LINKS = {
    op: {"operationId": op, "parameters": {"approval_id": "$response.body#/0/id"}}
    for op in ("approve", "deny")
}

IdemKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="the same key gets the same response; nothing is created twice",
    ),
]
ChannelHeader = Annotated[
    Channel, Header(alias="X-Errands-Channel", description="recorded with the decision")
]
ByHeader = Annotated[
    str, Header(alias="X-Errands-By", max_length=64, description="who decides (recorded)")
]
ErrandIdPath = Annotated[str, Path(pattern=ERRAND_ID, description="the errand's id")]
ApprovalIdPath = Annotated[str, Path(pattern=APPROVAL_ID, description="ERRAND.SEQ")]


def build_router(get_ctx: Callable[[Request], ServerContext]) -> APIRouter:
    router = APIRouter(prefix="/api", responses=COMMON)

    async def run(
        request: Request,
        fn: Callable[[ServerContext], Coroutine[Any, Any, tuple[int, Any]]],
    ) -> Response:
        status, data = await fn(get_ctx(request))
        return _json(json.dumps(data).encode(), status)

    @router.get("/health", response_model=HealthOut, operation_id="health")
    async def health(request: Request) -> HealthOut:
        found = store_condition(get_ctx(request))
        store = None
        if found is not None:
            condition, since = found
            text = CONDITION_TEXT.get(condition.condition, CONDITION_TEXT["io_error"])
            store = StoreStatus.model_validate(
                {
                    "condition": condition.condition,
                    "detail": f"{text}; errands waits and goes on by itself when it clears",
                    "since": since,
                }
            )
        return HealthOut(status="ok", version=__version__, store=store)

    @router.post(
        "/errands",
        status_code=201,
        response_model=Created,
        responses={**_errors(409, 422), 201: {"links": ERRAND_LINKS}},
        summary="Start an errand",
        operation_id="createErrand",
    )
    async def post_errand(
        request: Request,
        body: CreateErrand,
        idempotency_key: IdemKey = "",
        channel: ChannelHeader = "api",
        by: ByHeader = "",
    ) -> Response:
        async def go(ctx: ServerContext) -> tuple[int, Any]:
            return await create(ctx, body, idempotency_key or None, caller(by), channel)

        return await run(request, go)

    @router.get(
        "/errands",
        response_model=list[ErrandSummary],
        summary="List errands",
        operation_id="listErrands",
    )
    async def list_errands(
        request: Request,
        state: Annotated[list[ErrandState] | None, Query(description="only these states")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        order: Annotated[
            Order,
            Query(
                description="created: newest first; activity: the most recently active "
                "first (among the 1,000 most recently created)"
            ),
        ] = "created",
        archived: Annotated[
            bool | None,
            Query(description="true: only archived errands; false: none; unset: both"),
        ] = None,
    ) -> Response:
        ctx = get_ctx(request)
        views = await listing(ctx, states=state, limit=limit, order=order, archived=archived)
        return _json(SUMMARIES.dump_json([ErrandSummary.of(v) for v in views]))

    @router.get(
        "/errands/{errand_id}",
        response_model=ErrandDetail,
        responses=_errors(404),
        summary="An errand: status, result, usage, approvals and events",
        operation_id="getErrand",
    )
    async def get_errand(
        request: Request,
        errand_id: ErrandIdPath,
        after: Annotated[
            int | None,
            Query(ge=0, le=MAX_SEQ, description="every event after this seq (to follow it)"),
        ] = None,
        before: Annotated[
            int | None,
            Query(ge=1, le=MAX_SEQ, description="the page of events before this seq"),
        ] = None,
        limit: Annotated[
            int, Query(ge=1, le=MAX_PAGE, description="events in a page (without after)")
        ] = PAGE,
    ) -> Response:
        ctx = get_ctx(request)
        view = await view_or_404(ctx, errand_id)
        if after is not None:
            stored = await ctx.store.read(errand_id, after=after)
        else:  # the newest events (or those before *before*): never the whole log
            stored = await ctx.store.read_latest(errand_id, limit, before)
        detail = ErrandDetail(
            **ErrandSummary.of(view).model_dump(),
            workspace=view.workspace,
            approvals=[ApprovalOut.of(p, view.title) for p in view.pending.values()],
            events=[StoredEventOut(seq=s.seq, event=s.event) for s in stored],
            events_before=stored[0].seq - 1 if stored else 0,
            children=[ErrandSummary.of(c) for c in await ctx.store.children(errand_id)],
        )
        return _json(detail.model_dump_json().encode())

    @router.post(
        "/errands/{errand_id}/messages",
        status_code=201,
        response_model=MessageSent,
        responses=_errors(404, 409),
        summary="Tell an errand something (reopens a finished one)",
        operation_id="sendMessage",
    )
    async def post_message(
        request: Request,
        errand_id: ErrandIdPath,
        body: Message,
        idempotency_key: IdemKey = "",
        channel: ChannelHeader = "api",
        by: ByHeader = "",
    ) -> Response:
        async def go(ctx: ServerContext) -> tuple[int, Any]:
            key = idempotency_key or None
            return await message(ctx, errand_id, body, key, caller(by), channel)

        return await run(request, go)

    @router.post(
        "/errands/{errand_id}/cancel",
        response_model=ErrandSummary,
        responses=_errors(404, 409),
        summary="Cancel an errand",
        operation_id="cancelErrand",
    )
    async def post_cancel(
        request: Request,
        errand_id: ErrandIdPath,
        body: CancelBody | None = None,
        channel: ChannelHeader = "api",
        by: ByHeader = "",
    ) -> ErrandSummary:
        ctx = get_ctx(request)
        await view_or_404(ctx, errand_id)
        try:
            await ctx.harness.cancel(
                errand_id, reason=body.reason if body else "", by=caller(by), channel=channel
            )
        except NotFound:
            raise ApiError(404, f"no errand {errand_id}") from None
        except StoreUnavailable:
            raise  # a 503: try again later
        except StoreError as exc:
            raise ApiError(409, str(exc)) from None
        return ErrandSummary.of(await ctx.store.view(errand_id))

    @router.post(
        "/errands/{errand_id}/resume",
        response_model=ErrandSummary,
        responses=_errors(404, 409, 422),
        summary="Give an errand more steps; one stopped at its step limit goes on",
        operation_id="resumeErrand",
    )
    async def post_resume(
        request: Request,
        errand_id: ErrandIdPath,
        body: ResumeBody,
        channel: ChannelHeader = "api",
        by: ByHeader = "",
    ) -> ErrandSummary:
        view = await resume(get_ctx(request), errand_id, body, caller(by), channel)
        return ErrandSummary.of(view)

    @router.post(
        "/errands/{errand_id}/archive",
        response_model=Archived,
        responses=_errors(404),
        summary="Archive an errand (or bring it back): it leaves the inbox's lists",
        operation_id="archiveErrand",
    )
    async def post_archive(
        request: Request, errand_id: ErrandIdPath, body: ArchiveBody | None = None
    ) -> Archived:
        ctx = get_ctx(request)
        await view_or_404(ctx, errand_id)
        archived = True if body is None else body.archived
        await marks(ctx).set_archived(errand_id, archived)
        return Archived(errand_id=errand_id, archived=archived)

    @router.get(
        "/errands/{errand_id}/stream",
        response_class=StreamingResponse,
        responses={**SSE_RESPONSE, **_errors(404)},
        summary="The errand's events, live (server-sent events)",
        operation_id="streamErrand",
    )
    async def stream(
        request: Request,
        errand_id: ErrandIdPath,
        after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="start after this seq")] = 0,
    ) -> StreamingResponse:
        ctx = get_ctx(request)
        await view_or_404(ctx, errand_id)
        # a reconnecting EventSource says where it got to (a malformed value is ignored)
        last = request.headers.get("last-event-id", "")
        start = max(after, int(last) if last.isdigit() and len(last) < 16 else 0)
        return streaming(errand_stream(ctx, errand_id, start))

    @router.get(
        "/stream",
        response_class=StreamingResponse,
        responses=SSE_RESPONSE,
        summary="Every errand's changes, live (server-sent events)",
        operation_id="streamAll",
    )
    async def stream_all(request: Request) -> StreamingResponse:
        return streaming(all_stream(get_ctx(request)))

    @router.get(
        "/budget",
        response_model=Budget,
        summary="Today's spend against the daily budget",
        operation_id="getBudget",
    )
    async def get_budget(request: Request) -> Budget:
        ctx = get_ctx(request)
        status = await ctx.store.budget(ctx.settings.budget.daily_usd)
        return Budget.model_validate(status.as_dict())

    @router.get(
        "/approvals",
        response_model=list[ApprovalOut],
        summary="Everything waiting for you",
        operation_id="listApprovals",
        responses={200: {"links": APPROVAL_LINKS}},
    )
    async def list_approvals(request: Request) -> Response:
        return _json(await approvals_json(get_ctx(request)))

    @router.post(
        "/approvals/{approval_id}/approve",
        response_model=Decision,
        responses=_errors(404, 409, 422),
        summary="Approve a pending action (optionally edited, or always)",
        operation_id="approve",
    )
    async def post_approve(
        request: Request,
        approval_id: ApprovalIdPath,
        body: ApproveBody | None = None,
        channel: ChannelHeader = "api",
        by: ByHeader = "",
    ) -> Decision:
        return await decide_approve(
            get_ctx(request), approval_id, body or ApproveBody(), caller(by), channel
        )

    @router.post(
        "/approvals/{approval_id}/policy",
        response_model=PolicyPreview,
        responses=_errors(404, 409, 422),
        summary="What the policy decides for this approval, as requested or as edited",
        operation_id="previewDecision",
    )
    async def post_policy_preview(
        request: Request, approval_id: ApprovalIdPath, body: PolicyPreviewBody | None = None
    ) -> PolicyPreview:
        return await preview_decision(
            get_ctx(request), approval_id, (body or PolicyPreviewBody()).edited_arguments
        )

    @router.post(
        "/approvals/{approval_id}/deny",
        response_model=Decision,
        responses=_errors(404, 409),
        summary="Deny a pending action; the reason goes back to the model",
        operation_id="deny",
    )
    async def post_deny(
        request: Request,
        approval_id: ApprovalIdPath,
        body: DenyBody,
        channel: ChannelHeader = "api",
        by: ByHeader = "",
    ) -> Decision:
        return await decide_deny(get_ctx(request), approval_id, body, caller(by), channel)

    add_schedule_routes(router, get_ctx)
    add_mcp_routes(router, get_ctx)
    add_memory_routes(router, get_ctx)
    return router
