"""What a model call cost, in USD, from its normalised usage.

Prices come first from the config's ``[prices."PROVIDER:MODEL"]`` table (USD per million
tokens: for models the maintained source does not know yet, or negotiated rates), then
from ``genai-prices``, the maintained price database (cache reads and writes, tiers).
A model neither knows costs 0. In the config table cached input is billed at
``cached_input`` (default: the input price) and cache writes at ``cache_write``
(default: the input price).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from errands.config import Price
from errands.core.events import Usage

__all__ = ["cost_usd", "price_for"]

PER = 1_000_000


def price_for(model: str, prices: Mapping[str, Price]) -> Price | None:
    """The configured price of *model* (``provider:name``, or just ``name``)."""
    if model in prices:
        return prices[model]
    name = model.partition(":")[2] if ":" in model else model
    if name in prices:
        return prices[name]
    for key, price in prices.items():
        if key.partition(":")[2] == name:
            return price
    return None


def cost_usd(model: str | Sequence[str], usage: Usage, prices: Mapping[str, Price]) -> float:
    """The cost of one call; *model* may list candidates (the spec, then who answered)."""
    candidates = [model] if isinstance(model, str) else list(model)
    price = next((p for m in candidates if m and (p := price_for(m, prices))), None)
    if price is None:
        return next((c for m in candidates if m and (c := _maintained(m, usage)) is not None), 0.0)
    cached = usage.cached_input_tokens
    written = usage.cache_write_tokens
    fresh = max(0, usage.input_tokens - cached - written)
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    total = (
        fresh * price.input
        + cached * cached_price
        + written * write_price
        + usage.output_tokens * price.output
    )
    return total / PER


# errands' provider kinds -> genai-prices provider ids
_PROVIDERS = {
    "openai": "openai",
    "openai-responses": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
}


def _maintained(model: str, usage: Usage) -> float | None:
    """The price from genai-prices, or None if it does not know the model."""
    kind, _, name = model.partition(":")
    provider = _PROVIDERS.get(kind)
    if provider is None or not name:
        return None
    try:
        from genai_prices import Usage as PriceUsage
        from genai_prices import calc_price
    except ImportError:  # pragma: no cover - a core dependency
        return None
    try:
        calc = calc_price(
            PriceUsage(
                input_tokens=usage.input_tokens,
                cache_read_tokens=usage.cached_input_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                output_tokens=usage.output_tokens,
            ),
            model_ref=name,
            provider_id=provider,
        )
    except LookupError:
        return None
    return float(calc.total_price)
