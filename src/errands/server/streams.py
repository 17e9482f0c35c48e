"""The server-sent event streams: one errand's log, live; and every errand's changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from errands.core.errand import ErrandSummary
from errands.core.states import ErrandView
from errands.errors import NotFound
from errands.server.context import ServerContext

__all__ = ["all_stream", "errand_stream", "streaming"]

HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 2.0  # streams also look at the store this often (writes by other processes)


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def errand_stream(ctx: ServerContext, errand_id: str, after: int) -> AsyncIterator[bytes]:
    """The errand's log from *after* on, then live: events, view changes, model text
    (and ``text_reset`` when the text streamed so far is taken back), and ``output``: what
    a running tool prints (``{"seq", "stream", "text"}``; the latest of a call already
    running first, marked ``"replay": true``)."""
    hub, store = ctx.hub, ctx.store
    with hub.subscribe(errand_id) as sub:
        yield b"retry: 2000\n\n"
        for piece in hub.recent_output(errand_id):  # (a reconnect shows it afresh)
            yield _sse("output", {**piece.as_json(), "replay": True})
        last_beat = asyncio.get_running_loop().time()
        while not hub.closing.is_set():
            for piece in sub.take_outputs():
                yield _sse("output", piece.as_json())
            reset, texts = sub.take_texts()
            stored = await store.read(errand_id, after=after)
            if reset:  # a retry or fallback starts the reply over: drop the partial text
                yield _sse("text_reset", {})
            for delta in texts:
                yield _sse("text", {"delta": delta})
            for s in stored:
                yield _sse("event", {"seq": s.seq, "event": s.event.model_dump(mode="json")}, s.seq)
                after = s.seq
            if stored:
                view = await store.view(errand_id)
                yield _sse("view", ErrandSummary.of(view).model_dump(mode="json"))
            now = asyncio.get_running_loop().time()
            if now - last_beat >= HEARTBEAT_SECONDS:
                yield b": ping\n\n"
                last_beat = now
            await hub.wait(sub, POLL_SECONDS)


async def all_stream(ctx: ServerContext) -> AsyncIterator[bytes]:
    """Every errand that changes: its summary (coalesced, at most four times a second)."""
    hub, store = ctx.hub, ctx.store
    with hub.subscribe(None) as sub:
        yield b"retry: 2000\n\n"
        seen = {v.id: v.last_seq for v in await store.list_errands(limit=200)}
        last_beat = asyncio.get_running_loop().time()
        while not hub.closing.is_set():
            await hub.wait(sub, POLL_SECONDS)
            changed = sub.take_changed()
            views: list[ErrandView] = []
            if changed:
                for errand_id in changed:
                    try:
                        views.append(await store.view(errand_id))
                    except NotFound:
                        continue
            else:  # nothing in this process: look for writes by other processes
                views = [
                    v for v in await store.list_errands(limit=200) if seen.get(v.id) != v.last_seq
                ]
            for view in views:
                seen[view.id] = view.last_seq
                yield _sse("changed", ErrandSummary.of(view).model_dump(mode="json"))
            now = asyncio.get_running_loop().time()
            if now - last_beat >= HEARTBEAT_SECONDS:
                yield b": ping\n\n"
                last_beat = now
            if views:
                await asyncio.sleep(0.25)


def streaming(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )
