"""Rate limits: a scheduler that keeps a process under a provider's limits.

A :class:`RateLimiter` holds one token bucket per configured limit -- requests
(``rpm``), input tokens (``itpm``), output tokens (``otpm``) and input + output tokens
(``tpm``, OpenAI's combined count) per minute -- and a queue of the calls waiting for
them. It belongs to one model on one endpoint and is shared by every errand in the
process: :func:`shared_limiter` hands every wrapper of the same endpoint, model and
limits the same object, so the errands of one spec, of a fallback chain that contains
it and of another spec naming the same model all draw from the same buckets.

**Admission.** A call first *reserves*: one request, its input tokens estimated before
the call (``ceil(len / 4)`` of the serialised request -- system prompt, messages, tool
schemas -- times a correction the limiter learns from the counts the provider reported
for earlier calls) and its output tokens (the average the provider reported so far,
at most ``max_tokens``). It waits until every bucket holds its reservation, in queue
order: higher :attr:`~errands.models.protocol.ModelRequest.priority` first, first come
first served within one priority (parents before their fan-out when the parent's
requests carry a higher priority). Only the head of the queue waits on the clock;
the rest wait for their turn, so a thousand waiting calls cost nothing.

**Settlement.** After the call, each bucket is charged the difference between what
was reserved and what the provider reported (a bucket may go below zero: the next
calls wait until it has refilled). Cached input is counted where the provider counts
it toward its input limit:

==================  =========================================================
provider            cached input (cache reads) toward the input-token limit
==================  =========================================================
``anthropic``       not counted (Anthropic's ITPM excludes cache reads on
                    current models; cache *writes* count)
``openai``          counted (cached prompts still count toward TPM)
``openai-responses``counted
``gemini``          counted (conservative: not documented otherwise)
==================  =========================================================

``cache_reads_count`` in ``[providers.NAME]`` overrides the default, e.g. for a gateway.

**Staying under.** A provider measures over a window (60 s; a simulator may use a
shorter one: ``window``). Granting a full window's allowance at once and then refilling
at the full rate would allow up to twice the limit in one window, so each bucket holds
at most ``burst`` (2%, at least one unit) of one window's allowance and refills so that
burst plus one window's refill is ``1 - headroom`` (97%) of the allowance: in any
window at most 97% of the limit is granted, whatever the provider's algorithm (token
bucket or sliding window), and the 3% left absorbs the jitter between our clock and the
provider's. (With very small allowances -- a few requests per window -- the one-unit
burst weighs more and the refill is lower, never below half the limit.) A single
reservation larger than the burst waits until the bucket has refilled to it.

**Feedback.** A 429 means the provider saw more than we thought: the limiter stops
granting until its ``retry-after`` has passed (1 s when it gave none) and empties its
buckets. This happens with no limits configured too (the default): then the limiter
only spreads the pause to every errand that shares the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import math
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from errands.core.events import Usage
from errands.models.protocol import Model, ModelError, ModelReply, ModelRequest, TextSink

__all__ = [
    "CACHE_READS_COUNT",
    "RateLimitedModel",
    "RateLimiter",
    "RateLimits",
    "Reservation",
    "estimate_input_tokens",
    "shared_limiter",
]

# does the provider count cached input tokens toward its input-token limit?
CACHE_READS_COUNT: dict[str, bool] = {
    "anthropic": False,
    "openai": True,
    "openai-responses": True,
    "gemini": True,
}
DEFAULT_PAUSE = 1.0  # seconds to pause after a 429 without a retry-after
FIRST_OUTPUT_GUESS = 256  # output tokens reserved before the provider has reported any
_EPSILON = 1e-6
_LEARN = 0.2  # weight of the newest observation in the running estimates


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-minute limits (``None``: not limited) and how to stay under them."""

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    tpm: int | None = None
    window: float = 60.0  # seconds over which the provider counts
    cache_reads_count: bool = True
    burst: float = 0.02  # bucket capacity, as a share of one window's allowance
    headroom: float = 0.03  # what is never granted in one window, as a share

    def per_minute(self) -> dict[str, int]:
        limits = {"rpm": self.rpm, "itpm": self.itpm, "otpm": self.otpm, "tpm": self.tpm}
        return {k: v for k, v in limits.items() if v is not None}


