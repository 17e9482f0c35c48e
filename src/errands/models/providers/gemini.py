"""Google Gemini client (Gemini API), through the official ``google-genai`` SDK (the
``gemini`` extra). Spec: ``gemini:MODEL`` (e.g. ``gemini:gemini-2.5-flash``).

Configuration: ``base_url`` / ``api_key`` arguments, else ``GOOGLE_GEMINI_BASE_URL`` and
``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``). A custom ``base_url`` without a key gets a
placeholder key.

**Requests** always stream (``:streamGenerateContent?alt=sse``). The transcript becomes
``contents``: user text (and images, as ``inline_data`` parts before the text) in
``user`` turns, assistant text and ``function_call`` parts in ``model`` turns, tool
results as ``function_response`` parts (``{"output": text}``, or ``{"error": text}``
for an error result) in the ``user`` turn that follows. Tool schemas go as
``parameters_json_schema`` (plain JSON schema). Consecutive turns of one role are
merged.

**Thought signatures**: Gemini 3 models return a ``thought_signature`` with a function
call and require it back on that call within the current turn. The reply carries them
as ``ModelReply.replay = {"kind": "gemini", "model": NAME, "signatures": {call_id:
base64}}``; the loop logs that with the response, so after a restart the assistant
``Message.replay`` still has them and each goes back on its call. For the first call of
a model turn without a signature of its own -- the call came from another client kind
or model spec (a fallback chain), or from an older log -- a Gemini 3 request carries
Google's documented placeholder ``skip_thought_signature_validator`` instead.

**Prompt caching** on the Gemini API is implicit (2.5 and newer models): nothing is
sent; a request whose prefix matches a recent one gets ``cached_content_token_count``.
The adapter keeps the prefix stable: system instruction and tool declarations first,
in the order given, the transcript append-only.

**Reasoning** (``ModelRequest.reasoning``): Gemini 3 and newer models take a thinking
level -- ``minimal`` / ``low`` / ``medium`` / ``high`` -> ``MINIMAL`` / ``LOW`` /
``MEDIUM`` / ``HIGH``; Gemini 2.x models take a budget -- ``minimal`` -> 0 (off, where
the model allows it), ``low`` -> 1024, ``medium`` -> 8192, ``high`` -> 24576 tokens
(see :data:`THINKING_BUDGETS`).

**Usage**: ``input_tokens`` = ``prompt_token_count`` (cached included) +
``tool_use_prompt_token_count``; ``cached_input_tokens`` = ``cached_content_token_count``;
``output_tokens`` = ``candidates_token_count + thoughts_token_count``;
``reasoning_tokens`` = ``thoughts_token_count``.

**Errors** become :class:`~errands.models.protocol.ModelError`: connection failures,
timeouts, a stream cut short, 408/409/429/5xx and error objects inside the stream are
retryable; other 4xx and garbage are not. Error messages never contain the API key.

The configuration, the SDK client and the error messages are
:class:`~errands.models.providers.base.ProviderClient`'s.
"""

from __future__ import annotations

import base64
import contextlib
import re
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
    HTTPStatusError,
    ProviderAPI,
    ProviderClient,
    StreamGarbage,
    check_reasoning_level,
    retryable_status,
    sdk_missing,
    token_count,
)
from errands.models.wrappers.retry import retry_after_from_headers

__all__ = [
    "SKIP_SIGNATURE",
    "THINKING_BUDGETS",
    "THINKING_LEVELS",
    "GeminiHTTPError",
    "GeminiModel",
]

