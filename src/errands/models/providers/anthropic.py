"""Anthropic Messages API client, through the official ``anthropic`` SDK (the
``anthropic`` extra). Spec: ``anthropic:MODEL`` (e.g. ``anthropic:claude-sonnet-4-5``).

Configuration: ``base_url`` / ``api_key`` arguments, else ``ANTHROPIC_BASE_URL`` /
``ANTHROPIC_API_KEY``. A custom ``base_url`` without a key gets a placeholder key.

**Requests** always stream. The transcript becomes ``messages`` of content blocks:
assistant tool calls are ``tool_use`` blocks, tool results are ``tool_result`` blocks
(with ``is_error``) gathered into the user message that follows, images in user
messages are base64 ``image`` blocks placed before the text. Consecutive messages of
one role are merged into one message, as the API would do.

**Prompt caching** (explicit on Anthropic): the adapter places the ``cache_control``
breakpoints itself, at most 4 per request, in the order the API renders the prompt
(tools, system, messages):

1. on the last tool definition (caches the tool list);
2. on the system prompt (caches tools + system);
3. on the last block of the message that ended the *previous* request (the message
   before the latest assistant reply) -- that prefix was written to the cache by the
   previous request, so this breakpoint reads it exactly, however many blocks the
   previous turn added (the API looks back only 20 blocks from a breakpoint for an
   earlier cache entry, so the newest breakpoint alone could miss after a turn with
   many parallel tool calls);
4. on the last block of the request, which writes the whole transcript for the next
   turn to read.

Everything in the prefix is deterministic: tool order as given, JSON with the keys in
a fixed order, nothing volatile. ``cache_ttl="1h"`` asks for the one-hour cache (writes
cost more) on every breakpoint; the default is the API's 5 minutes.

**Reasoning** (``ModelRequest.reasoning``) maps to extended thinking:
``minimal`` -> ``{"type": "disabled"}``; ``low`` / ``medium`` / ``high`` ->
``{"type": "enabled", "budget_tokens": 1024 / 4096 / 16384}`` (see
:data:`THINKING_BUDGETS`); ``None`` sends nothing (the model's default). Thinking tokens
count toward ``max_tokens``, so the budget is added to the request's ``max_tokens``:
the visible answer keeps its allowance. With thinking on, the API requires the
assistant's thinking blocks (with their signatures) to be sent back with its
``tool_use`` blocks within one tool-use loop. The reply carries them, unmodified and in
order, as ``ModelReply.replay = {"kind": "anthropic", "model": NAME, "blocks": [...]}``
(``thinking`` + ``signature``, ``redacted_thinking`` + ``data``); the loop logs that
with the response, so after a restart the assistant ``Message.replay`` still has them
and they go back first in that message's content. State from another client kind or
another model spec (a fallback chain) is not sent, nor thinking whose text the store
redacted (its signature would no longer match), nor thinking of a turn with no text
and no tool call (nothing to attach it to). When an assistant message of the current
loop lacks its thinking blocks for any of those reasons, the request goes with thinking
disabled instead of failing.

**Usage**: ``input_tokens`` = ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens`` (the API reports them apart), ``cached_input_tokens`` =
cache reads, ``cache_write_tokens`` = cache creation, ``reasoning_tokens`` from
``output_tokens_details.thinking_tokens`` when the API reports it.

**Errors** become :class:`~errands.models.protocol.ModelError`: connection failures,
timeouts, a stream cut short, 408/409/429/5xx/529 and in-stream ``error`` events are
retryable; other 4xx and garbage are not. Error messages never contain the API key.

The configuration, the SDK client and the error messages are
:class:`~errands.models.providers.base.ProviderClient`'s.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Unpack

from errands.core.events import ToolCall, Usage
from errands.models.protocol import (
    Message,
    ModelError,
    ModelReply,
    ModelRequest,
    TextSink,
    replay_for,
)
from errands.models.providers.base import (
    ClientOptions,
    HTTPStatusError,
    ProviderAPI,
    ProviderClient,
    StreamGarbage,
    check_reasoning_level,
    error_fields,
    sdk_missing,
    tool_call,
)
from errands.models.wrappers.retry import retry_after_from_headers

__all__ = ["THINKING_BUDGETS", "AnthropicHTTPError", "AnthropicModel", "build_params"]

KIND = "anthropic"
ANTHROPIC_HOST = "api.anthropic.com"
ANTHROPIC_API = ProviderAPI(
    host=ANTHROPIC_HOST,
    url=f"https://{ANTHROPIC_HOST}",
    base_url_env="ANTHROPIC_BASE_URL",
    key_envs=("ANTHROPIC_API_KEY",),
    key_pattern=r"\bsk-ant-[A-Za-z0-9_\-*.]{3,}",
    key_mask="sk-ant-[redacted]",
    no_key_help="no API key for Anthropic: set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL for a proxy)",
)
DEFAULT_MAX_TOKENS = 4096  # the API requires max_tokens; used when the request has none
THINKING_BUDGETS: dict[str, int | None] = {
    "minimal": None,  # thinking disabled
    "low": 1024,  # the API's minimum budget
    "medium": 4096,
    "high": 16384,
}
MAX_BREAKPOINTS = 4
_STOP_REASONS = {
    "end_turn": "end",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "end",
    "refusal": "refusal",
    "pause_turn": "pause",
    "model_context_window_exceeded": "max_tokens",
}
CacheTTL = Literal["5m", "1h"]


class AnthropicHTTPError(HTTPStatusError):
    """A :class:`ModelError` for an HTTP error status."""


# -- request building --------------------------------------------------------------------


Block = dict[str, Any]


def _user_blocks(m: Message) -> list[Block]:
    blocks: list[Block] = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": img.media_type, "data": img.data_base64},
        }
        for img in m.images
    ]
    if m.text:
        blocks.append({"type": "text", "text": m.text})
    return blocks


_REDACTED = "[REDACTED:"  # the store's marker for a secret it took out of an event


def _strings(block: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(block.get(k), str) for k in keys)


def _thinking_blocks(m: Message, name: str) -> list[Block]:
    """The signed thinking blocks to send back with assistant message *m* (fresh
    copies: the request marks blocks with ``cache_control``)."""
    state = replay_for(m, KIND, name)
    if state is None or not (m.text or m.tool_calls):
        return []
    blocks = state.get("blocks")
    out: list[Block] = []
    for b in blocks if isinstance(blocks, list) else ():
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "thinking" and _strings(b, "thinking", "signature"):
            out.append({"type": "thinking", "thinking": b["thinking"], "signature": b["signature"]})
        elif kind == "redacted_thinking" and _strings(b, "data"):
            out.append({"type": "redacted_thinking", "data": b["data"]})
        else:
            return []  # not what this client wrote: send none rather than a broken block
    if any(_REDACTED in str(b.get("thinking", "")) for b in out):
        return []  # the log redacted a secret the model thought about: the signature fails
    return out


def _assistant_blocks(m: Message, name: str) -> list[Block]:
    blocks = _thinking_blocks(m, name)
    if m.text:
        blocks.append({"type": "text", "text": m.text})
    for c in m.tool_calls:
        # invalid arguments go back as {}: the tool result says what was wrong
        blocks.append({"type": "tool_use", "id": c.call_id, "name": c.name, "input": c.arguments})
    return blocks


def _tool_result_block(m: Message) -> Block:
    block: Block = {"type": "tool_result", "tool_use_id": m.tool_call_id or ""}
    if m.text:
        block["content"] = m.text
    if m.is_error:
        block["is_error"] = True
    return block


def _messages(request: ModelRequest, name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(m, name)
        elif m.role == "tool":
            role, blocks = "user", [_tool_result_block(m)]
        else:
            role, blocks = "user", _user_blocks(m)
        if not blocks:
            continue  # the API rejects empty content; an empty turn says nothing
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def _mark(block: Block, cache_control: dict[str, str]) -> None:
    block["cache_control"] = dict(cache_control)


def build_params(
    model: str,
    request: ModelRequest,
    *,
    name: str | None = None,
    cache_ttl: CacheTTL | None = None,
) -> dict[str, Any]:
    """The ``messages.create`` parameters for *request* (``stream`` excluded), with the
    cache breakpoints placed (see the module docstring). *name* is the client's spec
    name (default ``anthropic:MODEL``): only replay state it produced is sent back."""
    cache_control: dict[str, str] = {"type": "ephemeral"}
    if cache_ttl is not None:
        cache_control["ttl"] = cache_ttl
    max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    marks = 0
    if request.tools:
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        _mark(tools[-1], cache_control)
        marks += 1
        params["tools"] = tools
    if request.system:
        system: Block = {"type": "text", "text": request.system}
        _mark(system, cache_control)
        marks += 1
        params["system"] = [system]
    messages = _messages(request, name or f"{KIND}:{model}")
    if messages:
        last = len(messages) - 1
        previous_end = None  # the message that ended the previous request
        for i in range(last, -1, -1):
            if messages[i]["role"] == "assistant":
                previous_end = i - 1 if i >= 1 else None
                break
        targets = [i for i in (previous_end, last) if i is not None]
        for i in targets[-(MAX_BREAKPOINTS - marks) :] if marks < MAX_BREAKPOINTS else []:
            _mark(messages[i]["content"][-1], cache_control)
    params["messages"] = messages
    thinking = _thinking(request, messages)
    if thinking is not None:
        params["thinking"] = thinking
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int):
            params["max_tokens"] = max_tokens + budget
    return params


def _thinking(request: ModelRequest, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    if request.reasoning is None:
        return None
    check_reasoning_level(request.reasoning, THINKING_BUDGETS)
    budget = THINKING_BUDGETS[request.reasoning]
    if budget is None:
        return {"type": "disabled"}
    # inside a tool-use loop (the transcript ends with tool results) every assistant
    # message of the loop needs its thinking blocks back; without them, think no more
    for m in reversed(messages):
        if m["role"] == "user":
            if any(b["type"] != "tool_result" for b in m["content"]):
                break
            continue
        if not m["content"] or m["content"][0]["type"] not in ("thinking", "redacted_thinking"):
            return {"type": "disabled"}
    return {"type": "enabled", "budget_tokens": budget}


# -- the stream --------------------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    type: str
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    signature: str = ""
    data: str = ""


@dataclass(slots=True)
class _Accumulator:
    blocks: dict[int, _Block] = field(default_factory=dict)
    model: str = ""
    started: bool = False
    stopped: bool = False
    stop_reason: str | None = None
    input_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0

    def _usage(self, u: Any) -> None:
        if u is None:
            return
        for attr, name in (
            ("input_tokens", "input_tokens"),
            ("cache_read", "cache_read_input_tokens"),
            ("cache_write", "cache_creation_input_tokens"),
            ("output_tokens", "output_tokens"),
        ):
            value = getattr(u, name, None)
            if isinstance(value, int):
                setattr(self, attr, value)
        details = getattr(u, "output_tokens_details", None)
        thinking = getattr(details, "thinking_tokens", None)
        if isinstance(thinking, int):
            self.thinking_tokens = thinking

    def feed(self, event: Any) -> str:
        """Take one stream event; return its text delta (possibly empty)."""
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.started = True
            self.model = str(getattr(event.message, "model", "") or "")
            self._usage(getattr(event.message, "usage", None))
        elif not self.started:
            raise StreamGarbage(f"a {kind!r} event before message_start")
        elif kind == "content_block_start":
            cb = event.content_block
            b = _Block(type=str(cb.type))
            if cb.type == "tool_use":
                b.call_id, b.name = str(cb.id), str(cb.name)
            elif cb.type == "text" and cb.text:
                b.text.append(cb.text)
                self.blocks[int(event.index)] = b
                return str(cb.text)
            elif cb.type == "redacted_thinking":
                b.data = str(cb.data)
            self.blocks[int(event.index)] = b
        elif kind == "content_block_delta":
            b_or_none = self.blocks.get(int(event.index))
            if b_or_none is None:
                raise StreamGarbage(f"a delta for block {event.index} that was never started")
            d = event.delta
            if d.type == "text_delta":
                b_or_none.text.append(d.text)
                return str(d.text)
            if d.type == "input_json_delta":
                b_or_none.text.append(d.partial_json)
            elif d.type == "thinking_delta":
                b_or_none.text.append(d.thinking)
            elif d.type == "signature_delta":
                b_or_none.signature += d.signature
        elif kind == "message_delta":
            if event.delta.stop_reason:
                self.stop_reason = str(event.delta.stop_reason)
            self._usage(event.usage)
        elif kind == "message_stop":
            self.stopped = True
        elif kind not in ("content_block_stop", "ping"):
            raise StreamGarbage(f"an unknown event type {kind!r}")
        return ""

    def ordered(self) -> list[_Block]:
        return [self.blocks[i] for i in sorted(self.blocks)]

    def text(self) -> str:
        return "".join("".join(b.text) for b in self.ordered() if b.type == "text")

    def tool_calls(self) -> list[ToolCall]:
        return [
            tool_call(b.call_id or f"toolu_{uuid.uuid4().hex[:24]}", b.name, "".join(b.text))
            for b in self.ordered()
            if b.type == "tool_use"
        ]

    def thinking_blocks(self) -> list[Block]:
        out: list[Block] = []
        for b in self.ordered():
            if b.type == "thinking":
                out.append(
                    {"type": "thinking", "thinking": "".join(b.text), "signature": b.signature}
                )
            elif b.type == "redacted_thinking":
                out.append({"type": "redacted_thinking", "data": b.data})
        return out

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + self.cache_read + self.cache_write,
            cached_input_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            output_tokens=self.output_tokens,
            reasoning_tokens=self.thinking_tokens,
        )


class AnthropicModel(ProviderClient):
    """A :class:`~errands.models.protocol.Model` over the Anthropic Messages API."""

    kind = KIND
    api = ANTHROPIC_API

    def __init__(
        self,
        model_name: str,
        *,
        cache_ttl: CacheTTL | None = None,
        name: str | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(model_name, name=name, **options)
        self.cache_ttl: CacheTTL | None = cache_ttl

    def _new_sdk(self) -> Any:
        try:
            from anthropic import AsyncAnthropic
        except ImportError as exc:
            raise sdk_missing("anthropic", "anthropic") from exc
        return AsyncAnthropic(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def params(self, request: ModelRequest) -> dict[str, Any]:
        """What :meth:`complete` sends (without ``stream``)."""
        return build_params(self.model_name, request, name=self.name, cache_ttl=self.cache_ttl)

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self._require_key()
        params = self.params(request)
        client = self._client()
        acc = _Accumulator()
        await self._read_stream(
            lambda: client.messages.create(**params, stream=True),
            acc.feed,
            on_text,
            errors=(Exception,),  # the SDK lets transport errors of a stream through
            translate=lambda exc: self._translate(exc, acc),
            not_valid="an event that is not a valid Messages stream event",
        )
        if not acc.stopped or acc.stop_reason is None:
            raise self._cut_short("message_stop")
        thinking = acc.thinking_blocks()
        return ModelReply(
            text=acc.text(),
            tool_calls=acc.tool_calls(),
            usage=acc.usage(),
            stop_reason=_STOP_REASONS.get(acc.stop_reason, acc.stop_reason),
            model=acc.model or self.model_name,
            replay={"kind": KIND, "model": self.name, "blocks": thinking} if thinking else None,
        )

    def _translate(self, exc: Exception, acc: _Accumulator) -> BaseException:
        """An SDK, decoding or transport exception as a ModelError; any other exception
        is raised as it is."""
        import anthropic

        if isinstance(exc, anthropic.APIStatusError):
            return self._status_error(exc, mid_stream=acc.started)
        if isinstance(exc, anthropic.APITimeoutError):
            return self._timed_out()
        if isinstance(exc, anthropic.APIConnectionError):
            return self._connection_failed(exc.__cause__ or exc, mid_stream=acc.started)
        if isinstance(exc, anthropic.APIResponseValidationError | ValueError):
            return ModelError(
                f"{self.name}: {self._where} sent invalid JSON or an unexpected body "
                f"({self._redact(str(exc))[:300]}); is it the Anthropic API?"
            )
        if isinstance(exc, anthropic.AnthropicError):
            return ModelError(f"{self.name}: {self._redact(str(exc))[:500]}")
        # an httpx error raised while reading the stream (known by name: no httpx import)
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "TimeoutException" in names:
            return self._timed_out()
        if "TransportError" in names:
            return self._connection_failed(exc, mid_stream=acc.started, limit=300)
        return exc

    def _status_error(self, exc: Any, *, mid_stream: bool) -> ModelError:
        status = int(exc.status_code)
        said = error_fields(exc.body)
        detail = self._redact(said.get("message", str(exc.message)))[:500]
        kind = said.get("type", "")
        if mid_stream:  # an `error` event inside a 200 stream (e.g. overloaded_error)
            return self._mid_stream_error(
                f"{kind + ': ' if kind else ''}{detail}",
                retryable=kind not in ("invalid_request_error", "authentication_error"),
            )
        retry_after = retry_after_from_headers(getattr(exc.response, "headers", None))
        hint = self._status_hint(status, retry_after, "check the model name and the base URL")
        return AnthropicHTTPError(
            self._status_message(status, detail, hint),
            status=status,
            retry_after=retry_after,
        )
