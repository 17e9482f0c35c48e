"""The API's schedules and watches: ``/api/schedules`` and ``/api/schedules/{name}``.

What each route does is an operation of :mod:`errands.engine.schedules` (validate
everything, then write once); a refusal names the field (422 ``{"detail": "cron: …"}``),
a duplicate name is a 409, an unknown one a 404, and nothing is written. The runner's
scheduler polls the store every second, so a schedule added or changed here is picked
up within a second; a run started here is claimed at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import Response

from errands.engine.schedules import (
    SchedulePatch,
    ScheduleRequest,
    add_schedule,
    edit_schedule,
    remove_schedule,
    run_now,
    schedule_info,
    schedule_infos,
)
from errands.server.context import ServerContext
from errands.server.handlers import caller
from errands.server.schemas import (
    SCHEDULE_NAME,
    ErrorBody,
    ScheduleDetail,
    ScheduleRunOut,
    ScheduleSummary,
)

__all__ = ["add_schedule_routes"]

NamePath = Annotated[str, Path(pattern=SCHEDULE_NAME, description="the schedule's name")]
ByHeader = Annotated[
    str, Header(alias="X-Errands-By", max_length=64, description="who made it (recorded)")
]

_TEXT = {
    404: "no such schedule",
    409: "a schedule with that name exists (create), or a run started this very second (run)",
    422: "cannot be done as asked: the detail names the field (cron, tz, every, at, url, …)",
}
SCHEDULE_LINKS = {
    op: {"operationId": op, "parameters": {"name": "$response.body#/name"}}
    for op in ("getSchedule", "editSchedule", "deleteSchedule", "runSchedule")
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _TEXT[c]} for c in codes}


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data).encode(), status_code=status, media_type="application/json")


def add_schedule_routes(router: APIRouter, get_ctx: Callable[[Request], ServerContext]) -> None:
    """The schedule routes, on the API's router (its prefix, auth and error bodies)."""

    async def detail(ctx: ServerContext, name: str, status: int = 200) -> Response:
        info = await schedule_info(ctx.store, name)
        return _json(info.as_dict(full=True), status)

    @router.get(
        "/schedules",
        response_model=list[ScheduleSummary],
        summary="Every schedule and watch",
        operation_id="listSchedules",
    )
    async def list_schedules(request: Request) -> Response:
        infos = await schedule_infos(get_ctx(request).store)
        return _json([info.as_dict(full=False) for info in infos])

    @router.post(
        "/schedules",
        status_code=201,
        response_model=ScheduleDetail,
        responses={**_errors(409, 422), 201: {"links": SCHEDULE_LINKS}},
        summary="Add a schedule (cron, every, at) or a watch",
        operation_id="createSchedule",
    )
    async def post_schedule(request: Request, body: ScheduleRequest, by: ByHeader = "") -> Response:
        ctx = get_ctx(request)
        # (an ``at`` must carry its UTC offset here: the caller's zone is not known)
        row = await add_schedule(
            ctx.store,
            ctx.settings,
            body,
            by=caller(by),
            need_offset=True,
            known_tools=ctx.harness.tool_names(),
        )
        return await detail(ctx, row.spec.name, 201)

    @router.get(
        "/schedules/{name}",
        response_model=ScheduleDetail,
        responses=_errors(404),
        summary="A schedule: its next slot, newest runs, cost today, last error",
        operation_id="getSchedule",
    )
    async def get_schedule(request: Request, name: NamePath) -> Response:
        return await detail(get_ctx(request), name)

    @router.patch(
        "/schedules/{name}",
        response_model=ScheduleDetail,
        responses=_errors(404, 422),
        summary="Change a schedule (only the fields given), pause or resume it",
        operation_id="editSchedule",
    )
    async def patch_schedule(request: Request, name: NamePath, body: SchedulePatch) -> Response:
        ctx = get_ctx(request)
        await edit_schedule(
            ctx.store,
            ctx.settings,
            name,
            body,
            need_offset=True,
            known_tools=ctx.harness.tool_names(),
        )
        return await detail(ctx, name)

    @router.delete(
        "/schedules/{name}",
        status_code=204,
        response_class=Response,
        responses=_errors(404),
        summary="Remove a schedule (its runs stay, as errands)",
        operation_id="deleteSchedule",
    )
    async def delete_schedule(request: Request, name: NamePath) -> Response:
        await remove_schedule(get_ctx(request).store, name)  # (NotFound: 404)
        return Response(status_code=204)

    @router.post(
        "/schedules/{name}/run",
        response_model=ScheduleRunOut,
        responses=_errors(404, 409),
        summary="Start a run now (a watch: check it now)",
        operation_id="runSchedule",
    )
    async def post_run(request: Request, name: NamePath) -> ScheduleRunOut:
        ctx = get_ctx(request)
        done = await run_now(ctx.store, ctx.settings, name, started=lambda _: ctx.nudge())
        ctx.nudge()  # claimed at once by the runner
        return ScheduleRunOut.model_validate(done.as_dict())
