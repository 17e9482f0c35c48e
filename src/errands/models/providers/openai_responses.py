"""OpenAI **Responses** API client (``POST /v1/responses``), through the official
``openai`` SDK (the ``openai`` extra). Spec: ``openai-responses:MODEL``; a named endpoint
uses it with ``kind = "openai-responses"``.

Configuration: ``base_url`` / ``api_key`` arguments, else ``OPENAI_BASE_URL`` /
``OPENAI_API_KEY``. A custom ``base_url`` without a key gets a placeholder key.

**Requests** always stream and are stateless (``store: false``; the whole transcript is
sent every turn, so an errand does not depend on state kept by the provider). The
system prompt is ``instructions``; user and assistant text are input messages (user
images as ``input_image`` data URLs before the text), assistant tool calls are
``function_call`` items and tool results ``function_call_output`` items (an error
result's text starts with ``ERROR:``, the API has no error flag). Tools are
``{"type": "function", "strict": false, ...}`` in the order given.

**Prompt caching** is automatic on OpenAI (prefixes of 1024 tokens and more, in
128-token steps): the adapter keeps the prefix stable (instructions and tools fixed,
the input append-only) and sends ``prompt_cache_key`` = the errand id to api.openai.com
so one errand's requests reach the same cache.

**Reasoning**: ``ModelRequest.reasoning`` is sent as ``reasoning.effort``
(``minimal`` / ``low`` / ``medium`` / ``high``, the API's own names), with
``include: ["reasoning.encrypted_content"]``: with ``store: false`` the API keeps no
reasoning between requests, so within a tool loop the model's reasoning items
(``{"type": "reasoning", "id", "summary", "encrypted_content"}``) must be sent back in
the input. The reply carries them as ``ModelReply.replay = {"kind":
"openai-responses", "model": NAME, "items": [...]}``; the loop logs that with the
response, so after a restart the assistant ``Message.replay`` still has them, and they
go back just before that turn's message and ``function_call`` items. Only items with
``encrypted_content`` are kept (without it a stateless request cannot use them); items
from another client kind or model spec (a fallback chain) are not sent: another model
cannot use them, and one without reasoning refuses reasoning items. A request without a reasoning level
asks for no encrypted content (models without reasoning refuse the ``include``), so a
reasoning model's default reasoning is not carried from one request to the next.

**Usage**: ``input_tokens`` (cached included), ``input_tokens_details.cached_tokens``,
``output_tokens`` (reasoning included), ``output_tokens_details.reasoning_tokens``.

**Errors** become :class:`~errands.models.protocol.ModelError` as in
:mod:`errands.models.providers.openai_chat` (the SDK and its errors are
:class:`~errands.models.providers.openai_chat.OpenAIClient`'s): connection failures, timeouts, a
stream cut short, 408/409/429/5xx, ``error`` events and ``response.failed`` with a
server error are retryable; other 4xx and garbage are not. Error messages never contain
the API key.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

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
    StreamGarbage,
    check_reasoning_level,
    token_count,
    tool_call,
)
from errands.models.providers.openai_chat import OPENAI_API, OpenAIClient

__all__ = ["OpenAIResponsesModel", "build_params"]

KIND = "openai-responses"
NO_KEY_HELP = "no API key for OpenAI: set OPENAI_API_KEY (or OPENAI_BASE_URL for another server)"
REASONING_EFFORTS = ("minimal", "low", "medium", "high")
_RETRYABLE_FAILURES = frozenset({"server_error", "rate_limit_exceeded", "vector_store_timeout"})

_REASONING_KEYS = ("type", "id", "summary", "content", "encrypted_content")


def _reasoning_items(m: Message, name: str) -> list[dict[str, Any]]:
    """The reasoning items to send back just before assistant message *m*'s items."""
    state = replay_for(m, KIND, name)
    items = state.get("items") if state is not None else None
    out: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else ():
        if not (
            isinstance(item, dict)
            and item.get("type") == "reasoning"
            and isinstance(item.get("id"), str)
            and isinstance(item.get("encrypted_content"), str)
        ):
            return []  # not what this client wrote: send none rather than a broken item
        out.append({k: item[k] for k in _REASONING_KEYS if k in item})
    return out


