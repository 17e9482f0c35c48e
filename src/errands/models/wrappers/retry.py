"""Retries: a :class:`~errands.models.protocol.Model` wrapper that tries again.

:class:`RetryingModel` retries a call that failed with a *retryable*
:class:`~errands.models.protocol.ModelError` -- the adapters mark 408/409/429/5xx,
timeouts, connection failures, streams cut short and in-stream error events as
retryable -- with jittered exponential backoff ("full jitter": a random wait between
half and all of ``base * 2**n``, capped at ``max_delay``). A ``retry_after`` the
provider sent is honoured: the wait is never shorter than it. Attempts are capped
(``max_attempts``, the first included) and so is the total time (``max_elapsed``): a
retry whose wait would end past it is not made, and the last error is raised.
A non-retryable error is raised at once, never retried. Every attempt has a total
deadline (``attempt_deadline``): a server that keeps the connection alive without
finishing its reply (keep-alive comments reset a read timeout) fails the attempt, as
a retryable timeout.

Nothing is counted twice: a failed attempt returns no reply, so it adds no usage;
only the reply of the attempt that succeeded reaches the log. Nor is anything shown
twice: the text a failed attempt streamed has already reached the text sink, so before
retrying, the wrapper takes it back -- it resets the sink (see
:mod:`errands.models.streaming`) if the attempt streamed anything -- and the retry
streams its text from the start.

The provider SDKs' own hidden retries are switched off when :func:`resolve_model
<errands.models.spec.resolve_model>` builds a client, so every attempt passes through
this wrapper and the rate limiter beneath it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from errands.models.protocol import Model, ModelError, ModelReply, ModelRequest, TextSink
from errands.models.streaming import attempt_text

__all__ = ["RetryPolicy", "RetryingModel", "retry_after_from_headers"]

MAX_RETRY_AFTER = 3600.0  # a header asking for more than an hour is not believed


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (OpenAI, Anthropic; more precise) or
    ``retry-after`` (seconds), if the response had either."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        with contextlib.suppress(ValueError, TypeError):
            value = float(raw) * scale
            if 0 <= value <= MAX_RETRY_AFTER:
                return value
    return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4  # the first attempt included; 1 = no retries
    max_elapsed: float = 120.0  # seconds from the first attempt; no retry would end later
    base_delay: float = 0.5  # the first backoff is between base/2 and base
    max_delay: float = 16.0  # backoff cap (a longer retry_after is still honoured)
    attempt_deadline: float = 600.0  # seconds for a whole attempt, however the server trickles

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The jittered wait before retry number *retry* (0 = the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0**retry)
        return ceiling * (0.5 + 0.5 * rng())


Sleep = Callable[[float], Awaitable[None]]


class RetryingModel:
    """Retries retryable failures of *inner* according to *policy*."""

    def __init__(
        self,
        inner: Model,
        policy: RetryPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self.retries = 0  # retries made so far (all calls), for reports and tests

    def __repr__(self) -> str:
        return f"RetryingModel({self.inner!r}, {self.policy})"

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        start = self._clock()
        attempt = 0
        sink = attempt_text(on_text)
        while True:
            try:
                try:
                    async with asyncio.timeout(self.policy.attempt_deadline):
                        return await self.inner.complete(request, sink)
                except TimeoutError:
                    raise ModelError(
                        f"{self.name}: no complete reply within {self.policy.attempt_deadline:g} s",
                        retryable=True,
                    ) from None
            except ModelError as exc:
                attempt += 1
                if not exc.retryable or attempt >= self.policy.max_attempts:
                    raise
                wait = self.policy.backoff(attempt - 1)
                if exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
                if self._clock() - start + wait > self.policy.max_elapsed:
                    raise
                self.retries += 1
                if sink is not None:
                    sink.reset()  # the person is told at once, not after the wait
                await self._sleep(wait)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()
