"""Per-errand limits: steps, wall time, tokens and cost, checked before each model call."""

from __future__ import annotations

from errands.core.events import Limits
from errands.core.states import ErrandView

__all__ = ["exceeded"]


def exceeded(view: ErrandView, limits: Limits, elapsed: float) -> str | None:
    """The reason the errand must stop, or None if it may take another step. *elapsed*:
    seconds since the errand was created (measured on a steady clock where it can be)."""
    if limits.max_steps is not None and view.steps >= limits.max_steps:
        return f"step limit reached ({view.steps} of {limits.max_steps} model turns)"
    if limits.max_wall_seconds is not None and elapsed >= limits.max_wall_seconds:
        return f"wall-time limit reached ({limits.max_wall_seconds:g} s)"
    if limits.max_tokens is not None and view.usage.total_tokens >= limits.max_tokens:
        return f"token limit reached ({view.usage.total_tokens} of {limits.max_tokens})"
    if limits.max_cost_usd is not None and view.usage.cost_usd >= limits.max_cost_usd:
        return f"cost limit reached (${view.usage.cost_usd:.4f} of ${limits.max_cost_usd:.4f})"
    return None
