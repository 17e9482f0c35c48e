"""Failover: a chain of models tried in order, each behind a circuit breaker.

:class:`FallbackModel` sends a call to the first model of its chain whose breaker lets
it through; when that model fails (after its own retries), the next one gets the
*same request* -- the request is provider-neutral, so the fallback provider continues
the same transcript, earlier tool calls and results included, in its own wire format.
The reply's ``model`` names the member that answered (its spec, e.g.
``gemini:gemini-2.5-flash``), which the loop logs with the response.

A :class:`CircuitBreaker` belongs to one provider *endpoint* (shared, through
:func:`shared_breaker`, by every chain and model on it) and stops sending to a dead
provider: after ``failures`` consecutive failed calls it *opens* and the endpoint gets
no calls for ``cooldown`` seconds; then it is *half-open*: exactly one call (a probe)
goes through while the others still fall back; a successful probe closes it, a failed
one opens it for another cool-down.

What counts as the provider failing: a retryable error (5xx, 429, timeout, connection
failure, a broken stream) or a rejected key or account (401/403: an account suspended
by the vendor is a dead provider too). Any other error (a 400 about this request) still
moves the call on to the next model but says nothing about the provider's health.
When every model fails or is skipped, the call fails with one message that names each
member and why.

The text a failed member streamed is taken back before the next member starts: the
chain resets the text sink (see :mod:`errands.models.streaming`) if it streamed
anything, so the person sees the answering member's text once, not after a fragment.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Literal

from errands.models.protocol import Model, ModelError, ModelReply, ModelRequest, TextSink
from errands.models.streaming import attempt_text

__all__ = ["CircuitBreaker", "FallbackModel", "provider_failed", "shared_breaker"]

BreakerState = Literal["closed", "open", "half_open"]


def provider_failed(exc: ModelError) -> bool:
    """Does this error say the provider (not just this request) is failing?"""
    return exc.retryable or getattr(exc, "status", None) in (401, 403)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures: int = 3,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self.state: BreakerState = "closed"
        self.failures = 0  # consecutive
        self.opened_at = 0.0
        self._probing = False

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self.state})"

    def allow(self) -> bool:
        """May a call go to this endpoint now? (A yes in half-open state is the probe.)"""
        if self.state == "open" and self._clock() >= self.opened_at + self.cooldown:
            self.state = "half_open"
            self._probing = False
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.state = "closed"
        self.failures = 0
        self._probing = False

    def failed(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.state = "open"
            self.opened_at = self._clock()
        self._probing = False

    def abandoned(self) -> None:
        """The call was cancelled before it said anything about the provider."""
        self._probing = False

    def reopens_in(self) -> float:
        return max(0.0, self.opened_at + self.cooldown - self._clock())

    def describe(self) -> str:
        if self.state == "open":
            return (
                f"circuit open after {self.failures} failures in a row; "
                f"next try in {self.reopens_in():.0f}s"
            )
        if self.state == "half_open":
            return "circuit half-open: a probe is in flight"
        return "circuit closed"


_SHARED: weakref.WeakValueDictionary[Hashable, CircuitBreaker] = weakref.WeakValueDictionary()


def shared_breaker(key: Hashable, name: str, *, failures: int, cooldown: float) -> CircuitBreaker:
    """The process's breaker for endpoint *key* (with these settings)."""
    full = (key, failures, cooldown)
    breaker = _SHARED.get(full)
    if breaker is None:
        breaker = CircuitBreaker(name, failures=failures, cooldown=cooldown)
        _SHARED[full] = breaker
    return breaker


class FallbackModel:
    """Tries each ``(model, breaker)`` of *members* in order; see the module docstring."""

    def __init__(self, name: str, members: Sequence[tuple[Model, CircuitBreaker]]) -> None:
        if not members:
            raise ValueError("a fallback chain needs at least one model")
        self.name = name
        self.members = list(members)

    def __repr__(self) -> str:
        return f"FallbackModel({self.name!r}, {[m.name for m, _ in self.members]})"

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        problems: list[str] = []
        retryable = False
        retry_after: float | None = None
        sink = attempt_text(on_text)
        for model, breaker in self.members:
            if not breaker.allow():
                problems.append(f"{model.name}: skipped ({breaker.describe()})")
                retryable = True
                wait = breaker.reopens_in()
                retry_after = wait if retry_after is None else min(retry_after, wait)
                continue
            if sink is not None:
                sink.reset()  # what an earlier member streamed before it failed
            try:
                reply = await model.complete(request, sink)
            except ModelError as exc:
                if provider_failed(exc):
                    breaker.failed()
                else:
                    breaker.succeeded()  # it answered: alive, though it refused this request
                problems.append(str(exc))
                retryable = retryable or exc.retryable
                continue
            except BaseException:
                breaker.abandoned()
                raise
            breaker.succeeded()
            reply.model = model.name
            return reply
        raise ModelError(
            f"every model of {self.name} failed: " + "; ".join(problems),
            retryable=retryable,
            retry_after=retry_after,
        )

    async def aclose(self) -> None:
        for model, _ in self.members:
            close = getattr(model, "aclose", None)
            if close is not None:
                await close()
