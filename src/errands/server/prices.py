"""Where a cost of $0 means "no price known", say so instead of showing ``$0.0000``.

A model call's cost is computed when it is logged (:mod:`errands.costs.pricing`): the
config's ``[prices."PROVIDER:MODEL"]`` first, then the maintained price database. A
model neither knows is logged at $0 -- which the inbox used to show as ``$0.0000``
everywhere, as if it were free. :func:`price_hint` tells the two apart: tokens were used
and nothing was charged, by a model that is not the (free) scripted one.
"""

from __future__ import annotations

import functools

from errands.config import Settings
from errands.core.events import Usage
from errands.costs.pricing import cost_usd, price_for

__all__ = ["price_hint", "unpriced"]

_PROBE = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


def _free(model: str) -> bool:
    return model.partition(":")[0] == "scripted"


@functools.lru_cache(maxsize=256)
def _maintained(model: str) -> bool:
    """Does the maintained price database know *model*?"""
    return cost_usd(model, _PROBE, {}) > 0


def _members(spec: str, settings: Settings) -> list[str]:
    spec = spec.strip()
    if spec.startswith("chain:"):
        return [m.strip() for m in settings.chains.get(spec.removeprefix("chain:"), [])]
    return [m.strip() for m in spec.split(",") if m.strip()]


def unpriced(spec: str, settings: Settings) -> list[str]:
    """The models of *spec* (each member of a chain) with no known price."""
    return [
        m
        for m in _members(spec, settings)
        if not _free(m) and price_for(m, settings.prices) is None and not _maintained(m)
    ]


def price_hint(model: str, usage: Usage, settings: Settings) -> str | None:
    """``no price known for MODEL: set [prices."MODEL"] in errands.toml`` when *usage*
    used tokens that cost nothing by a model with no known price; else None."""
    if usage.cost_usd > 0 or usage.input_tokens + usage.output_tokens <= 0 or _free(model):
        return None
    names = unpriced(model, settings)
    if not names:
        return None  # priced (at $0 on purpose, say)
    name = names[0]
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f'no price known for {name}{more}: set [prices."{name}"] in errands.toml'
