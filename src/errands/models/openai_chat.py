"""OpenAI Chat Completions client -- also for compatible servers (Ollama, llama.cpp,
vLLM, LM Studio, ...), through the official ``openai`` SDK (the ``openai`` extra).

Configuration: ``base_url`` / ``api_key`` arguments, else ``OPENAI_BASE_URL`` /
``OPENAI_API_KEY``. A custom ``base_url`` without a key gets a placeholder key (local
servers ignore it; one that needs a key answers 401 and the error says what to set).

Requests always stream (``stream_options.include_usage``): text deltas go to
``on_text``, tool-call deltas are accumulated by index, and the final usage chunk is
normalised into :class:`~errands.events.Usage`.

Output limit: ``max_completion_tokens`` for api.openai.com (``max_tokens`` is deprecated
there and rejected by reasoning models), ``max_tokens`` for any other server (the one
name every compatible server knows; some ignore or reject the newer one). If a server
rejects the chosen name with a 400 naming it, the client switches to the other name
once and remembers. ``max_tokens_param`` forces a choice.

Errors become :class:`~errands.models.protocol.ModelError`: connection failures,
timeouts, a stream cut short, 408/409/429/5xx and in-stream error events are
retryable; other 4xx and garbage (invalid JSON, impossible chunks) are not. The SDK
itself retries ``max_retries`` times first. Error messages never contain the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from errands.events import ToolCall, Usage
from errands.models.protocol import Message, ModelError, ModelReply, ModelRequest, TextSink
from errands.models.retry import retry_after_from_headers

if TYPE_CHECKING:
    from openai import APIStatusError

__all__ = ["OpenAIChatModel", "OpenAIHTTPError"]

OPENAI_HOST = "api.openai.com"
PLACEHOLDER_KEY = "not-needed"
NO_KEY_HELP = (
    "no API key for OpenAI: set OPENAI_API_KEY, or set OPENAI_BASE_URL to an "
    "OpenAI-compatible server (for Ollama: OPENAI_BASE_URL=http://127.0.0.1:11434/v1)"
)
_STOP_REASONS = {
    "stop": "end",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "content_filter",
}
_RETRYABLE_STATUS = frozenset({408, 409, 429})
MaxTokensParam = Literal["max_completion_tokens", "max_tokens"]


class OpenAIHTTPError(ModelError):
    """A :class:`ModelError` for an HTTP error status, with what the server said."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            retryable=status in _RETRYABLE_STATUS or status >= 500,
            retry_after=retry_after,  # seconds, from a retry-after(-ms) header
        )
        self.status = status
        self.param = param  # the request parameter the server objected to, if it said


class _Garbage(Exception):
    """The server sent something that is not a valid Chat Completions stream."""


def _redact(text: str, key: str) -> str:
    """Remove the API key, however the server echoed it, and bearer tokens."""
    if key and key != PLACEHOLDER_KEY:
        text = text.replace(key, "[redacted]")
    text = re.sub(r"Bearer\s+\S+", "Bearer [redacted]", text)
    # partial echoes such as "sk-proj-****abcd": nothing after the prefix is useful
    return re.sub(r"\bsk-[A-Za-z0-9_\-*.]{3,}", "sk-[redacted]", text)


