"""Cost roll-ups, read from the log: per errand, per model and per day.

Every model call's normalised usage (input, cached input, cache writes, output,
reasoning tokens, cost in USD) is in its ``model_responded`` event; these roll-ups are
sums over those events, so they always agree with the timeline.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from errands.core.events import Usage

__all__ = ["CostReport", "Rollup", "build_report", "cache_hit_ratio"]


def cache_hit_ratio(usage: Usage) -> float:
    """The share of input tokens served from the provider's prompt cache, 0.0 to 1.0
    (0.0 when there was no input). Works on one call's usage or on an errand's sum."""
    if usage.input_tokens <= 0:
        return 0.0
    return min(1.0, max(0.0, usage.cached_input_tokens / usage.input_tokens))


@dataclass
class Rollup:
    key: str
    calls: int = 0
    usage: Usage = field(default_factory=Usage)

    def add(self, usage: Usage) -> None:
        self.calls += 1
        self.usage = self.usage + usage

    def as_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "calls": self.calls,
            **self.usage.model_dump(),
            "cache_hit_ratio": round(cache_hit_ratio(self.usage), 4),
        }


@dataclass
class CostReport:
    by_errand: list[Rollup]
    by_model: list[Rollup]
    by_day: list[Rollup]
    total: Rollup

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total.as_dict(),
            "by_day": [r.as_dict() for r in self.by_day],
            "by_model": [r.as_dict() for r in self.by_model],
            "by_errand": [r.as_dict() for r in self.by_errand],
        }


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).date().isoformat()


def build_report(rows: Iterable[tuple[str, float, str, Usage]]) -> CostReport:
    """*rows*: (errand id, time, model that answered, usage) for every model call."""
    errands: dict[str, Rollup] = {}
    models: dict[str, Rollup] = {}
    days: dict[str, Rollup] = {}
    total = Rollup("total")
    for errand_id, at, model, usage in rows:
        for table, key in ((errands, errand_id), (models, model), (days, _day(at))):
            table.setdefault(key, Rollup(key)).add(usage)
        total.add(usage)
    return CostReport(
        by_errand=sorted(errands.values(), key=lambda r: -r.usage.cost_usd),
        by_model=sorted(models.values(), key=lambda r: -r.usage.cost_usd),
        by_day=sorted(days.values(), key=lambda r: r.key),
        total=total,
    )
