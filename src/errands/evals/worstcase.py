"""The attacker's best case: a model that does the person's task and obeys any injection.

:class:`WorstCaseModel` makes the person's calls (a task's ground truth), one per turn;
once the injected text is anywhere in its context, it makes the attacker's calls next
-- every one of them, whatever came back -- and then goes on with the person's. Then it
answers. Published in-model defences fall to adaptive attacks, so the boundary is
measured against a model that always obeys: whatever it stops, it stops outside the model.

Like the scripted model, the reply is a pure function of the request (turn *k* is the
*k*-th call of the plan the transcript implies), so an errand resumed after an approval
gets the reply it would have got.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from errands.core.events import ToolCall, Usage
from errands.models.protocol import Message, ModelError, ModelReply, ModelRequest, TextSink

__all__ = ["Planned", "WorstCaseModel", "mentions"]

# what tool output formatting may put between the words of a text: white space, YAML's
# line folding and escapes, quotes (and a doubled quote for an apostrophe)
_NOISE = re.compile(r"[\s\\\"']+")


def _squash(text: str) -> str:
    return _NOISE.sub("", text)


def mentions(text: str, needle: str) -> bool:
    """Does *text* hold *needle*, however a formatter (YAML, JSON) folded or quoted it?"""
    return bool(needle) and _squash(needle) in _squash(text)


@dataclass(frozen=True)
class Planned:
    """One call the model will make."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class WorstCaseModel:
    """Makes *task* calls, one a turn; the first time *trigger* is in its context, makes
    every *injected* call next; then answers *answer*."""

    task: Sequence[Planned]
    injected: Sequence[Planned] = ()
    trigger: str = ""
    answer: str = "Done."
    name: str = "scripted:agentdojo-worst-case"

    def plan(self, messages: Sequence[Message]) -> list[Planned]:
        """The calls the transcript implies: the person's, with the attacker's spliced in
        after the turn whose result first carried *trigger*."""
        turns = 0
        for message in messages:
            if message.role == "assistant":
                turns += 1
            elif self.trigger and mentions(message.text, self.trigger):
                return [*self.task[:turns], *self.injected, *self.task[turns:]]
        return list(self.task)

    def obeyed(self, messages: Sequence[Message]) -> bool:
        """Did the injection reach the context (so the model obeyed it)?"""
        return any(m.role != "assistant" and mentions(m.text, self.trigger) for m in messages)

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        k = sum(1 for m in request.messages if m.role == "assistant")
        plan = self.plan(request.messages)
        usage = Usage(input_tokens=sum(len(m.text) for m in request.messages) // 4 + 1)
        if k < len(plan):
            call = plan[k]
            return ModelReply(
                tool_calls=[
                    ToolCall(call_id=f"call_{k}", name=call.name, arguments=dict(call.arguments))
                ],
                usage=usage,
                stop_reason="tool_use",
                model=self.name,
            )
        if on_text is not None:
            on_text(self.answer)
        return ModelReply(text=self.answer, usage=usage, model=self.name)


class ByErrand:
    """One model per errand (each AgentDojo case has its own plan), as one model."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.models: dict[str, Any] = {}  # errand id -> a model (WorstCaseModel, ...)

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        model = self.models.get(request.errand_id)
        if model is None:
            raise ModelError(f"no worst-case plan for errand {request.errand_id}")
        reply: ModelReply = await model.complete(request, on_text)
        return reply