KIND = "gemini"
GEMINI_HOST = "generativelanguage.googleapis.com"
GEMINI_API = ProviderAPI(
    host=GEMINI_HOST,
    url=f"https://{GEMINI_HOST}",
    base_url_env="GOOGLE_GEMINI_BASE_URL",
    key_envs=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    key_pattern=r"\bAIza[0-9A-Za-z_\-]{3,}",
    key_mask="AIza[redacted]",
    no_key_help="no API key for Gemini: set GEMINI_API_KEY (or GOOGLE_API_KEY)",
)
SKIP_SIGNATURE = b"skip_thought_signature_validator"
THINKING_LEVELS = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH"}
THINKING_BUDGETS = {"minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
_STOP_REASONS = {
    "STOP": "end",
    "MAX_TOKENS": "max_tokens",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
}


class GeminiHTTPError(HTTPStatusError):
    """A :class:`ModelError` for an HTTP error status."""


def _retry_after(exc: Any) -> float | None:
    """A ``retry-after`` header, else the ``RetryInfo.retryDelay`` ("30s") in the body."""
    found = retry_after_from_headers(getattr(getattr(exc, "response", None), "headers", None))
    if found is not None:
        return found
    body = getattr(exc, "details", None)
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for item in details if isinstance(details, list) else ():
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            with contextlib.suppress(ValueError):
                return float(delay[:-1])
    return None


def _uses_levels(model: str) -> bool:
    """Gemini 3 and newer take ``thinking_level``; 2.x take ``thinking_budget``."""
    m = re.search(r"gemini-(\d+)", model)
    return m is None or int(m.group(1)) >= 3


@dataclass(slots=True)
class _Accumulator:
    text: list[str] = field(default_factory=list)
    calls: list[tuple[ToolCall, bytes | None]] = field(default_factory=list)
    finish: str | None = None
    finish_message: str = ""
    usage: Any = None
    model: str = ""
    chunks: int = 0
    blocked: str | None = None

    def feed(self, chunk: Any) -> str:
        self.chunks += 1
        if getattr(chunk, "usage_metadata", None) is not None:
            self.usage = chunk.usage_metadata
        if getattr(chunk, "model_version", None):
            self.model = str(chunk.model_version)
        feedback = getattr(chunk, "prompt_feedback", None)
        if feedback is not None and getattr(feedback, "block_reason", None):
            self.blocked = str(feedback.block_reason)
        out = ""
        for cand in chunk.candidates or ():
            if (cand.index or 0) != 0:
                continue
            parts = cand.content.parts if cand.content is not None else None
            for part in parts or ():
                if part.function_call is not None:
                    fc = part.function_call
                    args = fc.args if fc.args is not None else {}
                    call_id = fc.id or f"call_{uuid.uuid4().hex[:24]}"
                    if isinstance(args, dict):
                        call = ToolCall(call_id=call_id, name=fc.name or "", arguments=args)
                    else:  # pragma: no cover - the SDK types args as a dict
                        call = ToolCall(
                            call_id=call_id,
                            name=fc.name or "",
                            arguments={},
                            raw_arguments=str(args),
                        )
                    self.calls.append((call, part.thought_signature))
                elif part.text and not part.thought:
                    out += part.text
            if cand.finish_reason is not None:
                finish = cand.finish_reason
                self.finish = str(getattr(finish, "value", finish))
                self.finish_message = str(cand.finish_message or "")
        if out:
            self.text.append(out)
        return out

    def normalised_usage(self) -> Usage:
        u = self.usage
        thoughts = token_count(u, "thoughts_token_count")
        return Usage(
            input_tokens=token_count(u, "prompt_token_count")
            + token_count(u, "tool_use_prompt_token_count"),
            cached_input_tokens=token_count(u, "cached_content_token_count"),
            output_tokens=token_count(u, "candidates_token_count") + thoughts,
            reasoning_tokens=thoughts,
        )


class GeminiModel(ProviderClient):
    """A :class:`~errands.models.protocol.Model` over the Gemini API."""

    kind = KIND
    api = GEMINI_API

    def _new_sdk(self) -> Any:
        try:
            from google import genai
            from google.genai import types
        except ImportError as exc:
            raise sdk_missing("google-genai", "gemini") from exc
        options = types.HttpOptions(
            base_url=self.base_url,
            timeout=int(self.timeout * 1000),
            # attempts include the first; with retry options set the SDK also stops
            # its own hidden retries of connection errors
            retry_options=types.HttpRetryOptions(
                attempts=self.max_retries + 1, initial_delay=0.5, max_delay=8.0
            ),
        )
        return genai.Client(api_key=self._api_key, http_options=options)

    async def _close_sdk(self, sdk: Any) -> None:
        with contextlib.suppress(Exception):
            await sdk.aio.aclose()

    # -- request -----------------------------------------------------------------------

    def _signatures(self, m: Message) -> dict[str, bytes]:
        """The thought signatures this client got with assistant message *m*, by call id."""
        state = replay_for(m, KIND, self.name)
        found = state.get("signatures") if state is not None else None
        out: dict[str, bytes] = {}
        for call_id, encoded in found.items() if isinstance(found, dict) else ():
            with contextlib.suppress(ValueError, TypeError):
                out[call_id] = base64.b64decode(encoded, validate=True)
        return out

    def contents(self, request: ModelRequest) -> list[Any]:
        """The ``contents`` of the request as SDK types."""
        from google.genai import types

        out: list[types.Content] = []
        for m in request.messages:
            role, parts = self._parts(m, types)
            if not parts:
                continue
            if out and out[-1].role == role and out[-1].parts is not None:
                out[-1].parts.extend(parts)
            else:
                out.append(types.Content(role=role, parts=parts))
        return out

    def _parts(self, m: Message, types: Any) -> tuple[str, list[Any]]:
        if m.role == "assistant":
            parts = [types.Part(text=m.text)] if m.text else []
            signatures = self._signatures(m)
            for i, c in enumerate(m.tool_calls):
                signature = signatures.get(c.call_id)
                if signature is None and i == 0 and _uses_levels(self.model_name):
                    signature = SKIP_SIGNATURE  # Gemini 3 requires one on a turn's first call
                parts.append(
                    types.Part(
                        function_call=types.FunctionCall(
                            id=c.call_id, name=c.name, args=c.arguments
                        ),
                        thought_signature=signature,
                    )
                )
            return "model", parts
        if m.role == "tool":
            response = {"error": m.text} if m.is_error else {"output": m.text}
            return "user", [
                types.Part(
                    function_response=types.FunctionResponse(
                        id=m.tool_call_id, name=m.tool_name or "", response=response
                    )
                )
            ]
        parts = [
            types.Part(
                inline_data=types.Blob(
                    mime_type=img.media_type, data=base64.b64decode(img.data_base64)
                )
            )
            for img in m.images
        ]
        if m.text:
            parts.append(types.Part(text=m.text))
        return "user", parts

    def config(self, request: ModelRequest) -> Any:
        from google.genai import types

        kwargs: dict[str, Any] = {}
        if request.system:
            kwargs["system_instruction"] = request.system
        if request.tools:
            kwargs["tools"] = [
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name=t.name,
                            description=t.description,
                            parameters_json_schema=t.parameters,
                        )
                        for t in request.tools
                    ]
                )
            ]
            kwargs["automatic_function_calling"] = types.AutomaticFunctionCallingConfig(
                disable=True
            )
        if request.max_tokens is not None:
            kwargs["max_output_tokens"] = request.max_tokens
        if request.reasoning is not None:
            check_reasoning_level(request.reasoning, THINKING_LEVELS)
            if _uses_levels(self.model_name):
                kwargs["thinking_config"] = types.ThinkingConfig(
                    thinking_level=THINKING_LEVELS[request.reasoning]
                )
            else:
                kwargs["thinking_config"] = types.ThinkingConfig(
                    thinking_budget=THINKING_BUDGETS[request.reasoning]
                )
        return types.GenerateContentConfig(**kwargs)

    # -- call --------------------------------------------------------------------------

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self._require_key()
        contents = self.contents(request)
        config = self.config(request)
        client = self._client()
        acc = _Accumulator()
        try:
            stream = await client.aio.models.generate_content_stream(
                model=self.model_name, contents=contents, config=config
            )
            async for chunk in stream:
                try:
                    delta = acc.feed(chunk)
                except (StreamGarbage, AttributeError, TypeError, ValueError) as exc:
                    raise self._garbage(
                        "a chunk that is not a valid GenerateContentResponse", exc
                    ) from None
                if delta and on_text is not None:
                    on_text(delta)
        except ModelError:
            raise
        except Exception as exc:
            raise self._translate(exc, acc) from None
        if acc.blocked and acc.finish is None:
            raise ModelError(f"{self.name}: the prompt was blocked ({acc.blocked})")
        if acc.finish is None:
            raise self._cut_short("finish_reason")
        if acc.finish == "MALFORMED_FUNCTION_CALL":
            # nothing usable came back; asking again usually gets a well-formed call
            raise ModelError(
                f"{self.name}: the model produced a malformed function call"
                + (f": {self._redact(acc.finish_message)[:300]}" if acc.finish_message else ""),
                retryable=True,
            )
        signatures = {
            call.call_id: base64.b64encode(signature).decode()
            for call, signature in acc.calls
            if signature
        }
        calls = [c for c, _ in acc.calls]
        stop = (
            "tool_use"
            if calls and acc.finish == "STOP"
            else _STOP_REASONS.get(acc.finish, acc.finish.lower())
        )
        return ModelReply(
            text="".join(acc.text),
            tool_calls=calls,
            usage=acc.normalised_usage(),
            stop_reason=stop,
            model=acc.model or self.model_name,
            replay=(
                {"kind": KIND, "model": self.name, "signatures": signatures} if signatures else None
            ),
        )

    def _translate(self, exc: Exception, acc: _Accumulator) -> ModelError:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            return self._status_error(exc, mid_stream=acc.chunks > 0)
        if isinstance(exc, errors.UnknownApiResponseError | ValueError):
            return self._invalid_json(exc, "the Gemini API")
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & {"TimeoutException", "TimeoutError", "ReadTimeout", "ConnectTimeout"}:
            return self._timed_out()
        if names & {"TransportError", "ConnectError", "OSError", "RemoteProtocolError"}:
            return self._connection_failed(exc, mid_stream=acc.chunks > 0, limit=300)
        return ModelError(
            f"{self.name}: unexpected error talking to {self._where}: "
            f"{type(exc).__name__}: {self._redact(str(exc))[:300]}"
        )

    def _status_error(self, exc: Any, *, mid_stream: bool) -> ModelError:
        status = int(exc.code or 0)
        detail = self._redact(str(exc.message or exc.status or ""))[:500]
        if mid_stream:
            return self._mid_stream_error(
                f"{status} {detail}", retryable=retryable_status(status) or status == 0
            )
        hint = ""
        if status in (401, 403) or "API key" in detail or "API_KEY" in detail:
            hint = f" (check {self.api.key_envs[0]})"
        elif status == 404:
            hint = " (check the model name and the base URL)"
        return GeminiHTTPError(
            self._status_message(status, detail, hint),
            status=status,
            retry_after=_retry_after(exc),
        )
