"""A wire-protocol simulator of the Anthropic Messages API (``POST /v1/messages``).

**Requests** are checked against the ``anthropic`` SDK's own request TypedDicts
(``MessageCreateParamsStreaming`` / ``...NonStreaming``) with pydantic, strictly (unknown
keys anywhere are rejected), plus the protocol rules the types cannot express, each
answered with Anthropic's 400 ``invalid_request_error`` body:

* every ``tool_use`` is answered by a ``tool_result`` in the next user message, every
  ``tool_result`` answers a ``tool_use`` of the assistant message just before it, and
  ``tool_result`` blocks come before any other block of their message;
* text blocks are non-empty; tool names match ``^[a-zA-Z0-9_-]{1,64}$``;
* at most 4 blocks carry ``cache_control``; a ``ttl: "1h"`` breakpoint may not come after
  a 5-minute one (the order is tools, system, messages);
* extended thinking: ``budget_tokens`` >= 1024 and < ``max_tokens``; while thinking is
  enabled, the assistant messages of the current tool-use loop must start with a
  thinking block, a thinking block's ``signature`` must be one this simulator issued
  for exactly that thinking text, and a ``redacted_thinking`` block's ``data`` one it
  issued.

With thinking on and a turn's ``reasoning_tokens`` > 0, a reply starts with a thinking
block (its text unique to the reply, signed) and, for ``Turn.redacted_thinking``, a
``redacted_thinking`` block; :attr:`AnthropicSim.issued_thinking` keeps what each reply
carried, so tests can check exactly what comes back.

Auth: ``x-api-key: KEY`` or ``Authorization: Bearer KEY`` (the SDK sends the latter) and
an ``anthropic-version`` header; a bad key gets 401 ``authentication_error`` whose
message echoes the key (so tests can check that clients redact it).

**Responses** are built with the SDK's models (``Message``, ``Usage``, and for streams
the ``RawMessageStreamEvent`` members: ``message_start``, ``content_block_start`` /
``_delta`` / ``_stop``, ``message_delta``, ``message_stop``, plus a ``ping``), as SSE
frames ``event: TYPE`` / ``data: JSON``.

**Prompt caching** follows Anthropic's documented rules (prompt-caching guide,
platform.claude.com/docs/en/build-with-claude/prompt-caching; the SDK's
``CacheControlEphemeralParam`` for the ``ttl`` values):

* the prompt is the sequence of blocks in the order tools, system, messages; a block
  with ``cache_control`` is a breakpoint; ``cache_control`` itself is not part of the
  cached content (moving a breakpoint does not change the prefix);
* a request *writes* the prefix up to each breakpoint (``cache_creation_input_tokens``
  for the part not read from the cache) and *reads* (``cache_read_input_tokens``) the
  longest live prefix found by looking back from each breakpoint over 20 block
  boundaries (the breakpoint's own and the 19 before it) -- an earlier entry further
  back is not found;
* a prefix shorter than :attr:`AnthropicCache.minimum` tokens is not cached: 1024
  (Claude Sonnet / Opus 4.x and most models; Haiku and some newer models need 2048 or
  4096 -- pass ``min_cacheable=`` to simulate them);
* entries live 5 minutes (``ttl: "1h"``: one hour) and each hit refreshes them; the
  clock is :attr:`AnthropicCache.clock` (a test may replace it);
* ``input_tokens`` is only what was neither read nor written: the total is
  ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``.

Tokens: ceil(chars / 4) of each block's canonical JSON (``sim.core.approx_tokens``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RedactedThinkingBlock,
    SignatureDelta,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    Usage,
)
from anthropic.types.cache_creation import CacheCreation
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from anthropic.types.output_tokens_details import OutputTokensDetails
from anthropic.types.raw_message_delta_event import Delta
from pydantic import BaseModel, TypeAdapter, ValidationError

from .core import JSONReply, Reply, SimServer, StreamReply, Turn, approx_tokens, unknown_keys
from .openai_server import _describe, _Invalid, _materialise, _pieces

__all__ = ["AnthropicCache", "AnthropicSim", "CacheResult", "prompt_blocks"]

_STREAMING: TypeAdapter[Any] = TypeAdapter(MessageCreateParamsStreaming)
_NON_STREAMING: TypeAdapter[Any] = TypeAdapter(MessageCreateParamsNonStreaming)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
LOOKBACK = 20
MAX_BREAKPOINTS = 4


@dataclass(frozen=True, slots=True)
class PromptBlock:
    canonical: str  # the block's JSON without cache_control, with its place (role)
    tokens: int
    ttl: str | None  # the breakpoint's TTL, or None if the block is not a breakpoint


def _without_cache_control(block: Any) -> Any:
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _ttl(block: Any) -> str | None:
    if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
        return str(block["cache_control"].get("ttl") or "5m")
    return None


def prompt_blocks(body: Mapping[str, Any]) -> list[PromptBlock]:
    """The request's blocks in render order: tools, system, messages."""
    out: list[PromptBlock] = []

    def add(where: str, block: Any) -> None:
        canonical = where + json.dumps(
            _without_cache_control(block), sort_keys=True, separators=(",", ":")
        )
        out.append(PromptBlock(canonical, approx_tokens(canonical), _ttl(block)))

    for tool in body.get("tools") or []:
        add("tool:", tool)
    system = body.get("system")
    if isinstance(system, str) and system:
        add("system:", {"type": "text", "text": system})
    elif isinstance(system, list):
        for block in system:
            add("system:", block)
    for i, msg in enumerate(body.get("messages") or []):
        content = msg.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks or []:
            add(f"{i}:{msg.get('role')}:", block)
    return out


