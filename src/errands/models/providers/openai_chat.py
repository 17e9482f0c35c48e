"""OpenAI Chat Completions client -- also for compatible servers (Ollama, llama.cpp,
vLLM, LM Studio, ...), through the official ``openai`` SDK (the ``openai`` extra).

Configuration: ``base_url`` / ``api_key`` arguments, else ``OPENAI_BASE_URL`` /
``OPENAI_API_KEY``. A custom ``base_url`` without a key gets a placeholder key (local
servers ignore it; one that needs a key answers 401 and the error says what to set).

Requests always stream (``stream_options.include_usage``): text deltas go to
``on_text``, tool-call deltas are accumulated by index, and the final usage chunk is
normalised into :class:`~errands.core.events.Usage`.

Output limit: ``max_completion_tokens`` for api.openai.com (``max_tokens`` is deprecated
there and rejected by reasoning models), ``max_tokens`` for any other server (the one
name every compatible server knows; some ignore or reject the newer one). If a server
rejects the chosen name with a 400 naming it, the client switches to the other name
once and remembers. ``max_tokens_param`` forces a choice.

Errors become :class:`~errands.models.protocol.ModelError`: connection failures,
timeouts, a stream cut short, 408/409/429/5xx and in-stream error events are
retryable; other 4xx and garbage (invalid JSON, impossible chunks) are not. The SDK
itself retries ``max_retries`` times first. Error messages never contain the API key.

The configuration, the SDK client and the error messages are
:class:`~errands.models.providers.base.ProviderClient`'s; :class:`OpenAIClient` adds
what both OpenAI clients share (this one and
:class:`~errands.models.providers.openai_responses.OpenAIResponsesModel`): the ``openai`` SDK and
its errors.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Unpack

from errands.core.events import ToolCall, Usage
from errands.models.protocol import Message, ModelError, ModelReply, ModelRequest, TextSink
from errands.models.providers.base import (
    ClientOptions,
    HTTPStatusError,
    ProviderAPI,
    ProviderClient,
    StreamGarbage,
    error_fields,
    sdk_missing,
    token_count,
    tool_call,
)
from errands.models.wrappers.retry import retry_after_from_headers

if TYPE_CHECKING:
    from openai import APIStatusError

__all__ = ["OPENAI_API", "OpenAIChatModel", "OpenAIClient", "OpenAIHTTPError"]

OPENAI_HOST = "api.openai.com"
NO_KEY_HELP = (
    "no API key for OpenAI: set OPENAI_API_KEY, or set OPENAI_BASE_URL to an "
    "OpenAI-compatible server (for Ollama: OPENAI_BASE_URL=http://127.0.0.1:11434/v1)"
)
OPENAI_API = ProviderAPI(
    host=OPENAI_HOST,
    url=f"https://{OPENAI_HOST}/v1",
    base_url_env="OPENAI_BASE_URL",
    key_envs=("OPENAI_API_KEY",),
    key_pattern=r"\bsk-[A-Za-z0-9_\-*.]{3,}",
    key_mask="sk-[redacted]",
    no_key_help=NO_KEY_HELP,
)
_STOP_REASONS = {
    "stop": "end",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "content_filter",
}
MaxTokensParam = Literal["max_completion_tokens", "max_tokens"]


class OpenAIHTTPError(HTTPStatusError):
    """A :class:`ModelError` for an HTTP error status, with what the server said."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, retry_after=retry_after)
        self.param = param  # the request parameter the server objected to, if it said


class OpenAIClient(ProviderClient):
    """What both OpenAI clients share: the ``openai`` SDK, and its errors as
    :class:`ModelError` s. A subclass says what it expects the server to be."""

    api = OPENAI_API
    expected_server: ClassVar[str]  # "is it ...?" when the stream is not JSON
    json_detail_limit: ClassVar[int | None]  # how much of a JSON error to show
    not_found_hint: ClassVar[str]  # what a 404 suggests; {where} is the base URL

    def _new_sdk(self) -> Any:
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:
            raise sdk_missing("openai", "openai") from exc
        return AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def _translate(self, exc: Exception, *, started: bool) -> ModelError:
        """An SDK or decoding exception as a ModelError (never with the key in it);
        *started*: whether the stream had begun."""
        import openai

        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, openai.APITimeoutError):
            return self._timed_out()
        if isinstance(exc, openai.APIConnectionError):
            return self._connection_failed(exc.__cause__ or exc, mid_stream=started)
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            return self._mid_stream_error(self._redact(exc.message))
        # json.JSONDecodeError (a ValueError) from the SSE decoder
        return self._invalid_json(exc, self.expected_server, self.json_detail_limit)

    def _status_error(self, exc: APIStatusError) -> OpenAIHTTPError:
        status = exc.status_code
        said = error_fields(exc.body)
        detail = self._redact(said.get("message", exc.message))[:500]
        retry_after = retry_after_from_headers(exc.response.headers)
        hint = self._status_hint(
            status,
            retry_after,
            self.not_found_hint.format(where=self._where),
        )
        return OpenAIHTTPError(
            self._status_message(status, detail, hint),
            status=status,
            param=said.get("param"),
            retry_after=retry_after,
        )


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
            raise StreamGarbage(f"a stream chunk without 'choices': {str(chunk)[:200]!r}")
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
                        raise StreamGarbage(f"non-text content in a delta: {piece!r:.200}")
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
            raise StreamGarbage(f"a tool call delta with non-string fields: {tc!r:.200}")
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
        return [
            tool_call(p.call_id or f"call_{uuid.uuid4().hex[:24]}", p.name, "".join(p.arguments))
            for p in self.order
        ]

    def normalised_usage(self) -> Usage:
        u = self.usage
        if u is None:
            return Usage()
        prompt_details = getattr(u, "prompt_tokens_details", None)
        completion_details = getattr(u, "completion_tokens_details", None)
        return Usage(
            input_tokens=token_count(u, "prompt_tokens"),
            cached_input_tokens=token_count(prompt_details, "cached_tokens"),
            cache_write_tokens=token_count(prompt_details, "cache_write_tokens"),
            output_tokens=token_count(u, "completion_tokens"),
            reasoning_tokens=token_count(completion_details, "reasoning_tokens"),
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


class OpenAIChatModel(OpenAIClient):
    """A :class:`~errands.models.protocol.Model` over the Chat Completions API."""

    kind = "openai"
    expected_server = "an OpenAI-compatible server"
    json_detail_limit = None
    not_found_hint = "check the model name, and that the base URL {where} ends in /v1"

    def __init__(
        self,
        model_name: str,
        *,
        max_tokens_param: MaxTokensParam | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(model_name, **options)
        self.max_tokens_param: MaxTokensParam = max_tokens_param or (
            "max_completion_tokens" if self.official else "max_tokens"
        )
        self._param_forced = max_tokens_param is not None

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
        self._require_key()
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
        await self._read_stream(
            lambda: client.chat.completions.create(**self._params(request)),
            acc.feed,
            on_text,
            errors=(openai.APIError, ValueError),
            translate=lambda exc: self._translate(exc, started=bool(acc.model)),
            not_valid="a chunk that is not a valid chat completion",
            limit=None,
        )
        if acc.finish_reason is None:
            raise self._cut_short("finish_reason")
        stop = _STOP_REASONS.get(acc.finish_reason, acc.finish_reason)
        return ModelReply(
            text="".join(acc.text),
            tool_calls=acc.tool_calls(),
            usage=acc.normalised_usage(),
            stop_reason="refusal" if acc.refusal else stop,
            model=acc.model or self.model_name,
        )
