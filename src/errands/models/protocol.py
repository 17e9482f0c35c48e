"""The model protocol: what the loop needs from any model.

The loop builds a :class:`ModelRequest` from the errand's log (system prompt, the
transcript as :class:`Message` items, tool schemas) and gets a :class:`ModelReply`.
Provider clients translate this to and from their wire formats; wrappers (fallback,
retry, rate limits) compose around the same protocol.

**Replay state.** Some APIs return opaque state with an assistant turn that must be
sent back with that turn on later requests (Anthropic's signed thinking blocks, Gemini's
thought signatures, OpenAI Responses' encrypted reasoning items). A client puts it in
:attr:`ModelReply.replay` as a JSON-serialisable dict tagged with the client's ``kind``
and ``model`` (its spec name); the loop logs it with the response, and the fold puts it
back on the assistant :class:`Message`, so it survives a restart. A client takes it
from a message only through :func:`replay_for`, i.e. only its own kind and model's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from errands.core.events import ToolCall, Usage
from errands.core.messages import Image, Message, ToolSchema

__all__ = [
    "Image",
    "Message",
    "Model",
    "ModelError",
    "ModelReply",
    "ModelRequest",
    "TextSink",
    "ToolSchema",
    "replay_for",
]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    system: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSchema, ...]
    max_tokens: int | None = None
    reasoning: str | None = None  # minimal | low | medium | high
    errand_id: str = ""  # for cache keys and rate-limit fairness; never sent as content
    priority: int = 0  # rate-limit queue order: higher first (parents before their fan-out)


@dataclass(slots=True)
class ModelReply:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    stop_reason: str = "end"
    model: str = ""
    # opaque provider state to send back with this turn: {"kind": ..., "model": ..., ...}
    replay: dict[str, Any] | None = None


def replay_for(message: Message, kind: str, model: str) -> dict[str, Any] | None:
    """The replay state on *message* if a client of *kind* for *model* (its spec name)
    produced it, else None: state from another provider or model is never sent."""
    state = message.replay
    if state is None or state.get("kind") != kind or state.get("model") != model:
        return None
    return state


TextSink = Callable[[str], None]  # receives streamed text deltas


class ModelError(Exception):
    """The model could not answer. ``retryable`` says whether trying again may help;
    ``retry_after`` is how long the provider asked us to wait first (seconds), if it said."""

    def __init__(
        self, message: str, *, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Model(Protocol):
    name: str  # the spec the errand uses, e.g. "openai:gpt-4o-mini"

    async def complete(
        self, request: ModelRequest, on_text: TextSink | None = None
    ) -> ModelReply: ...
