"""Context management: keep a long errand's context inside its model's window, with the
provider's prompt cache intact (docs/context.md).

Before each model call the loop asks :meth:`Context.fit`. When the model's context
window is known (:func:`errands.models.windows.context_window`) and the request would
pass ``[context] compact_at`` of it, the context is compacted down to ``compact_to``:

1. **masking**: the oldest tool outputs (never the latest turn's) are replaced by a
   short stub naming a handle; ``recall_output(handle)`` brings one back, with its
   labels (:mod:`errands.tools.builtin.recall`);
2. **summary**, if masking is not enough: the model is asked -- with the *same* system
   prompt and tools, its transcript so far and one more user message -- for a summary,
   which takes the place of the oldest turns (the errand's request, message 0, stays).
   The summary request is the previous request plus a little, so the provider serves
   it from its cache; afterwards the system prompt, the tools and the request stay a
   cached prefix.

Either is one ``context_compacted`` event (:class:`errands.core.events.ContextCompacted`)
written before the next call; the fold (:class:`errands.core.progress.Progress`) applies
it, so a resume or a replay builds exactly the same requests. A crash after the summary
was asked but before it was logged asks again: the same request, byte for byte.

The summary is labelled with the join of its context's labels (an untrusted page
summarised is still untrusted); what the summary call cost is a ``model_used`` event.

Token counts are estimates that cost O(new messages) per call: the previous call's
usage as the provider reported it plus what was added since (characters / 3, a
conservative count), or, right after a compaction, the compaction's own estimate plus
what was added since.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from errands.config import Settings
from errands.core import events as ev
from errands.core.faults import fault
from errands.core.labels import Label, Provenance
from errands.core.messages import Message
from errands.core.progress import Progress
from errands.costs.pricing import cost_usd
from errands.engine.inflight import Interrupted
from errands.models.protocol import Model, ModelError, ModelReply, ModelRequest
from errands.models.windows import context_window

__all__ = ["SUMMARY_PROMPT", "Context", "estimate_tokens", "handle_of", "seq_of"]

CHARS_PER_TOKEN = 3  # conservative: most tokenizers give ~4 characters of English a token
MESSAGE_TOKENS = 16  # role markers, separators, tool-call framing
MIN_MASKED_CHARS = 600  # an output shorter than this is not worth a stub
HANDLE_PREFIX = "output-"

SUMMARY_PROMPT = (
    "[errands: context compaction] The conversation is getting too long for your context "
    "window. Write a summary of it so far (everything after my first message) that lets "
    "you carry on the errand without it: what you have done, what you found (keep the "
    "facts, names, numbers and any output handles you may need), and what is left to do. "
    "Reply with the summary only; call no tools."
)

Append = Callable[[Progress, Sequence[ev.Event]], Awaitable[Any]]
Complete = Callable[[Progress, Model, ModelRequest], Awaitable[ModelReply]]


def handle_of(seq: int) -> str:
    """The handle of the tool output logged at *seq* (what a stub names)."""
    return f"{HANDLE_PREFIX}{seq}"


def seq_of(handle: str) -> int | None:
    """The log position a handle names; None for anything that is not a handle."""
    digits = handle.strip().removeprefix(HANDLE_PREFIX)
    return int(digits) if digits.isdigit() else None


def _tokens(m: Message) -> int:
    size = len(m.text)
    for call in m.tool_calls:
        size += len(call.name) + len(json.dumps(call.arguments, ensure_ascii=False))
    return size // CHARS_PER_TOKEN + MESSAGE_TOKENS


def _fixed_tokens(request: ModelRequest) -> int:
    tools = sum(
        len(t.name) + len(t.description) + len(json.dumps(t.parameters)) for t in request.tools
    )
    return (len(request.system) + tools) // CHARS_PER_TOKEN + MESSAGE_TOKENS


def _output(request: ModelRequest) -> int:
    return request.max_tokens or 0


def estimate_tokens(p: Progress, request: ModelRequest) -> int:
    """The input tokens of *request* (built from *p*'s transcript), estimated from what
    is known: O(messages added since the last call or compaction)."""
    messages = p.messages
    last = p.last_usage
    if last is not None and last.input_tokens and 0 < p.answered <= len(messages):
        known = last.input_tokens + last.output_tokens
        return known + sum(_tokens(m) for m in messages[p.answered :])
    if p.compacted_tokens is not None and p.compacted_len <= len(messages):
        tail = messages[p.compacted_len :]
        return p.compacted_tokens + sum(_tokens(m) for m in tail)
    return _fixed_tokens(request) + sum(_tokens(m) for m in messages)


class Context:
    """What the loop asks before each model call (see the module docstring). A variant
    (a test's negative control) is a subclass that overrides one method."""

    def __init__(self, settings: Settings, append: Append, complete: Complete) -> None:
        self.settings = settings
        self.append = append
        self.complete = complete
        self._windows: dict[str, int | None] = {}

    def window(self, spec: str) -> int | None:
        """The context window of model *spec* (cached: asked before every call)."""
        try:
            return self._windows[spec]
        except KeyError:
            found = self._windows[spec] = context_window(spec, self.settings)
            return found

    def over(self, p: Progress, request: ModelRequest) -> bool:
        """Whether *request* would pass ``compact_at`` of its model's window, or leave
        no room for the output it asks for (False when the window is not known). Cheap:
        asked before every model call."""
        window = self.window(p.view.model)
        if window is None:
            return False
        limit = min(self.settings.context.compact_at * window, window - _output(request))
        return estimate_tokens(p, request) > limit

    async def fit(self, p: Progress, model: Model, request: ModelRequest) -> ModelRequest | None:
        """*request*, or the same request over a compacted transcript when it would pass
        ``compact_at`` of the window. None: the errand was cancelled meanwhile."""
        if not self.over(p, request):
            return request
        window = self.window(p.view.model)
        assert window is not None
        tokens = estimate_tokens(p, request)
        target = int(min(self.settings.context.compact_to * window, window - _output(request)))
        masked, after = self.plan_masking(p, tokens, target)
        summarised, summary = 0, None
        if after > target:
            summarised = self.plan_summary(p, masked, after, target)
        first: list[ev.Event] = []
        if summarised:
            reply = await self._summary(p, model, request)
            if reply is None:
                return None
            used, summary = reply
            first.append(used)  # (what it cost, whatever it gave)
            fault("mid_compaction")
        if summary is None:
            summarised = 0  # (an empty summary: the masking alone, and the call's cost)
        else:
            dropped = sum(_tokens(m) for m in self._masked_view(p, masked)[1 : 1 + summarised])
            after = after - dropped + _tokens(Message(role="user", text=summary.text))
        if not masked and not summarised:
            if first:
                await self.append(p, first)
            return request  # nothing to take out: send it as it is
        compacted = ev.ContextCompacted(
            window=window,
            tokens_before=tokens,
            tokens_after=after,
            masked=masked,
            summarised=summarised,
            summary=summary,
        )
        await self.append(p, [*first, compacted])
        return replace(request, messages=tuple(p.messages))

    # -- masking ---------------------------------------------------------------------

    def stub(self, p: Progress, index: int) -> str:
        m = p.messages[index]
        handle = handle_of(p.origins[index])
        return (
            f"[output of {m.tool_name or 'a tool'} masked to save context "
            f"({len(m.text):,} characters); recall_output({handle!r}) brings it back]"
        )

    def plan_masking(
        self, p: Progress, tokens: int, target: int
    ) -> tuple[list[ev.MaskedOutput], int]:
        """The oldest tool outputs to mask (never the latest turn's, never a stub) until
        the estimate is at *target*; and the estimate after."""
        latest = max(
            (i for i, m in enumerate(p.messages) if m.role == "assistant"), default=len(p.messages)
        )
        masked: list[ev.MaskedOutput] = []
        for i in range(latest):
            if tokens <= target:
                break
            m = p.messages[i]
            if m.role != "tool" or len(m.text) < MIN_MASKED_CHARS:
                continue
            stub = self.stub(p, i)
            masked.append(ev.MaskedOutput(seq=p.origins[i], index=i, stub=stub))
            tokens -= _tokens(m) - _tokens(replace(m, text=stub))
        return masked, tokens

    @staticmethod
    def _masked_view(p: Progress, masked: Sequence[ev.MaskedOutput]) -> list[Message]:
        messages = list(p.messages)
        for m in masked:
            messages[m.index] = replace(messages[m.index], text=m.stub)
        return messages

    # -- summary ---------------------------------------------------------------------

    def plan_summary(
        self, p: Progress, masked: Sequence[ev.MaskedOutput], tokens: int, target: int
    ) -> int:
        """How many messages after the request the summary replaces: whole turns, the
        fewest that bring the estimate to *target* (with the summary's own size), never
        the latest turn. 0: nothing to summarise."""
        messages = self._masked_view(p, masked)
        latest = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=0)
        budget = self.settings.context.summary_tokens
        best = 0
        for k in range(2, latest + 1):  # messages[1:k] go; messages[k] starts a turn
            tokens -= _tokens(messages[k - 1])
            if messages[k].role == "tool":
                continue
            best = k - 1
            if tokens + budget <= target:
                break
        return best

    def summary_request(self, p: Progress, request: ModelRequest) -> ModelRequest:
        """The request for the summary: the pending request's system prompt, tools and
        transcript (a cached prefix), and the instruction."""
        return replace(
            request,
            messages=(*p.messages, Message(role="user", text=SUMMARY_PROMPT)),
            max_tokens=self.settings.context.summary_tokens,
        )

    def summary_label_of(self, p: Progress) -> Label:
        """The summary's label: the join of everything the model read to write it."""
        return p.label

    async def _summary(
        self, p: Progress, model: Model, request: ModelRequest
    ) -> tuple[ev.ModelUsed, ev.Content | None] | None:
        """The summary call: what it cost and the summary (None: it was empty); None
        when a cancel or the wall-time limit stopped it."""
        try:
            reply = await self.complete(p, model, self.summary_request(p, request))
        except (Interrupted, TimeoutError):  # a cancel, or the wall-time limit: the next step
            return None
        except ModelError as exc:
            raise ModelError(
                f"summarising the context failed: {exc}",
                retryable=exc.retryable,
                retry_after=exc.retry_after,
            ) from None
        text = reply.text.strip()
        prices = self.settings.prices
        usage = reply.usage.model_copy(
            update={"cost_usd": cost_usd((model.name, reply.model), reply.usage, prices)}
        )
        used = ev.ModelUsed(
            call_id="context", model=reply.model or model.name, usage=usage, purpose="compact"
        )
        if not text:
            return used, None
        summary = ev.Content.labelled(
            f"[Summary of the earlier conversation, written to save context]\n{text}",
            Provenance(kind="model", name=model.name, source="context summary"),
            self.summary_label_of(p),
        )
        return used, summary
