"""How the reliability wrappers compose around a provider client.

Every provider model :func:`~errands.models.spec.resolve_model` builds is::

    RetryingModel(RateLimitedModel(client, shared limiter))

-- each attempt (retries included) passes the rate limiter, and a 429 pauses the
limiter for every errand on that endpoint before the retry waits out its
``retry-after``. A fallback chain (``a:x,b:y`` or ``chain:NAME``) is::

    FallbackModel([(member stack, shared breaker of the member's endpoint), ...])

Limiters are shared per endpoint and model, breakers per endpoint, by every wrapper in
the process (:func:`~errands.models.wrappers.ratelimit.shared_limiter`,
:func:`~errands.models.wrappers.fallback.shared_breaker`); the Runner caches one stack per spec.
"""

from __future__ import annotations

from collections.abc import Sequence

from errands.config import ProviderSettings
from errands.models.protocol import Model
from errands.models.wrappers.fallback import CircuitBreaker, FallbackModel, shared_breaker
from errands.models.wrappers.ratelimit import (
    CACHE_READS_COUNT,
    RateLimitedModel,
    RateLimits,
    shared_limiter,
)
from errands.models.wrappers.retry import RetryingModel, RetryPolicy

__all__ = [
    "EndpointKey",
    "breaker_for",
    "chain",
    "innermost",
    "limits_for",
    "provider_stack",
    "retry_policy_for",
]

# what identifies one provider endpoint: kind, base URL (or "" for the vendor's own),
# and the variable its key comes from (another key is another account, other limits)
EndpointKey = tuple[str, str, str]


def limits_for(kind: str, config: ProviderSettings | None) -> RateLimits:
    if config is None:
        return RateLimits(cache_reads_count=CACHE_READS_COUNT.get(kind, True))
    cache_reads = config.cache_reads_count
    return RateLimits(
        rpm=config.rpm,
        itpm=config.itpm,
        otpm=config.otpm,
        tpm=config.tpm,
        window=config.limit_window_seconds,
        cache_reads_count=CACHE_READS_COUNT.get(kind, True) if cache_reads is None else cache_reads,
    )


def retry_policy_for(config: ProviderSettings | None) -> RetryPolicy:
    if config is None:
        return RetryPolicy()
    return RetryPolicy(
        max_attempts=config.max_attempts,
        max_elapsed=config.retry_max_seconds,
        attempt_deadline=config.call_deadline_seconds,
    )


def provider_stack(
    client: Model, endpoint: EndpointKey, model_name: str, config: ProviderSettings | None
) -> Model:
    """*client* behind the shared rate limiter of (endpoint, model), behind retries."""
    kind = endpoint[0]
    limiter = shared_limiter((endpoint, model_name), limits_for(kind, config))
    return RetryingModel(RateLimitedModel(client, limiter), retry_policy_for(config))


def breaker_for(
    endpoint: EndpointKey, label: str, config: ProviderSettings | None
) -> CircuitBreaker:
    defaults = ProviderSettings()
    cfg = config or defaults
    return shared_breaker(
        endpoint,
        label,
        failures=cfg.breaker_failures,
        cooldown=cfg.breaker_cooldown_seconds,
    )


def chain(name: str, members: Sequence[tuple[Model, CircuitBreaker]]) -> FallbackModel:
    return FallbackModel(name, members)


def innermost(model: Model) -> Model:
    """The provider client under a wrapper stack (the model itself if unwrapped)."""
    inner = getattr(model, "inner", None)
    while inner is not None:
        model = inner
        inner = getattr(model, "inner", None)
    return model
