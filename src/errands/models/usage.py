"""Usage arithmetic the reports show."""

from __future__ import annotations

from errands.events import Usage

__all__ = ["cache_hit_ratio"]


def cache_hit_ratio(usage: Usage) -> float:
    """The share of input tokens served from the provider's prompt cache, 0.0 to 1.0
    (0.0 when there was no input). Works on one call's usage or on an errand's sum."""
    if usage.input_tokens <= 0:
        return 0.0
    return min(1.0, max(0.0, usage.cached_input_tokens / usage.input_tokens))