def _input_items(m: Message, name: str) -> list[dict[str, Any]]:
    if m.role == "user":
        if not m.images:
            return [{"role": "user", "content": m.text}]
        content: list[dict[str, Any]] = [
            {
                "type": "input_image",
                "image_url": f"data:{img.media_type};base64,{img.data_base64}",
                "detail": "auto",
            }
            for img in m.images
        ]
        if m.text:
            content.append({"type": "input_text", "text": m.text})
        return [{"role": "user", "content": content}]
    if m.role == "tool":
        text = f"ERROR: {m.text}" if m.is_error else m.text
        return [{"type": "function_call_output", "call_id": m.tool_call_id or "", "output": text}]
    items = _reasoning_items(m, name)
    if m.text or not m.tool_calls:
        items.append({"role": "assistant", "content": m.text})
    for c in m.tool_calls:
        # invalid arguments go back as "{}"; the tool result says what was wrong
        items.append(
            {
                "type": "function_call",
                "call_id": c.call_id,
                "name": c.name,
                "arguments": json.dumps(c.arguments),
            }
        )
    return items


def build_params(
    model: str, request: ModelRequest, *, cache_key: bool, name: str | None = None
) -> dict[str, Any]:
    """The ``responses.create`` parameters for *request* (``stream`` excluded). *name* is
    the client's spec name (default ``openai-responses:MODEL``): only reasoning items it
    produced are sent back."""
    spec = name or f"{KIND}:{model}"
    params: dict[str, Any] = {"model": model}
    if request.system:
        params["instructions"] = request.system
    if request.tools:
        params["tools"] = [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": False,
            }
            for t in request.tools
        ]
    params["input"] = [item for m in request.messages for item in _input_items(m, spec)]
    params["store"] = False
    if request.max_tokens is not None:
        params["max_output_tokens"] = request.max_tokens
    if request.reasoning is not None:
        check_reasoning_level(request.reasoning, REASONING_EFFORTS)
        params["reasoning"] = {"effort": request.reasoning}
        params["include"] = ["reasoning.encrypted_content"]
    if cache_key and request.errand_id:
        params["prompt_cache_key"] = request.errand_id
    return params


@dataclass(slots=True)
class _PendingCall:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    done: str | None = None


