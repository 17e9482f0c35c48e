"""The webhook notifier: tell the person when an errand needs them, finishes or fails.

Configured in ``errands.toml``::

    [notify]
    webhook_url = "https://ntfy.sh/my-errands"     # or a Slack incoming webhook, or anything
    headers = { Authorization = "Bearer ..." }     # optional

Each notification is one JSON POST::

    {"event": "approval_requested", "errand_id": "e8z1…", "title": "…",
     "state": "waiting_approval", "approval_id": "e8z1….7", "tool": "http_request",
     "effect": "external", "rule": "effects.external", "url": "http://127.0.0.1:7878/errands/e8z1…",
     "at": 1767000000.0, "text": "errands: http_request waits for your approval — …"}

It never carries secrets: ids, titles, tool names, effect classes, rule names and
states -- never argument values, tool results or failure messages. ``text`` is a
ready-made line for services that show one (Slack shows ``text``).

Delivery never blocks an errand: the store's commit listener only reads the new
events and queues a notification; a background task posts it, retrying failures
(network errors, 408, 429, 5xx) a few times with backoff, then logs and drops it.
Notifications come from commits made by this server process; an errand run by
``errands run`` in another process is not watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from errands.config import NotifySettings
from errands.core import events as ev
from errands.core.labels import Confidentiality
from errands.core.states import ErrandState
from errands.errors import NotFound
from errands.store import Store

if TYPE_CHECKING:
    import httpx

__all__ = ["Notifier"]

log = logging.getLogger("errands.channels.webhook")

QUEUE_LIMIT = 1000
STATE_EVENTS = {
    ErrandState.done.value: "errand_done",
    ErrandState.failed.value: "errand_failed",
    ErrandState.needs_attention.value: "needs_attention",
}


class Notifier:
    def __init__(
        self, settings: NotifySettings, store: Store, inbox_url: str, *, backoff: float = 1.0
    ) -> None:
        self.settings = settings
        self.store = store
        self.inbox_url = (settings.inbox_url or inbox_url).rstrip("/")
        self.backoff = backoff
        self.started = time.time()
        self._seen: dict[str, int] = {}
        self._scan: set[str] = set()
        self._scanning: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(4)
        self._client: httpx.AsyncClient | None = None
        self.sent = 0
        self.failed = 0
        if settings.webhook_url:
            import httpx  # (only when there is a webhook: errands up answers without it)

            self._client = httpx.AsyncClient(timeout=settings.timeout_seconds)
            store.subscribe(self._committed)

    # -- finding what to tell -----------------------------------------------------------

    def _committed(self, errand_id: str, seq: int) -> None:
        if seq <= self._seen.get(errand_id, 0):
            return
        self._scan.add(errand_id)
        if self._scanning is None or self._scanning.done():
            self._scanning = asyncio.ensure_future(self._scan_all())

    async def _scan_all(self) -> None:
        while self._scan:
            errand_id = self._scan.pop()
            try:
                await self._scan_one(errand_id)
            except Exception:  # never let a notification problem touch the errands
                log.exception("notifier: could not read errand %s", errand_id)

    async def _scan_one(self, errand_id: str) -> None:
        after = self._seen.get(errand_id, 0)
        stored = await self.store.read(errand_id, after=after)
        if not stored:
            return
        self._seen[errand_id] = stored[-1].seq
        for s in stored:
            if s.event.at < self.started:
                continue  # from before this server started: not news
            payload = self._payload(errand_id, s.seq, s.event)
            if payload is not None and payload["event"] in self.settings.events:
                await self._enqueue(errand_id, payload)

    def _payload(self, errand_id: str, seq: int, event: ev.Event) -> dict[str, Any] | None:
        url = f"{self.inbox_url}/errands/{errand_id}"
        if isinstance(event, ev.ApprovalRequested):
            return {
                "event": "approval_requested",
                "errand_id": errand_id,
                "state": ErrandState.waiting_approval.value,
                "approval_id": f"{errand_id}.{seq}",
                "tool": event.tool,
                "effect": event.effect.value,
                "rule": event.rule,
                "url": url,
                "at": event.at,
            }
        if isinstance(event, ev.UserMessage) and event.channel == "watch":
            return {  # a watch saw new items and started this errand
                "event": "watch_changed",
                "errand_id": errand_id,
                "state": ErrandState.queued.value,
                # errands' own first line ("3 new items on URL since the last check:"),
                # never the page's text
                "summary": event.content.text.split("\n", 1)[0][:SUMMARY_CHARS],
                "watch": event.by.removeprefix("watch:"),
                "url": url,
                "at": event.at,
            }
        if isinstance(event, ev.StateChanged) and event.state in STATE_EVENTS:
            return {
                "event": STATE_EVENTS[event.state],
                "errand_id": errand_id,
                "state": event.state,
                "summary": _summary(event),
                "url": url,
                "at": event.at,
            }
        return None

    async def _enqueue(self, errand_id: str, payload: dict[str, Any]) -> None:
        try:
            title = (await self.store.view(errand_id)).title
        except NotFound:
            title = ""
        payload["title"] = title
        payload["text"] = _line(payload)
        if len(self._deliveries) >= QUEUE_LIMIT:
            log.warning(
                "notifier: %d deliveries pending; dropping %s", QUEUE_LIMIT, payload["event"]
            )
            return
        task = asyncio.ensure_future(self._deliver(payload))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    # -- delivering -----------------------------------------------------------------------

    async def _deliver(self, payload: dict[str, Any]) -> None:
        assert self._client is not None and self.settings.webhook_url is not None
        import httpx

        attempts = self.settings.retries + 1
        async with self._limit:
            for attempt in range(1, attempts + 1):
                problem: str
                try:
                    response = await self._client.post(
                        self.settings.webhook_url, json=payload, headers=self.settings.headers
                    )
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                    retry = True
                else:
                    if response.is_success:
                        self.sent += 1
                        return
                    problem = f"HTTP {response.status_code}"
                    retry = response.status_code in (408, 425, 429) or response.status_code >= 500
                if not retry or attempt == attempts:
                    self.failed += 1
                    log.warning(
                        "notifier: gave up on %s for %s after %d attempt(s): %s",
                        payload["event"],
                        payload["errand_id"],
                        attempt,
                        problem,
                    )
                    return
                log.info(
                    "notifier: %s for %s failed (%s); retrying",
                    payload["event"],
                    payload["errand_id"],
                    problem,
                )
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))

    async def close(self, timeout: float = 3.0) -> None:
        """Give queued deliveries a moment, then stop."""
        if self._scanning is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._scanning), timeout)
        pending = list(self._deliveries)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if late:
                log.warning("notifier: %d notification(s) not delivered before shutdown", len(late))
        if self._client is not None:
            await self._client.aclose()


SUMMARY_CHARS = 200


def _summary(event: ev.StateChanged) -> str:
    """The first line of what the errand ended with: its result (unless the result is
    secret) or the reason it stopped -- never arguments, never secrets (the log holds
    them redacted already)."""
    if event.result is not None:
        if event.result.confidentiality is Confidentiality.secret:
            return ""
        text = event.result.text
    else:
        text = event.reason
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= SUMMARY_CHARS else line[: SUMMARY_CHARS - 1].rstrip() + "…"


def _line(p: dict[str, Any]) -> str:
    title = p.get("title") or p["errand_id"]
    summary = f": {p['summary']}" if p.get("summary") else ""
    match p["event"]:
        case "approval_requested":
            return f"errands: {p['tool']} ({p['effect']}) waits for your approval — {title}"
        case "errand_done":
            return f"errands: done — {title}{summary}"
        case "errand_failed":
            return f"errands: failed — {title}{summary}"
        case "watch_changed":
            return f"errands: something changed — {title}{summary}"
        case _:
            return f"errands: needs your attention — {title}{summary}"
