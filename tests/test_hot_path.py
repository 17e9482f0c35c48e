"""The hot path's shortcuts build exactly what the validating constructors build."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from errands.core.events import Usage

counts = st.integers(min_value=0, max_value=10**9)
costs = st.floats(min_value=0, max_value=1e6, allow_nan=False)
usages = st.builds(
    Usage,
    input_tokens=counts,
    cached_input_tokens=counts,
    cache_write_tokens=counts,
    output_tokens=counts,
    reasoning_tokens=counts,
    cost_usd=costs,
)


def _same(fast: Usage, checked: Usage) -> None:
    assert fast == checked
    assert fast.model_dump_json() == checked.model_dump_json()
    assert fast.model_fields_set == checked.model_fields_set
    assert type(fast.input_tokens) is int and type(fast.cost_usd) is float


@given(usages, usages)
def test_a_sum_of_usages_is_the_validated_sum(a: Usage, b: Usage) -> None:
    total = a + b
    _same(
        total,
        Usage(
            input_tokens=a.input_tokens + b.input_tokens,
            cached_input_tokens=a.cached_input_tokens + b.cached_input_tokens,
            cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
            output_tokens=a.output_tokens + b.output_tokens,
            reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens,
            cost_usd=a.cost_usd + b.cost_usd,
        ),
    )
    total.output_tokens += 1  # a model of its own: the addends are untouched
    assert total.output_tokens != (a + b).output_tokens


@given(usages, costs)
def test_a_costed_usage_is_its_copy_with_the_cost(u: Usage, cost: float) -> None:
    _same(u.costing(cost), u.model_copy(update={"cost_usd": cost}))
    _same(Usage(input_tokens=3).costing(cost), Usage(input_tokens=3, cost_usd=cost))
