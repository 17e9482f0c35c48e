"""The API's memory: ``GET /api/memory?scope=&q=&limit=`` and ``DELETE /api/memory/{id}``
(docs/memory.md). A bad scope or query is a 422 and an unknown id a 404, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from errands.server.context import ServerContext
from errands.server.schemas import ErrorBody
from errands.store.memory import MAX_QUERY_CHARS, SCOPE_PATTERN, as_dict

__all__ = ["add_memory_routes"]


class MemoryOut(BaseModel):
    id: int
    scope: str
    text: str
    tags: list[str]
    integrity: str  # trusted | untrusted: untrusted when it was derived from outside content
    confidentiality: str
    at: float
    errand_id: str | None  # the errand whose remember call kept it (None: not an errand's)
    seq: int | None  # that call's intent in the errand's log


class MemoryDeleted(BaseModel):
    deleted: int


_TEXT = {404: "no such memory", 422: "a bad scope, query or limit"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _TEXT[c]} for c in codes}


def add_memory_routes(router: APIRouter, get_ctx: Callable[[Request], ServerContext]) -> None:
    """The memory routes, on the API's router (its prefix, auth and error bodies)."""

    @router.get(
        "/memory",
        response_model=list[MemoryOut],
        summary="Memories, newest first -- or those matching a query, best first",
        operation_id="listMemory",
        responses=_errors(422),
    )
    async def list_memory(
        request: Request,
        scope: Annotated[
            str | None,
            Query(
                pattern=SCOPE_PATTERN,
                description="person, or schedule:NAME (default: every scope)",
            ),
        ] = None,
        q: Annotated[
            str | None,
            Query(max_length=MAX_QUERY_CHARS, pattern=r"\w", description="words (any of them)"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        found = await get_ctx(request).store.memories(scope, q, limit)
        return [as_dict(m) for m in found]

    @router.delete(
        "/memory/{memory_id}",
        response_model=MemoryDeleted,
        summary="Delete a memory for good (a purge: row, index entry and file pages)",
        operation_id="deleteMemory",
        responses=_errors(404),
    )
    async def delete_memory(
        request: Request, memory_id: Annotated[int, Path(ge=1, le=2**62)]
    ) -> MemoryDeleted:
        await get_ctx(request).store.forget(memory_id)
        return MemoryDeleted(deleted=memory_id)