@dataclass(frozen=True, slots=True)
class CacheResult:
    total: int
    read: int
    write: int
    write_5m: int
    write_1h: int


class AnthropicCache:
    """Anthropic's explicit prompt cache (see the module docstring)."""

    def __init__(
        self,
        *,
        minimum: int = 1024,
        lookback: int = LOOKBACK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.minimum = minimum
        self.lookback = lookback
        self.clock = clock
        self._entries: dict[str, tuple[float, float]] = {}  # prefix hash -> (expiry, ttl)

    def process(self, model: str, blocks: list[PromptBlock]) -> CacheResult:
        hashes: list[str] = []
        cumulative: list[int] = []
        h = hashlib.sha256(model.encode()).hexdigest()
        total = 0
        for b in blocks:
            h = hashlib.sha256((h + b.canonical).encode()).hexdigest()
            total += b.tokens
            hashes.append(h)
            cumulative.append(total)
        now = self.clock()
        breakpoints = [i for i, b in enumerate(blocks) if b.ttl is not None]
        hit, hit_ttl = -1, 0.0
        for bp in breakpoints:
            for j in range(bp, max(-1, bp - self.lookback), -1):
                entry = self._entries.get(hashes[j])
                if entry is not None and entry[0] > now:
                    if j > hit:
                        hit, hit_ttl = j, TTL_SECONDS[blocks[bp].ttl or "5m"]
                    break
        read = cumulative[hit] if hit >= 0 else 0
        if hit >= 0:
            # a hit refreshes the entry, for the longer of its TTL and the one asked for
            ttl = max(self._entries[hashes[hit]][1], hit_ttl)
            self._entries[hashes[hit]] = (now + ttl, ttl)
        write_5m = write_1h = 0
        position = read
        for bp in breakpoints:
            if bp <= hit or cumulative[bp] < self.minimum:
                continue
            ttl = TTL_SECONDS[blocks[bp].ttl or "5m"]
            self._entries[hashes[bp]] = (now + ttl, ttl)
            segment = cumulative[bp] - position
            position = cumulative[bp]
            if blocks[bp].ttl == "1h":
                write_1h += segment
            else:
                write_5m += segment
        return CacheResult(total, read, write_5m + write_1h, write_5m, write_1h)


class AnthropicSim(SimServer):
    """The Anthropic Messages simulator. ``base_url`` is the origin (the SDK adds
    ``/v1/messages``)."""

    provider = "anthropic"

    def __init__(
        self,
        *,
        api_key: str = "sk-ant-sim-0123456789abcdef",
        port: int = 0,
        min_cacheable: int = 1024,
    ) -> None:
        super().__init__(api_key=api_key, port=port)
        self.anthropic_cache = AnthropicCache(minimum=min_cacheable)
        self._secret = uuid.uuid4().bytes
        self.issued_thinking: list[list[dict[str, Any]]] = []  # per reply that thought

    @property
    def env(self) -> dict[str, str]:
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": self.api_key}

    def reset(self) -> None:
        super().reset()
        self.anthropic_cache = AnthropicCache(minimum=self.anthropic_cache.minimum)
        self.issued_thinking = []

    # -- errors ----------------------------------------------------------------------

    def error_reply(
        self, status: int, message: str, *, kind: str = "", headers: Mapping[str, str] | None = None
    ) -> JSONReply:
        etype = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        body = {
            "type": "error",
            "error": {"type": etype, "message": message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }
        return JSONReply(status, json.dumps(body).encode(), dict(headers or {}))

    def error_event(self, message: str) -> bytes:
        data = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
        return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"

    def garbage_event(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_del\n\n'

    def check_auth(self, headers: Mapping[str, str]) -> JSONReply | None:
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if given != self.api_key:
            if not given:
                return self.error_reply(401, "x-api-key header is required")
            # deliberately echoes the key: clients must redact it
            return self.error_reply(401, f"invalid x-api-key: {given}")
        if not headers.get("anthropic-version"):
            return self.error_reply(400, "anthropic-version: header is required")
        return None

    # -- validation --------------------------------------------------------------------

    def _sign(self, thinking: str) -> str:
        return hmac.new(self._secret, thinking.encode(), hashlib.sha256).hexdigest()

    def _redacted(self) -> str:
        """Opaque ``redacted_thinking`` data: a nonce and its MAC, base64."""
        nonce = uuid.uuid4().bytes
        return base64.b64encode(nonce + hmac.new(self._secret, nonce, "sha256").digest()).decode()

    def _redacted_is_ours(self, data: str) -> bool:
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            return False
        nonce, mac = raw[:16], raw[16:]
        return hmac.compare_digest(mac, hmac.new(self._secret, nonce, "sha256").digest())

    def validate(self, method: str, path: str, body: Any) -> JSONReply | None:
        if method != "POST" or path != "/v1/messages":
            return self.error_reply(404, f"Not found: {method} {path}")
        if not isinstance(body, dict):
            return self.error_reply(400, "the request body must be a JSON object")
        streaming = body.get("stream") is True
        adapter = _STREAMING if streaming else _NON_STREAMING
        try:
            _materialise(adapter.validate_python(body))
        except ValidationError as exc:
            return self.error_reply(400, _describe(exc, ""))
        except _Invalid as exc:
            return self.error_reply(400, str(exc))
        unknown = unknown_keys(
            MessageCreateParamsStreaming if streaming else MessageCreateParamsNonStreaming, body
        )
        if unknown:
            return self.error_reply(400, f"{unknown[0]}: Extra inputs are not permitted")
        problem = self._protocol_problem(body)
        if problem is not None:
            return self.error_reply(400, problem)
        return None

    def _protocol_problem(self, body: dict[str, Any]) -> str | None:
        for i, tool in enumerate(body.get("tools") or []):
            if "name" in tool and "input_schema" in tool and not _TOOL_NAME.match(tool["name"]):
                return (
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
        messages = body["messages"]
        if not messages:
            return "messages: at least one message is required"
        blocks = prompt_blocks(body)
        marked = [b for b in blocks if b.ttl is not None]
        if len(marked) > MAX_BREAKPOINTS:
            return (
                f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {len(marked)}."
            )
        seen_short = False
        for b in marked:
            if b.ttl == "5m":
                seen_short = True
            elif seen_short:
                return (
                    "a ttl='1h' cache_control block must not come after a ttl='5m' "
                    "cache_control block (order: tools, system, messages)"
                )
        thinking = body.get("thinking") or {}
        if thinking.get("type") == "enabled":
            budget = thinking.get("budget_tokens", 0)
            if budget < 1024:
                return (
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                )
            if budget >= body["max_tokens"]:
                return "`max_tokens` must be greater than `thinking.budget_tokens`"
        open_calls: list[str] = []
        for i, msg in enumerate(messages):
            content = msg["content"]
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            results = [b for b in items if b.get("type") == "tool_result"]
            if msg["role"] == "user":
                answered = {b["tool_use_id"] for b in results}
                if open_calls and set(open_calls) - answered:
                    return (
                        f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                        f"immediately after: {', '.join(sorted(set(open_calls) - answered))}. "
                        "Each `tool_use` block must have a corresponding `tool_result` block "
                        "in the next message."
                    )
                for b in results:
                    if b["tool_use_id"] not in open_calls:
                        return (
                            f"messages.{i}.content: unexpected `tool_use_id` found in "
                            f"`tool_result` blocks: {b['tool_use_id']}. Each `tool_result` "
                            "block must have a corresponding `tool_use` block in the previous "
                            "message."
                        )
                if results and items[: len(results)] != results:
                    return f"messages.{i}.content: `tool_result` blocks must come first"
                open_calls = []
            elif msg["role"] == "assistant":
                if open_calls:
                    return (
                        f"messages.{i}: `tool_use` ids were found without `tool_result` "
                        f"blocks immediately after: {', '.join(open_calls)}"
                    )
                open_calls = [b["id"] for b in items if b.get("type") == "tool_use"]
                for b in items:
                    if b.get("type") == "thinking" and b.get("signature") != self._sign(
                        b.get("thinking", "")
                    ):
                        return f"messages.{i}.content: Invalid `signature` in `thinking` block"
                    if b.get("type") == "redacted_thinking" and not self._redacted_is_ours(
                        b.get("data", "")
                    ):
                        return f"messages.{i}.content: Invalid `data` in `redacted_thinking` block"
            for j, b in enumerate(items):
                if b.get("type") == "text" and not b.get("text"):
                    return f"messages.{i}.content.{j}.text: text content blocks must be non-empty"
        if thinking.get("type") in ("enabled", "adaptive"):
            problem = self._thinking_problem(messages)
            if problem is not None:
                return problem
        return None

    @staticmethod
    def _thinking_problem(messages: list[dict[str, Any]]) -> str | None:
        """Within the current tool-use loop, assistant messages must start with thinking."""
        for i in range(len(messages) - 1, -1, -1):
            msg = messages[i]
            content = msg["content"]
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if msg["role"] == "user":
                if any(b.get("type") != "tool_result" for b in items):
                    return None  # the loop starts here
                continue
            if msg["role"] == "assistant" and (
                not items or items[0].get("type") not in ("thinking", "redacted_thinking")
            ):
                first = items[0].get("type") if items else "nothing"
                return (
                    f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                    f"but found `{first}`. When `thinking` is enabled, a final `assistant` "
                    "message must start with a thinking block."
                )
        return None

    def last_text(self, body: Any) -> str:
        if not isinstance(body, dict) or not body.get("messages"):
            return ""
        content = body["messages"][-1].get("content")
        if isinstance(content, str):
            return content
        texts: list[str] = []
        for b in content or []:
            if b.get("type") == "text":
                texts.append(b.get("text", ""))
            elif b.get("type") == "tool_result":
                c = b.get("content", "")
                texts.append(c if isinstance(c, str) else "".join(x.get("text", "") for x in c))
        return "".join(texts)

    # -- responses ---------------------------------------------------------------------

    def _usage(self, body: dict[str, Any], turn: Turn) -> tuple[CacheResult, int]:
        result = self.anthropic_cache.process(str(body["model"]), prompt_blocks(body))
        if turn.cached_tokens is not None:
            read = min(turn.cached_tokens, result.total)
            result = CacheResult(result.total, read, 0, 0, 0)
        out_text = turn.text + "".join(c.name + c.arguments_json() for c in turn.tool_calls)
        return result, max(1, approx_tokens(out_text) + turn.reasoning_tokens)

    def render(self, path: str, body: Any, turn: Turn) -> Reply:
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        model = str(body["model"])
        cache, output_tokens = self._usage(body, turn)
        uncached = cache.total - cache.read - cache.write
        thinking_on = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
        thinks = thinking_on and turn.reasoning_tokens > 0
        thought = f"Let me think this through ({message_id[-6:]})." if thinks else ""
        redacted = self._redacted() if thinks and turn.redacted_thinking else ""
        if thinks:
            issued: list[dict[str, Any]] = [
                {"type": "thinking", "thinking": thought, "signature": self._sign(thought)}
            ]
            if redacted:
                issued.append({"type": "redacted_thinking", "data": redacted})
            with self._lock:
                self.issued_thinking.append(issued)
        stop = turn.finish_reason or ("tool_use" if turn.tool_calls else "end_turn")
        call_ids = [c.call_id or f"toolu_{uuid.uuid4().hex[:24]}" for c in turn.tool_calls]
        details = (
            OutputTokensDetails(thinking_tokens=turn.reasoning_tokens)
            if turn.reasoning_tokens
            else None
        )
        usage = Usage(
            input_tokens=uncached,
            cache_read_input_tokens=cache.read,
            cache_creation_input_tokens=cache.write,
            cache_creation=CacheCreation(
                ephemeral_5m_input_tokens=cache.write_5m, ephemeral_1h_input_tokens=cache.write_1h
            ),
            output_tokens=output_tokens,
            output_tokens_details=details,
            service_tier="standard",
        )
        if body.get("stream") is not True:
            content: list[Any] = []
            if thought:
                content.append(
                    ThinkingBlock(type="thinking", thinking=thought, signature=self._sign(thought))
                )
            if redacted:
                content.append(RedactedThinkingBlock(type="redacted_thinking", data=redacted))
            if turn.text:
                content.append(TextBlock(type="text", text=turn.text))
            for cid, c in zip(call_ids, turn.tool_calls, strict=True):
                args = json.loads(c.arguments_json()) if not isinstance(c.arguments, str) else {}
                content.append(ToolUseBlock(type="tool_use", id=cid, name=c.name, input=args))
            message = Message(
                id=message_id,
                type="message",
                role="assistant",
                model=model,
                content=content,
                stop_reason=stop,
                stop_sequence=None,
                usage=usage,
            )
            return JSONReply(200, message.model_dump_json(exclude_none=True).encode())

        def sse(event: BaseModel) -> bytes:
            kind = getattr(event, "type", "")
            return (
                f"event: {kind}\ndata: ".encode()
                + event.model_dump_json(exclude_none=True).encode()
                + b"\n\n"
            )

        start_usage = usage.model_copy(update={"output_tokens": 1, "output_tokens_details": None})
        events = [
            sse(
                RawMessageStartEvent(
                    type="message_start",
                    message=Message(
                        id=message_id,
                        type="message",
                        role="assistant",
                        model=model,
                        content=[],
                        stop_reason=None,
                        stop_sequence=None,
                        usage=start_usage,
                    ),
                )
            ),
            b'event: ping\ndata: {"type": "ping"}\n\n',
        ]
        index = 0
        if thought:
            events.append(
                sse(
                    RawContentBlockStartEvent(
                        type="content_block_start",
                        index=index,
                        content_block=ThinkingBlock(type="thinking", thinking="", signature=""),
                    )
                )
            )
            events += [
                sse(
                    RawContentBlockDeltaEvent(
                        type="content_block_delta",
                        index=index,
                        delta=ThinkingDelta(type="thinking_delta", thinking=p),
                    )
                )
                for p in _pieces(thought)
            ]
            events.append(
                sse(
                    RawContentBlockDeltaEvent(
                        type="content_block_delta",
                        index=index,
                        delta=SignatureDelta(type="signature_delta", signature=self._sign(thought)),
                    )
                )
            )
            events.append(sse(RawContentBlockStopEvent(type="content_block_stop", index=index)))
            index += 1
        if redacted:
            events.append(
                sse(
                    RawContentBlockStartEvent(
                        type="content_block_start",
                        index=index,
                        content_block=RedactedThinkingBlock(
                            type="redacted_thinking", data=redacted
                        ),
                    )
                )
            )
            events.append(sse(RawContentBlockStopEvent(type="content_block_stop", index=index)))
            index += 1
        if turn.text:
            events.append(
                sse(
                    RawContentBlockStartEvent(
                        type="content_block_start",
                        index=index,
                        content_block=TextBlock(type="text", text=""),
                    )
                )
            )
            events += [
                sse(
                    RawContentBlockDeltaEvent(
                        type="content_block_delta",
                        index=index,
                        delta=TextDelta(type="text_delta", text=p),
                    )
                )
                for p in _pieces(turn.text)
            ]
            events.append(sse(RawContentBlockStopEvent(type="content_block_stop", index=index)))
            index += 1
        for cid, c in zip(call_ids, turn.tool_calls, strict=True):
            events.append(
                sse(
                    RawContentBlockStartEvent(
                        type="content_block_start",
                        index=index,
                        content_block=ToolUseBlock(type="tool_use", id=cid, name=c.name, input={}),
                    )
                )
            )
            args = c.arguments_json()
            if args:
                events += [
                    sse(
                        RawContentBlockDeltaEvent(
                            type="content_block_delta",
                            index=index,
                            delta=InputJSONDelta(type="input_json_delta", partial_json=p),
                        )
                    )
                    for p in _pieces(args)
                ]
            events.append(sse(RawContentBlockStopEvent(type="content_block_stop", index=index)))
            index += 1
        events.append(
            sse(
                RawMessageDeltaEvent(
                    type="message_delta",
                    delta=Delta(stop_reason=stop, stop_sequence=None),
                    usage=MessageDeltaUsage(
                        input_tokens=uncached,
                        cache_read_input_tokens=cache.read,
                        cache_creation_input_tokens=cache.write,
                        output_tokens=output_tokens,
                        output_tokens_details=details,
                    ),
                )
            )
        )
        events.append(sse(RawMessageStopEvent(type="message_stop")))
        return StreamReply(events)
