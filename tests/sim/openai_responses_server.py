"""A wire-protocol simulator of the OpenAI **Responses** API (``POST /v1/responses``).

Requests are checked against the ``openai`` SDK's own request TypedDicts
(``ResponseCreateParamsStreaming`` / ``...NonStreaming``) with pydantic, strictly
(unknown keys anywhere are rejected), plus the protocol rules the types cannot
express: every ``function_call_output`` answers an earlier ``function_call`` of the
input with the same ``call_id`` ("No tool call found for function call output"), every
``function_call`` is answered ("No tool output found for function call"), function
names match ``^[a-zA-Z0-9_-]{1,64}$``, and ``previous_response_id`` is refused (this
simulator keeps no conversation state: clients must send the whole input, as ours
does with ``store: false``). Reasoning items in the input must carry an
``encrypted_content`` this simulator issued for that item id (an item without it is
"not found": nothing is stored) and must be followed by another item. A bad request
gets HTTP 400 (404 for an item not found) with OpenAI's error body.

**Reasoning items**: for a request with ``reasoning`` and a turn with
``reasoning_tokens`` > 0 the output starts with a ``reasoning`` item (the
``response.output_item.added`` / ``.done`` events, and the
``response.reasoning_summary_*`` events when ``reasoning.summary`` asks for a summary);
it carries ``encrypted_content`` (a MAC of the item id) only when ``include`` lists
``reasoning.encrypted_content``. :attr:`OpenAIResponsesSim.issued_reasoning` keeps each
item issued, so tests can check exactly what comes back.

Responses are built with the SDK's models (``Response``, ``ResponseUsage``, the
``ResponseStreamEvent`` members: ``response.created``, ``response.in_progress``,
``response.output_item.added`` / ``.done``, ``response.content_part.added`` /
``.done``, ``response.output_text.delta`` / ``.done``,
``response.function_call_arguments.delta`` / ``.done``, ``response.completed``), as SSE
frames ``event: TYPE`` / ``data: JSON`` with increasing ``sequence_number``.

Auth as the Chat Completions simulator (``Authorization: Bearer``; a bad key's 401
echoes it).

**Prompt caching** is OpenAI's automatic prefix caching (platform.openai.com/docs/
guides/prompt-caching: prompts of 1024 tokens or more, the cached part in 128-token
increments, a hit needs an identical prefix): :class:`FastPrefixCache` (the same rule
as ``sim.core.PrefixCache``, with a prefix comparison fast enough for 50-turn runs of
100K-character prompts) over the canonical JSON of ``[instructions, tools, input]``.
``input_tokens`` counts the whole prompt (cached included), ``output_tokens`` the reply
plus the turn's ``reasoning_tokens``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseReasoningSummaryPartAddedEvent,
    ResponseReasoningSummaryPartDoneEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningSummaryTextDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response_create_params import (
    ResponseCreateParamsNonStreaming,
    ResponseCreateParamsStreaming,
)
from openai.types.responses.response_reasoning_item import Summary
from openai.types.responses.response_reasoning_summary_part_added_event import (
    Part as SummaryPartAdded,
)
from openai.types.responses.response_reasoning_summary_part_done_event import (
    Part as SummaryPartDone,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel, TypeAdapter, ValidationError

from .core import JSONReply, PrefixCache, Reply, StreamReply, Turn, approx_tokens, unknown_keys
from .openai_server import OpenAIChatSim, _describe, _Invalid, _materialise, _pieces

__all__ = ["FastPrefixCache", "OpenAIResponsesSim", "common_prefix_length"]

_STREAMING: TypeAdapter[Any] = TypeAdapter(ResponseCreateParamsStreaming)
_NON_STREAMING: TypeAdapter[Any] = TypeAdapter(ResponseCreateParamsNonStreaming)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CHUNK = 4096


def common_prefix_length(a: str, b: str) -> int:
    """The length of the longest common prefix of *a* and *b* (compared in C-speed
    slices, then character by character inside the first differing chunk)."""
    limit = min(len(a), len(b))
    i = 0
    while i < limit and a[i : i + _CHUNK] == b[i : i + _CHUNK]:
        i += _CHUNK
    if i >= limit:
        return limit
    end = min(i + _CHUNK, limit)
    while i < end and a[i] == b[i]:
        i += 1
    return i


class FastPrefixCache(PrefixCache):
    """:class:`sim.core.PrefixCache` with a fast prefix comparison (same results)."""

    def lookup_and_store(self, model: str, prompt: str) -> int:
        seen = self._seen.setdefault(model, [])
        best = max((common_prefix_length(earlier, prompt) for earlier in seen), default=0)
        seen.append(prompt)
        tokens = best // 4
        if tokens < self.minimum:
            return 0
        return tokens - tokens % self.block


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class OpenAIResponsesSim(OpenAIChatSim):
    """The OpenAI Responses simulator (shares auth, errors and faults with the Chat
    Completions one). ``base_url`` ends in ``/v1``."""

    provider = "openai-responses"

    def __init__(self, *, api_key: str = "sk-sim-0123456789abcdef", port: int = 0) -> None:
        super().__init__(api_key=api_key, port=port)
        self.cache = FastPrefixCache()
        self._secret = uuid.uuid4().bytes
        self.issued_reasoning: list[dict[str, Any]] = []  # each reasoning item, as output

    def reset(self) -> None:
        super().reset()
        self.cache = FastPrefixCache()
        self.issued_reasoning = []

    def _encrypt(self, item_id: str) -> str:
        """Opaque ``encrypted_content`` for a reasoning item: a nonce and a MAC, base64."""
        nonce = uuid.uuid4().bytes
        mac = hmac.new(self._secret, nonce + item_id.encode(), hashlib.sha256).digest()
        return base64.b64encode(nonce + mac).decode()

    def _decrypts(self, item_id: str, encrypted: str) -> bool:
        try:
            raw = base64.b64decode(encrypted, validate=True)
        except ValueError:
            return False
        nonce, mac = raw[:16], raw[16:]
        expected = hmac.new(self._secret, nonce + item_id.encode(), hashlib.sha256).digest()
        return hmac.compare_digest(mac, expected)

    def fixed_reply(self, method: str, path: str) -> Reply | None:
        return None

    def validate(self, method: str, path: str, body: Any) -> JSONReply | None:
        if method != "POST" or path != "/v1/responses":
            return self._error(404, f"Invalid URL ({method} {path})")
        if not isinstance(body, dict):
            return self._error(400, "the request body must be a JSON object")
        streaming = body.get("stream") is True
        adapter = _STREAMING if streaming else _NON_STREAMING
        try:
            _materialise(adapter.validate_python(body))
        except ValidationError as exc:
            return self._error(400, f"Invalid request: {_describe(exc, '')}")
        except _Invalid as exc:
            return self._error(400, f"Invalid request: {exc}")
        unknown = unknown_keys(
            ResponseCreateParamsStreaming if streaming else ResponseCreateParamsNonStreaming, body
        )
        if unknown:
            return self._error(400, f"Unknown parameter: '{unknown[0]}'.", param=unknown[0])
        if body.get("previous_response_id"):
            return self._error(
                404,
                f"Previous response with id '{body['previous_response_id']}' not found.",
                param="previous_response_id",
            )
        problem = self._responses_problem(body)
        if problem is not None:
            return self._error(400, problem, param="input")
        missing = self._reasoning_problem(body)
        if missing is not None:
            return missing
        return None

    def _reasoning_problem(self, body: dict[str, Any]) -> JSONReply | None:
        items = body.get("input")
        if not isinstance(items, list):
            return None
        for i, item in enumerate(items):
            if item.get("type") != "reasoning":
                continue
            rid = str(item.get("id"))
            encrypted = item.get("encrypted_content")
            if not encrypted:
                return self._error(
                    404,
                    f"Item with id '{rid}' not found. Items are not persisted when `store` is "
                    "set to false. Try again with `store` set to true, or remove this item "
                    "from your input.",
                    param="input",
                )
            if not self._decrypts(rid, str(encrypted)):
                return self._error(
                    400,
                    f"The encrypted content for item {rid} could not be verified.",
                    param="input",
                )
            if i + 1 >= len(items) or items[i + 1].get("type") == "reasoning":
                return self._error(
                    400,
                    f"Item '{rid}' of type 'reasoning' was provided without its required "
                    "following item.",
                    param="input",
                )
        return None

    @staticmethod
    def _responses_problem(body: dict[str, Any]) -> str | None:
        for i, tool in enumerate(body.get("tools") or []):
            if tool.get("type") == "function" and not _TOOL_NAME.match(tool.get("name", "")):
                return (
                    f"Invalid 'tools[{i}].name': string does not match pattern '^[a-zA-Z0-9_-]+$'."
                )
        items = body.get("input")
        if isinstance(items, str) or items is None:
            return None if items else "Missing required parameter: 'input'."
        if not items:
            return "Invalid 'input': empty array."
        calls: set[str] = set()
        answered: set[str] = set()
        for item in items:
            kind = item.get("type")
            if kind == "function_call":
                calls.add(item["call_id"])
            elif kind == "function_call_output":
                if item.get("call_id") not in calls:
                    return (
                        "No tool call found for function call output with call_id "
                        f"{item.get('call_id')}."
                    )
                answered.add(item["call_id"])
        missing = sorted(calls - answered)
        if missing:
            return f"No tool output found for function call {missing[0]}."
        return None

    def last_text(self, body: Any) -> str:
        if not isinstance(body, dict):
            return ""
        items = body.get("input")
        if isinstance(items, str):
            return items
        if not items:
            return ""
        last = items[-1]
        if last.get("type") == "function_call_output":
            return _text_of(last.get("output"))
        return _text_of(last.get("content"))

    def _responses_usage(self, body: dict[str, Any], turn: Turn) -> ResponseUsage:
        prompt = json.dumps(
            [body.get("instructions") or "", body.get("tools") or [], body.get("input")],
            sort_keys=True,
            separators=(",", ":"),
        )
        input_tokens = approx_tokens(prompt)
        cached = self.cache.lookup_and_store(str(body["model"]), prompt)
        if turn.cached_tokens is not None:
            cached = turn.cached_tokens
        out_text = turn.text + "".join(c.name + c.arguments_json() for c in turn.tool_calls)
        output = approx_tokens(out_text) + turn.reasoning_tokens
        return ResponseUsage(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=min(cached, input_tokens), cache_write_tokens=0
            ),
            output_tokens=output,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=turn.reasoning_tokens),
            total_tokens=input_tokens + output,
        )

    def _response(
        self, body: dict[str, Any], rid: str, status: str, output: list[Any], usage: Any
    ) -> Response:
        return Response.model_validate(
            {
                "id": rid,
                "object": "response",
                "created_at": time.time(),
                "model": body["model"],
                "status": status,
                "output": [o.model_dump(exclude_none=True) for o in output],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": body.get("tools") or [],
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "incomplete_details": (
                    {"reason": "max_output_tokens"} if status == "incomplete" else None
                ),
                "usage": usage.model_dump() if usage is not None else None,
            }
        )

    def render(self, path: str, body: Any, turn: Turn) -> Reply:
        rid = f"resp_{uuid.uuid4().hex[:24]}"
        usage = self._responses_usage(body, turn)
        status = "incomplete" if turn.finish_reason == "length" else "completed"
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        final_output: list[Any] = []
        reasoning = self._reasoning_item(body, turn)
        if reasoning is not None:
            final_output.append(reasoning)
        if turn.text:
            final_output.append(
                ResponseOutputMessage(
                    id=msg_id,
                    type="message",
                    role="assistant",
                    status="completed",
                    content=[
                        ResponseOutputText(type="output_text", text=turn.text, annotations=[])
                    ],
                )
            )
        calls = [
            ResponseFunctionToolCall(
                id=f"fc_{uuid.uuid4().hex[:24]}",
                type="function_call",
                call_id=c.call_id or f"call_{uuid.uuid4().hex[:24]}",
                name=c.name,
                arguments=c.arguments_json(),
                status="completed",
            )
            for c in turn.tool_calls
        ]
        final_output += calls
        if body.get("stream") is not True:
            final = self._response(body, rid, status, final_output, usage)
            return JSONReply(200, final.model_dump_json(exclude_none=True).encode())

        seq = iter(range(1_000_000))

        def sse(event: BaseModel) -> bytes:
            kind = getattr(event, "type", "")
            return (
                f"event: {kind}\ndata: ".encode()
                + event.model_dump_json(exclude_none=True).encode()
                + b"\n\n"
            )

        start = self._response(body, rid, "in_progress", [], None)
        events = [
            sse(
                ResponseCreatedEvent(
                    type="response.created", response=start, sequence_number=next(seq)
                )
            ),
            sse(
                ResponseInProgressEvent(
                    type="response.in_progress", response=start, sequence_number=next(seq)
                )
            ),
        ]
        index = 0
        if reasoning is not None:
            events += self._reasoning_events(reasoning, index, seq, sse)
            index += 1
        if turn.text:
            empty = ResponseOutputText(type="output_text", text="", annotations=[])
            events.append(
                sse(
                    ResponseOutputItemAddedEvent(
                        type="response.output_item.added",
                        output_index=index,
                        sequence_number=next(seq),
                        item=ResponseOutputMessage(
                            id=msg_id,
                            type="message",
                            role="assistant",
                            status="in_progress",
                            content=[],
                        ),
                    )
                )
            )
            events.append(
                sse(
                    ResponseContentPartAddedEvent(
                        type="response.content_part.added",
                        item_id=msg_id,
                        output_index=index,
                        content_index=0,
                        part=empty,
                        sequence_number=next(seq),
                    )
                )
            )
            events += [
                sse(
                    ResponseTextDeltaEvent(
                        type="response.output_text.delta",
                        item_id=msg_id,
                        output_index=index,
                        content_index=0,
                        delta=p,
                        logprobs=[],
                        sequence_number=next(seq),
                    )
                )
                for p in _pieces(turn.text)
            ]
            events.append(
                sse(
                    ResponseTextDoneEvent(
                        type="response.output_text.done",
                        item_id=msg_id,
                        output_index=index,
                        content_index=0,
                        text=turn.text,
                        logprobs=[],
                        sequence_number=next(seq),
                    )
                )
            )
            events.append(
                sse(
                    ResponseContentPartDoneEvent(
                        type="response.content_part.done",
                        item_id=msg_id,
                        output_index=index,
                        content_index=0,
                        part=ResponseOutputText(type="output_text", text=turn.text, annotations=[]),
                        sequence_number=next(seq),
                    )
                )
            )
            events.append(
                sse(
                    ResponseOutputItemDoneEvent(
                        type="response.output_item.done",
                        output_index=index,
                        item=final_output[index],
                        sequence_number=next(seq),
                    )
                )
            )
            index += 1
        for fc in calls:
            assert fc.id is not None
            events.append(
                sse(
                    ResponseOutputItemAddedEvent(
                        type="response.output_item.added",
                        output_index=index,
                        sequence_number=next(seq),
                        item=fc.model_copy(update={"arguments": "", "status": "in_progress"}),
                    )
                )
            )
            events += [
                sse(
                    ResponseFunctionCallArgumentsDeltaEvent(
                        type="response.function_call_arguments.delta",
                        item_id=fc.id,
                        output_index=index,
                        delta=p,
                        sequence_number=next(seq),
                    )
                )
                for p in (_pieces(fc.arguments) if fc.arguments else [])
            ]
            events.append(
                sse(
                    ResponseFunctionCallArgumentsDoneEvent(
                        type="response.function_call_arguments.done",
                        item_id=fc.id,
                        output_index=index,
                        arguments=fc.arguments,
                        sequence_number=next(seq),
                    )
                )
            )
            events.append(
                sse(
                    ResponseOutputItemDoneEvent(
                        type="response.output_item.done",
                        output_index=index,
                        item=fc,
                        sequence_number=next(seq),
                    )
                )
            )
            index += 1
        final = self._response(body, rid, status, final_output, usage)
        if status == "completed":
            events.append(
                sse(
                    ResponseCompletedEvent(
                        type="response.completed", response=final, sequence_number=next(seq)
                    )
                )
            )
        else:
            events.append(
                sse(
                    ResponseIncompleteEvent(
                        type="response.incomplete", response=final, sequence_number=next(seq)
                    )
                )
            )
        return StreamReply(events)

    def _reasoning_item(self, body: dict[str, Any], turn: Turn) -> ResponseReasoningItem | None:
        config = body.get("reasoning")
        if not isinstance(config, dict) or turn.reasoning_tokens <= 0:
            return None
        item_id = f"rs_{uuid.uuid4().hex[:24]}"
        summary = (
            [Summary(type="summary_text", text=f"Weighing the options ({item_id[-6:]}).")]
            if config.get("summary")
            else []
        )
        encrypted = (
            self._encrypt(item_id)
            if "reasoning.encrypted_content" in (body.get("include") or [])
            else None
        )
        item = ResponseReasoningItem(
            id=item_id,
            type="reasoning",
            summary=summary,
            encrypted_content=encrypted,
            status="completed",
        )
        with self._lock:
            self.issued_reasoning.append(item.model_dump(mode="json", exclude_none=True))
        return item

    @staticmethod
    def _reasoning_events(
        item: ResponseReasoningItem, index: int, seq: Any, sse: Any
    ) -> list[bytes]:
        added = item.model_copy(
            update={"summary": [], "encrypted_content": None, "status": "in_progress"}
        )
        events = [
            sse(
                ResponseOutputItemAddedEvent(
                    type="response.output_item.added",
                    output_index=index,
                    item=added,
                    sequence_number=next(seq),
                )
            )
        ]
        for k, part in enumerate(item.summary):
            common = {"item_id": item.id, "output_index": index, "summary_index": k}
            events.append(
                sse(
                    ResponseReasoningSummaryPartAddedEvent(
                        type="response.reasoning_summary_part.added",
                        part=SummaryPartAdded(type="summary_text", text=""),
                        sequence_number=next(seq),
                        **common,
                    )
                )
            )
            events += [
                sse(
                    ResponseReasoningSummaryTextDeltaEvent(
                        type="response.reasoning_summary_text.delta",
                        delta=p,
                        sequence_number=next(seq),
                        **common,
                    )
                )
                for p in _pieces(part.text)
            ]
            events.append(
                sse(
                    ResponseReasoningSummaryTextDoneEvent(
                        type="response.reasoning_summary_text.done",
                        text=part.text,
                        sequence_number=next(seq),
                        **common,
                    )
                )
            )
            events.append(
                sse(
                    ResponseReasoningSummaryPartDoneEvent(
                        type="response.reasoning_summary_part.done",
                        part=SummaryPartDone(type="summary_text", text=part.text),
                        sequence_number=next(seq),
                        **common,
                    )
                )
            )
        events.append(
            sse(
                ResponseOutputItemDoneEvent(
                    type="response.output_item.done",
                    output_index=index,
                    item=item,
                    sequence_number=next(seq),
                )
            )
        )
        return events

    def error_event(self, message: str) -> bytes:
        err = {"type": "error", "code": "server_error", "message": message, "sequence_number": 999}
        return b"event: error\ndata: " + json.dumps(err).encode() + b"\n\n"

    def garbage_event(self) -> bytes:
        return b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": "unterminated\n\n'

    def error_reply(
        self, status: int, message: str, *, kind: str = "", headers: Mapping[str, str] | None = None
    ) -> JSONReply:
        return self._error(status, message, kind=kind, headers=headers)