@dataclass(slots=True)
class _Accumulator:
    text: list[str] = field(default_factory=list)
    calls: dict[str, _PendingCall] = field(default_factory=dict)  # by item id
    order: list[_PendingCall] = field(default_factory=list)
    status: str | None = None
    incomplete_reason: str | None = None
    usage: Any = None
    model: str = ""
    refusal: bool = False
    started: bool = False
    reasoning: dict[str, dict[str, Any]] = field(default_factory=dict)  # by item id, in order

    def _call(self, item_id: str) -> _PendingCall:
        if item_id not in self.calls:
            self.calls[item_id] = _PendingCall()
            self.order.append(self.calls[item_id])
        return self.calls[item_id]

    def _item(self, item: Any) -> None:
        if getattr(item, "type", None) == "reasoning":
            if getattr(item, "encrypted_content", None) and item.id:
                dumped = item.model_dump(mode="json", exclude_none=True)
                self.reasoning[str(item.id)] = {
                    k: dumped[k] for k in _REASONING_KEYS if k in dumped
                }
            return
        if getattr(item, "type", None) != "function_call":
            return
        p = self._call(str(item.id or item.call_id))
        p.call_id = str(item.call_id or p.call_id)
        p.name = str(item.name or p.name)
        if item.arguments:
            p.done = str(item.arguments)

    def feed(self, event: Any) -> str:
        kind = getattr(event, "type", None)
        if not isinstance(kind, str):
            raise StreamGarbage(f"a stream event without a type: {str(event)[:200]!r}")
        if kind in ("response.created", "response.in_progress"):
            self.started = True
            self.model = str(getattr(event.response, "model", "") or self.model)
        elif kind == "response.output_text.delta":
            self.text.append(str(event.delta))
            return str(event.delta)
        elif kind == "response.refusal.delta":
            self.refusal = True
            self.text.append(str(event.delta))
            return str(event.delta)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            self._item(event.item)
        elif kind == "response.function_call_arguments.delta":
            self._call(str(event.item_id)).arguments.append(str(event.delta))
        elif kind == "response.function_call_arguments.done":
            self._call(str(event.item_id)).done = str(event.arguments)
        elif kind in ("response.completed", "response.incomplete"):
            r = event.response
            self.status = str(
                r.status or ("completed" if kind == "response.completed" else "incomplete")
            )
            self.usage = r.usage
            self.model = str(r.model or self.model)
            if r.incomplete_details is not None:
                self.incomplete_reason = str(r.incomplete_details.reason or "")
            for item in r.output or ():
                self._item(item)
        elif kind == "response.failed":
            r = event.response
            err = r.error
            code = str(getattr(err, "code", "") or "")
            message = str(getattr(err, "message", "") or "the response failed")
            raise ModelError(
                f"the response failed: {code + ': ' if code else ''}{message}",
                retryable=code in _RETRYABLE_FAILURES or not code,
            )
        elif kind == "error":
            ecode = getattr(event, "code", None)
            raise ModelError(
                f"an error event mid-stream: {str(ecode) + ': ' if ecode else ''}{event.message}",
                retryable=True,
            )
        return ""

    def tool_calls(self) -> list[ToolCall]:
        return [
            tool_call(
                p.call_id or f"call_{uuid.uuid4().hex[:24]}",
                p.name,
                p.done if p.done is not None else "".join(p.arguments),
            )
            for p in self.order
        ]

    def normalised_usage(self) -> Usage:
        u = self.usage
        in_details = getattr(u, "input_tokens_details", None)
        out_details = getattr(u, "output_tokens_details", None)
        return Usage(
            input_tokens=token_count(u, "input_tokens"),
            cached_input_tokens=token_count(in_details, "cached_tokens"),
            cache_write_tokens=token_count(in_details, "cache_write_tokens"),
            output_tokens=token_count(u, "output_tokens"),
            reasoning_tokens=token_count(out_details, "reasoning_tokens"),
        )


class OpenAIResponsesModel(OpenAIClient):
    """A :class:`~errands.models.protocol.Model` over the OpenAI Responses API."""

    kind = KIND
    api = dataclasses.replace(OPENAI_API, no_key_help=NO_KEY_HELP)
    expected_server = "an OpenAI Responses server"
    json_detail_limit = 200
    not_found_hint = "check the model name, and that {where} serves the Responses API"

    def params(self, request: ModelRequest) -> dict[str, Any]:
        return build_params(self.model_name, request, cache_key=self.official, name=self.name)

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self._require_key()
        import openai

        params = self.params(request)
        client = self._client()
        acc = _Accumulator()
        await self._read_stream(
            lambda: client.responses.create(**params, stream=True),
            lambda event: self._feed(acc, event),
            on_text,
            errors=(openai.APIError, ValueError),
            translate=lambda exc: self._translate(exc, started=acc.started),
            not_valid="an event that is not a valid Responses stream event",
        )
        if acc.status is None:
            raise self._cut_short("response.completed")
        calls = acc.tool_calls()
        if acc.refusal:
            stop = "refusal"
        elif acc.status == "incomplete":
            stop = "content_filter" if acc.incomplete_reason == "content_filter" else "max_tokens"
        else:
            stop = "tool_use" if calls else "end"
        reasoning = list(acc.reasoning.values())
        return ModelReply(
            text="".join(acc.text),
            tool_calls=calls,
            usage=acc.normalised_usage(),
            stop_reason=stop,
            model=acc.model or self.model_name,
            replay={"kind": KIND, "model": self.name, "items": reasoning} if reasoning else None,
        )

    def _feed(self, acc: _Accumulator, event: Any) -> str:
        try:
            return acc.feed(event)
        except ModelError as exc:  # response.failed or an error event
            raise ModelError(
                f"{self.name}: {self._where}: {self._redact(str(exc))[:500]}",
                retryable=exc.retryable,
            ) from None
