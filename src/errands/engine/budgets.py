"""Budgets: before each model call, reserve its worst case in the store; refuse the
call when a cap would be passed.

Caps: ``[budget] daily_usd`` (every errand together, per local day) and each errand's
``max_cost_usd`` limit, which covers the errand *and its descendants* (a fan-out spends
its parent's budget). The store does the arithmetic atomically
(:meth:`errands.store.base.BaseStore.reserve`, :mod:`errands.costs.spend`): every
call in flight holds its worst case until the transaction that logs its response
settles it, so however many calls run at once -- in one process or several over one
store -- spend stays within each cap, give or take how far a worst case
underestimates (below).

The worst case of a call is its input at the full (uncached) input price plus
``max_tokens`` (and the thinking its reasoning level may add) at the output price, at
the dearest model a fallback chain may use.
Its input tokens are bounded from what is known exactly: the previous call's input
and output tokens as the provider reported them, plus the UTF-8 bytes of every
message added since (a token is at least one byte for byte-level BPE tokenizers),
plus a per-message and per-image allowance; the first call of an errand counts the
bytes of its whole request. A model with no known price costs 0 and is never refused
for its cost (only for a cap already spent).

A call refused only because calls in flight hold the budget (it would fit beside what
was spent) is not refused for good: the loop waits -- 50 ms, doubling to 2 s -- and asks
again, so a fan-out runs as many calls at once as the cap's worst cases allow and the
rest follow as they settle. A call that would not fit beside what was spent stops its
errand.

With no cap that applies, nothing is reserved and the call costs no extra write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from errands.config import Settings
from errands.core.events import Usage
from errands.core.progress import Progress
from errands.costs.pricing import cost_usd
from errands.costs.spend import CapReached
from errands.models.protocol import Message, Model, ModelRequest
from errands.store import Store

__all__ = ["Blocked", "Budgets", "input_tokens_bound", "worst_case_usd"]

MESSAGE_TOKENS = 16  # role markers, separators, tool-call framing
IMAGE_TOKENS = 3_000  # above what any provider charges for one image after its resizing
# thinking a reasoning level may add beyond max_tokens: the larger of Anthropic's budget
# (which its client adds to max_tokens) and Gemini 2.x's thinking_budget for the level;
# OpenAI counts reasoning inside its output limit
REASONING_TOKENS = {"minimal": 0, "low": 1_024, "medium": 8_192, "high": 24_576}


@dataclass(frozen=True, slots=True)
class Blocked:
    """A call the budget blocks: the errand stops in *state* with *reason* -- or, when
    only calls in flight stand in the way (their holds will settle at most at what they
    hold, usually far less), it waits *wait* seconds and asks again."""

    state: str  # "needs_attention" (the daily budget: a person may raise it) or "failed"
    reason: str
    wait: float = 0.0  # > 0: not now, ask again after this long


def _message_bytes(m: Message) -> int:
    size = len(m.text.encode())
    for call in m.tool_calls:
        size += len(call.name) + len(json.dumps(call.arguments, ensure_ascii=False).encode())
    return size + MESSAGE_TOKENS + IMAGE_TOKENS * len(m.images)


def input_tokens_bound(request: ModelRequest, last: Usage | None, answered: int) -> int:
    """An upper bound on the input tokens of *request*.

    *last* is the usage of the errand's previous call and *answered* how many of
    ``request.messages`` that call's context and reply made up (0: no call yet).
    """
    if last is not None and 0 < answered <= len(request.messages):
        known = last.input_tokens + last.output_tokens + MESSAGE_TOKENS
        return known + sum(_message_bytes(m) for m in request.messages[answered:])
    tools = sum(
        len(t.name) + len(t.description.encode()) + len(json.dumps(t.parameters).encode())
        for t in request.tools
    )
    return (
        len(request.system.encode())
        + tools
        + sum(_message_bytes(m) for m in request.messages)
        + MESSAGE_TOKENS
    )


def _price_names(model: Model) -> list[str]:
    members = getattr(model, "members", None)  # a fallback chain: any member may answer
    if members:
        return [m.name for m, _ in members]
    return [model.name]


def worst_case_usd(model: Model, request: ModelRequest, settings: Settings, p: Progress) -> float:
    usage = Usage(
        input_tokens=input_tokens_bound(request, p.last_usage, p.answered),
        output_tokens=(request.max_tokens or settings.max_tokens)
        + REASONING_TOKENS.get(request.reasoning or "minimal", 0),
    )
    return max(cost_usd(name, usage, settings.prices) for name in _price_names(model))


class Budgets:
    """What the loop calls before each model call (see the module docstring)."""

    WAIT_FIRST = 0.05  # seconds before asking again while calls in flight hold the budget
    WAIT_MAX = 2.0

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._waits: dict[str, float] = {}  # errand -> its next wait (doubling, capped)

    def applies(self, p: Progress) -> bool:
        """Whether any cap could apply to this errand's calls."""
        return (
            self.settings.budget.daily_usd is not None
            or p.view.budget_usd is not None
            or p.view.parent is not None  # an ancestor may have a budget
            or p.view.schedule_daily_usd is not None  # its schedule's daily budget
        )

    def may_wait(self, reached: CapReached) -> bool:
        """Would the call fit beside what was spent? Then only calls in flight hold the
        rest, and it waits for them to settle instead of stopping its errand."""
        return reached.spent + reached.amount <= reached.cap.nanos

    async def reserve(
        self, p: Progress, model: Model, request: ModelRequest, request_seq: int
    ) -> Blocked | None:
        if not self.applies(p):
            return None
        amount = worst_case_usd(model, request, self.settings, p)
        reached = await self.store.reserve(
            p.errand_id,
            request_seq,
            amount,
            daily_usd=self.settings.budget.daily_usd,
            ttl=self.settings.budget.hold_seconds,
        )
        if reached is None:
            self._waits.pop(p.errand_id, None)
            return None
        if self.may_wait(reached):
            wait = self._waits.get(p.errand_id, self.WAIT_FIRST)
            self._waits[p.errand_id] = min(wait * 2, self.WAIT_MAX)
            return Blocked("running", reached.message(), wait=wait)
        self._waits.pop(p.errand_id, None)
        if reached.daily:
            return Blocked(
                "needs_attention",
                f"{reached.message()}. It resets at midnight; to go on sooner, raise "
                "[budget] daily_usd in errands.toml (and restart errands up if it runs). "
                f'Then tell the errand: errands tell {p.errand_id} "go on" (a running '
                f"errands up picks it up; otherwise errands resume {p.errand_id})",
            )
        return Blocked("failed", reached.message())