@dataclass(slots=True)
class _PendingCall:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Accumulator:
    """Folds stream chunks into a reply. Chunks are read defensively: the SDK does not
    validate them, so a server can send any JSON."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, list[_PendingCall]] = field(default_factory=dict)
    order: list[_PendingCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Any = None
    model: str = ""
    refusal: bool = False

    def feed(self, chunk: Any) -> str:
        """Take one chunk; return its text delta (possibly empty)."""
        if not hasattr(chunk, "choices"):
            raise _Garbage(f"a stream chunk without 'choices': {str(chunk)[:200]!r}")
        if getattr(chunk, "model", None):
            self.model = str(chunk.model)
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        out = ""
        for choice in chunk.choices or ():
            if getattr(choice, "index", 0) not in (0, None):
                continue
            delta = choice.delta
            if delta is not None:
                content = getattr(delta, "content", None)
                refusal = getattr(delta, "refusal", None)
                for piece in (content, refusal):
                    if piece is not None and not isinstance(piece, str):
                        raise _Garbage(f"non-text content in a delta: {piece!r:.200}")
                if refusal:
                    self.refusal = True
                out += (content or "") + (refusal or "")
                for tc in getattr(delta, "tool_calls", None) or ():
                    self._feed_call(tc)
            if choice.finish_reason:
                self.finish_reason = str(choice.finish_reason)
        if out:
            self.text.append(out)
        return out

    def _feed_call(self, tc: Any) -> None:
        index = tc.index if isinstance(getattr(tc, "index", None), int) else len(self.calls)
        fn = getattr(tc, "function", None)
        name = getattr(fn, "name", None) or ""
        arguments = getattr(fn, "arguments", None) or ""
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise _Garbage(f"a tool call delta with non-string fields: {tc!r:.200}")
        slot = self.calls.setdefault(index, [])
        new_id = tc.id if isinstance(getattr(tc, "id", None), str) else ""
        # a new id at a used index is a new call (some servers send every call at index 0)
        if not slot or (new_id and slot[-1].call_id and new_id != slot[-1].call_id):
            slot.append(_PendingCall())
            self.order.append(slot[-1])
        pending = slot[-1]
        if new_id and not pending.call_id:
            pending.call_id = new_id
        if name and name != pending.name:
            # OpenAI sends the name once; some servers repeat it whole in every delta
            # (skipped above), a few send it in fragments (joined here)
            pending.name += name
        if arguments:
            pending.arguments.append(arguments)

    def tool_calls(self) -> list[ToolCall]:
        out: list[ToolCall] = []
        for p in self.order:
            raw = "".join(p.arguments)
            call_id = p.call_id or f"call_{uuid.uuid4().hex[:24]}"
            parsed: Any
            try:
                parsed = json.loads(raw) if raw.strip() else {}
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                out.append(ToolCall(call_id=call_id, name=p.name, arguments=parsed))
            else:
                out.append(ToolCall(call_id=call_id, name=p.name, arguments={}, raw_arguments=raw))
        return out

    def normalised_usage(self) -> Usage:
        u = self.usage
        if u is None:
            return Usage()

        def count(obj: Any, name: str) -> int:
            value = getattr(obj, name, None) if obj is not None else None
            return value if isinstance(value, int) else 0

        prompt_details = getattr(u, "prompt_tokens_details", None)
        completion_details = getattr(u, "completion_tokens_details", None)
        return Usage(
            input_tokens=count(u, "prompt_tokens"),
            cached_input_tokens=count(prompt_details, "cached_tokens"),
            cache_write_tokens=count(prompt_details, "cache_write_tokens"),
            output_tokens=count(u, "completion_tokens"),
            reasoning_tokens=count(completion_details, "reasoning_tokens"),
        )


def _chat_messages(request: ModelRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for m in request.messages:
        out.append(_chat_message(m))
    return out


def _chat_message(m: Message) -> dict[str, Any]:
    if m.role == "user":
        return {"role": "user", "content": m.text}
    if m.role == "tool":
        # Chat Completions has no error flag on tool results: say it in the text
        text = f"ERROR: {m.text}" if m.is_error else m.text
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": text}
    msg: dict[str, Any] = {"role": "assistant", "content": m.text}
    if m.tool_calls:
        msg["content"] = m.text or None
        msg["tool_calls"] = [
            {
                "id": c.call_id,
                "type": "function",
                # invalid arguments go back as "{}": servers such as Ollama parse the
                # history and reject the request otherwise; the tool result that
                # follows tells the model what was wrong with what it sent
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in m.tool_calls
        ]
    return msg


class OpenAIChatModel:
    """A :class:`~errands.models.protocol.Model` over the Chat Completions API."""

    def __init__(
        self,
        model_name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
        max_tokens_param: MaxTokensParam | None = None,
    ) -> None:
        self.model_name = model_name
        self.name = "openai:" + model_name
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").strip() or None
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        key = (key or "").strip()
        self.official = self.base_url is None or urlsplit(self.base_url).hostname == OPENAI_HOST
        self._api_key: str | None = key or (None if self.official else PLACEHOLDER_KEY)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_tokens_param: MaxTokensParam = max_tokens_param or (
            "max_completion_tokens" if self.official else "max_tokens"
        )
        self._param_forced = max_tokens_param is not None
        self._sdk: Any = None
        self._sdk_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAIChatModel({self.model_name!r}, base_url={self.base_url!r})"

    @property
    def _where(self) -> str:
        return self.base_url or f"https://{OPENAI_HOST}/v1"

    def _client(self) -> Any:
        """The SDK client, one per event loop (its connection pool belongs to one)."""
        loop = asyncio.get_running_loop()
        if self._sdk is None or self._sdk_loop is None or self._sdk_loop() is not loop:
            try:
                from openai import AsyncOpenAI
            except ImportError as exc:
                raise ModelError(
                    "the openai package is not installed: pip install 'errands[openai]'"
                ) from exc
            self._sdk = AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
            self._sdk_loop = weakref.ref(loop)
        return self._sdk

    async def aclose(self) -> None:
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model_name,
            "messages": _chat_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        if request.max_tokens is not None:
            params[self.max_tokens_param] = request.max_tokens
        if request.reasoning:
            params["reasoning_effort"] = request.reasoning
        if self.official and request.errand_id:
            params["prompt_cache_key"] = request.errand_id  # keeps an errand on one cache
        return params

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        if self._api_key is None:
            raise ModelError(f"{self.name}: {NO_KEY_HELP}")
        client = self._client()
        try:
            return await self._complete(client, request, on_text)
        except OpenAIHTTPError as exc:
            if not self._should_switch_param(exc, request):
                raise
        self.max_tokens_param = (
            "max_tokens"
            if self.max_tokens_param == "max_completion_tokens"
            else "max_completion_tokens"
        )
        return await self._complete(client, request, on_text)

    def _should_switch_param(self, exc: OpenAIHTTPError, request: ModelRequest) -> bool:
        """Did the server reject the output-limit parameter's *name*?"""
        if self._param_forced or request.max_tokens is None or exc.status not in (400, 422):
            return False
        if exc.param == self.max_tokens_param:
            return True
        text = str(exc).lower()
        return self.max_tokens_param in text and any(
            word in text
            for word in ("unsupported", "not supported", "unrecognized", "unknown", "extra")
        )

    async def _complete(
        self, client: Any, request: ModelRequest, on_text: TextSink | None
    ) -> ModelReply:
        import openai

        acc = _Accumulator()
        try:
            stream = await client.chat.completions.create(**self._params(request))
        except (openai.APIError, ValueError) as exc:
            raise self._translate(exc, acc) from None
        try:
            iterator = stream.__aiter__()
            while True:
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except (openai.APIError, ValueError) as exc:
                    raise self._translate(exc, acc) from None
                try:
                    delta = acc.feed(chunk)
                except (_Garbage, AttributeError, TypeError, ValueError) as exc:
                    raise ModelError(
                        f"{self.name}: {self._where} sent a chunk that is not a valid chat "
                        f"completion: {self._redact(str(exc))}"
                    ) from None
                if delta and on_text is not None:
                    on_text(delta)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
        if acc.finish_reason is None:
            raise ModelError(
                f"{self.name}: the stream from {self._where} ended before the reply was "
                "finished (no finish_reason)",
                retryable=True,
            )
        stop = _STOP_REASONS.get(acc.finish_reason, acc.finish_reason)
        return ModelReply(
            text="".join(acc.text),
            tool_calls=acc.tool_calls(),
            usage=acc.normalised_usage(),
            stop_reason="refusal" if acc.refusal else stop,
            model=acc.model or self.model_name,
        )

    def _redact(self, text: str) -> str:
        return _redact(text, self._api_key or "")

    def _translate(self, exc: Exception, acc: _Accumulator) -> ModelError:
        """An SDK or decoding exception as a ModelError (never with the key in it)."""
        import openai

        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, openai.APITimeoutError):
            return ModelError(
                f"{self.name}: timed out after {self.timeout:g}s waiting for {self._where}",
                retryable=True,
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = self._redact(str(exc.__cause__ or exc))
            if acc.model:
                what = "the connection broke in the middle of the stream"
            else:
                what = "cannot connect to"
            return ModelError(f"{self.name}: {what} {self._where}: {cause}", retryable=True)
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            return ModelError(
                f"{self.name}: {self._where} reported an error mid-stream: "
                f"{self._redact(exc.message)}",
                retryable=True,
            )
        # json.JSONDecodeError (a ValueError) from the SSE decoder
        return ModelError(
            f"{self.name}: {self._where} sent invalid JSON in its stream "
            f"({self._redact(str(exc))}); is it an OpenAI-compatible server?"
        )

    def _status_error(self, exc: APIStatusError) -> OpenAIHTTPError:
        status = exc.status_code
        detail: str = exc.message
        param: str | None = None
        body = exc.body
        if isinstance(body, dict):
            err = body.get("error", body)
            if isinstance(err, dict):
                if isinstance(err.get("message"), str):
                    detail = err["message"]
                if isinstance(err.get("param"), str):
                    param = err["param"]
        detail = self._redact(detail)[:500]
        retry_after = retry_after_from_headers(exc.response.headers)
        hint = ""
        if status == 401:
            hint = " (check OPENAI_API_KEY)"
        elif status == 404:
            hint = f" (check the model name, and that the base URL {self._where} ends in /v1)"
        elif status == 429 and retry_after is not None:
            hint = f" (retry after {retry_after:g}s)"
        return OpenAIHTTPError(
            f"{self.name}: HTTP {status} from {self._where}: {detail}{hint}",
            status=status,
            param=param,
            retry_after=retry_after,
        )