def _message_chars(request: ModelRequest) -> int:
    n = len(request.system)
    for m in request.messages:
        n += len(m.text) + 16  # role and framing
        for c in m.tool_calls:
            n += len(c.name) + len(json.dumps(c.arguments)) + 32
        n += sum(len(img.data_base64) // 8 for img in m.images)  # images are not text
    for t in request.tools:
        n += len(t.name) + len(t.description) + len(json.dumps(t.parameters)) + 32
    return n


def estimate_input_tokens(request: ModelRequest) -> int:
    """``ceil(chars / 4)`` of the serialised request: system, messages, tool schemas."""
    return math.ceil(_message_chars(request) / 4)


class _Bucket:
    __slots__ = ("capacity", "level", "per_window", "rate", "stamp")

    def __init__(self, per_minute: int, limits: RateLimits, now: float) -> None:
        self.per_window = per_minute * limits.window / 60.0
        self.capacity = max(1.0, self.per_window * limits.burst)
        # in any window: capacity + rate * window <= (1 - headroom) of the allowance
        usable = max(self.per_window * (1.0 - limits.headroom) - self.capacity, self.per_window / 2)
        self.rate = usable / limits.window  # per second
        self.level = self.capacity
        self.stamp = now

    def _cap(self, want: float) -> float:
        return max(self.capacity, min(want, self.per_window))

    def refill(self, now: float, want: float) -> None:
        if now > self.stamp:
            cap = self._cap(want)
            if self.level < cap:
                self.level = min(cap, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def delay(self, want: float) -> float:
        """Seconds until the bucket holds *want* (capped at one window's allowance)."""
        want = min(want, self.per_window)
        if self.level >= want - _EPSILON:
            return 0.0
        return (want - self.level) / self.rate


@dataclass(slots=True)
class Reservation:
    """What one call reserved: per bucket, and its raw estimates (for learning)."""

    amounts: dict[str, float] = field(default_factory=dict)
    input_estimate: int = 0
    output_estimate: float = 0.0


@dataclass(slots=True)
class _Waiter:
    key: tuple[int, int]
    need: dict[str, float]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


@dataclass(slots=True)
class LimiterStats:
    granted: int = 0
    throttled: int = 0  # 429s seen
    waited_seconds: float = 0.0  # summed over calls


class RateLimiter:
    """Token buckets plus a priority queue; see the module docstring."""

    def __init__(
        self, limits: RateLimits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or RateLimits()
        self._clock = clock
        now = clock()
        self.buckets = {
            k: _Bucket(v, self.limits, now) for k, v in self.limits.per_minute().items()
        }
        self.paused_until = 0.0
        self._queue: list[_Waiter] = []
        self._order = itertools.count()
        self._input_ratio = 1.0  # counted input tokens / our estimate, learned
        self._output_mean: float | None = None
        self.stats = LimiterStats()

    def __repr__(self) -> str:
        return f"RateLimiter({self.limits.per_minute()}, window={self.limits.window:g}s)"

    # -- reserving -------------------------------------------------------------------

    def _need(self, request: ModelRequest) -> Reservation:
        raw_in = estimate_input_tokens(request)
        est_in = raw_in * self._input_ratio
        est_out = float(self._output_mean if self._output_mean is not None else FIRST_OUTPUT_GUESS)
        if request.max_tokens is not None:
            est_out = min(est_out, float(request.max_tokens))
        wanted = {"rpm": 1.0, "itpm": est_in, "otpm": est_out, "tpm": est_in + est_out}
        amounts = {k: wanted[k] for k in self.buckets}
        return Reservation(amounts, raw_in, est_out)

    def _delay(self, need: dict[str, float], now: float) -> float:
        if now < self.paused_until:
            return self.paused_until - now
        delay = 0.0
        for name, bucket in self.buckets.items():
            bucket.refill(now, need[name])
            delay = max(delay, bucket.delay(need[name]))
        return delay

    def _head(self) -> _Waiter | None:
        while self._queue and self._queue[0].done:
            heapq.heappop(self._queue)
        return self._queue[0] if self._queue else None

    def _wake_head(self) -> None:
        head = self._head()
        if head is not None:
            head.wake.set()

    async def acquire(self, request: ModelRequest) -> Reservation:
        """Wait for this call's turn and reserve its share of every bucket."""
        start = self._clock()
        if not self.buckets:  # no limits: only a 429 pause holds calls back
            while (pause := self.paused_until - self._clock()) > 0:
                await asyncio.sleep(pause)
            self._granted(start)
            return Reservation()
        reservation = self._need(request)
        waiter = _Waiter((-request.priority, next(self._order)), reservation.amounts)
        heapq.heappush(self._queue, waiter)
        try:
            while True:
                delay: float | None = None
                if self._head() is waiter:
                    delay = self._delay(waiter.need, self._clock())
                    if delay <= 0:
                        waiter.done = True
                        for name, amount in waiter.need.items():
                            self.buckets[name].level -= amount
                        self._wake_head()
                        self._granted(start)
                        return reservation
                    delay += 0.001
                waiter.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wake.wait(), delay)
        finally:
            if not waiter.done:  # cancelled while waiting: leave the queue
                waiter.done = True
                self._wake_head()

    def _granted(self, start: float) -> None:
        self.stats.granted += 1
        self.stats.waited_seconds += self._clock() - start

    # -- settling --------------------------------------------------------------------

    def settle(self, reservation: Reservation, usage: Usage) -> None:
        """Charge the buckets what the provider reported, instead of the estimates."""
        if usage.input_tokens <= 0 and usage.output_tokens <= 0:
            return  # the provider reported nothing: the estimates stand
        counted_in = float(usage.input_tokens)
        if not self.limits.cache_reads_count:
            counted_in = max(0.0, counted_in - usage.cached_input_tokens)
        out = float(usage.output_tokens)
        actual = {"rpm": 1.0, "itpm": counted_in, "otpm": out, "tpm": counted_in + out}
        for name, reserved in reservation.amounts.items():
            self.buckets[name].level -= actual[name] - reserved
        if reservation.input_estimate > 0:
            ratio = min(4.0, max(0.05, counted_in / reservation.input_estimate))
            self._input_ratio += _LEARN * (ratio - self._input_ratio)
        mean = self._output_mean
        self._output_mean = out if mean is None else mean + _LEARN * (out - mean)
        self._wake_head()  # a smaller charge than reserved may let the head go now

    def throttled(self, retry_after: float | None) -> None:
        """The provider answered 429: pause until it said, and empty the buckets."""
        self.stats.throttled += 1
        pause = retry_after if retry_after is not None else DEFAULT_PAUSE
        self.paused_until = max(self.paused_until, self._clock() + pause)
        for bucket in self.buckets.values():
            bucket.level = min(bucket.level, 0.0)
        self._wake_head()


def _is_rate_limit(exc: ModelError) -> bool:
    return getattr(exc, "status", None) == 429


class RateLimitedModel:
    """Sends every call of *inner* through *limiter*."""

    def __init__(self, inner: Model, limiter: RateLimiter) -> None:
        self.inner = inner
        self.name = inner.name
        self.limiter = limiter

    def __repr__(self) -> str:
        return f"RateLimitedModel({self.inner!r}, {self.limiter!r})"

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        reservation = await self.limiter.acquire(request)
        try:
            reply = await self.inner.complete(request, on_text)
        except ModelError as exc:
            if _is_rate_limit(exc):
                self.limiter.throttled(exc.retry_after)
            raise  # other failures keep their reservation: the provider may count them
        self.limiter.settle(reservation, reply.usage)
        return reply

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


_SHARED: weakref.WeakValueDictionary[Hashable, RateLimiter] = weakref.WeakValueDictionary()


def shared_limiter(key: Hashable, limits: RateLimits) -> RateLimiter:
    """The process's limiter for *key* (endpoint and model) with *limits*: every wrapper
    built for the same key and limits shares it while any of them is alive."""
    full = (key, limits)
    limiter = _SHARED.get(full)
    if limiter is None:
        limiter = RateLimiter(limits)
        _SHARED[full] = limiter
    return limiter
