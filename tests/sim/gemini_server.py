"""A wire-protocol simulator of the Gemini API's ``generateContent``
(``POST /v1beta/models/MODEL:generateContent`` and ``:streamGenerateContent?alt=sse``).

**Requests** are validated field by field with the ``google-genai`` SDK's own pydantic
types, which forbid unknown fields: ``contents`` as ``list[Content]``,
``systemInstruction`` as ``Content``, ``tools`` as ``list[Tool]``, ``toolConfig`` as
``ToolConfig``, ``generationConfig`` as ``GenerationConfig``, ``safetySettings`` as
``list[SafetySetting]``; an unknown top-level field is refused the way the API does
(``Invalid JSON payload received. Unknown name ...``). Protocol rules on top: roles are
``user`` / ``model``, no content without parts, a turn of function responses answers
the function calls of the model turn just before it one for one (by name and, when
given, id), function names match Gemini's pattern, ``thinkingConfig`` takes a budget or
a level, not both, and -- for ``gemini-3*`` models -- the first function call of each
model turn in the current turn carries a ``thoughtSignature`` this simulator issued
(or Google's documented placeholder ``skip_thought_signature_validator``). Errors are
Google's ``{"error": {"code", "message", "status"}}`` bodies. The first function call of
each reply carries a signature (a MAC of its name and arguments);
:attr:`GeminiSim.issued_signatures` keeps them by call id, so tests can check exactly
what comes back.

Auth: ``x-goog-api-key`` (what the SDK sends). A bad key gets what the real API sends,
HTTP 400 ``INVALID_ARGUMENT`` "API key not valid" -- echoing the key, so tests can check
that clients redact it.

**Responses** are ``GenerateContentResponse`` objects built with the SDK's types and
serialised with their camelCase aliases; streams are SSE ``data:`` frames, one per
chunk, the last with ``finishReason`` and ``usageMetadata``. A scripted call whose
arguments are not a JSON object becomes what Gemini does with a malformed call:
``finishReason: MALFORMED_FUNCTION_CALL`` and no call.

**Implicit caching** (ai.google.dev/gemini-api/docs/caching, as of 2026-05: on by
default for Gemini 2.5 and newer; minimum 1024 tokens for Flash models, 4096 for Pro;
later revisions list 2048 / 4096): the cached part is the longest common prefix with an
earlier prompt of the same model, counted in tokens, zero below the minimum (the
``min_cacheable`` argument overrides the per-model choice), reported as
``cachedContentTokenCount`` within ``promptTokenCount``. The prompt is the canonical JSON
of ``[systemInstruction, tools, contents]``; tokens are ceil(chars / 4).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from google.genai import types
from pydantic import TypeAdapter, ValidationError

from .core import JSONReply, Reply, SimServer, StreamReply, Turn, approx_tokens
from .openai_responses_server import FastPrefixCache

__all__ = ["GeminiSim"]

_PATH = re.compile(r"^/(v1beta|v1)/models/([^/:]+):(generateContent|streamGenerateContent)$")
_FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,127}$")
_PLACEHOLDERS = {b"skip_thought_signature_validator", b"context_engineering_is_the_way_to_go"}
_PIECE = 12
_FIELDS: dict[str, TypeAdapter[Any]] = {
    "contents": TypeAdapter(list[types.Content]),
    "systemInstruction": TypeAdapter(types.Content),
    "tools": TypeAdapter(list[types.Tool]),
    "toolConfig": TypeAdapter(types.ToolConfig),
    "generationConfig": TypeAdapter(types.GenerationConfig),
    "safetySettings": TypeAdapter(list[types.SafetySetting]),
    "cachedContent": TypeAdapter(str),
}
_SNAKE = {
    "system_instruction": "systemInstruction",
    "tool_config": "toolConfig",
    "generation_config": "generationConfig",
    "safety_settings": "safetySettings",
    "cached_content": "cachedContent",
}


def _g(d: Mapping[str, Any], camel: str) -> Any:
    """A field by its camelCase or snake_case name (the API accepts both)."""
    if camel in d:
        return d[camel]
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
    return d.get(snake)


def _b64(raw: str) -> bytes:
    """Proto JSON bytes: standard or URL-safe base64, padded or not."""
    raw = raw.replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except ValueError:
        return b""


def _pieces(text: str) -> list[str]:
    return [text[i : i + _PIECE] for i in range(0, len(text), _PIECE)] or [""]


class GeminiSim(SimServer):
    """The Gemini API simulator. ``base_url`` is the origin (the SDK adds
    ``/v1beta/models/...``)."""

    provider = "gemini"

    def __init__(
        self,
        *,
        api_key: str = "AIzaSim-0123456789abcdef",
        port: int = 0,
        min_cacheable: int | None = None,
    ) -> None:
        super().__init__(api_key=api_key, port=port)
        self.min_cacheable = min_cacheable
        self._caches: dict[int, FastPrefixCache] = {}
        self._secret = uuid.uuid4().bytes
        self.issued_signatures: dict[str, bytes] = {}  # call id -> thought signature

    @property
    def env(self) -> dict[str, str]:
        return {"GOOGLE_GEMINI_BASE_URL": self.base_url, "GEMINI_API_KEY": self.api_key}

    def reset(self) -> None:
        super().reset()
        self._caches = {}
        self.issued_signatures = {}

    def minimum_for(self, model: str) -> int:
        if self.min_cacheable is not None:
            return self.min_cacheable
        return 4096 if "pro" in model else 1024

    # -- errors ----------------------------------------------------------------------

    def error_reply(
        self, status: int, message: str, *, kind: str = "", headers: Mapping[str, str] | None = None
    ) -> JSONReply:
        gstatus = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED",
            503: "UNAVAILABLE",
            504: "DEADLINE_EXCEEDED",
        }.get(status, "INTERNAL")
        body = {"error": {"code": status, "message": message, "status": gstatus}}
        return JSONReply(status, json.dumps(body).encode(), dict(headers or {}))

    def error_event(self, message: str) -> bytes:
        body = {"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}
        return b"data: " + json.dumps(body).encode() + b"\r\n\r\n"

    def garbage_event(self) -> bytes:
        return b'data: {"candidates": [{"content": {"parts": [{"text": "unterminated\r\n\r\n'

    def check_auth(self, headers: Mapping[str, str]) -> JSONReply | None:
        given = headers.get("x-goog-api-key", "")
        if given == self.api_key:
            return None
        if not given:
            return self.error_reply(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        # the real API does not echo the key; this one does, to test redaction
        return self.error_reply(
            400, f"API key not valid. Please pass a valid API key. (got {given})"
        )

    # -- validation --------------------------------------------------------------------

    def _sign(self, call: Mapping[str, Any]) -> bytes:
        canonical = json.dumps(
            [call.get("name"), call.get("args") or {}], sort_keys=True, separators=(",", ":")
        )
        return hmac.new(self._secret, canonical.encode(), hashlib.sha256).digest()

    def validate(self, method: str, path: str, body: Any) -> JSONReply | None:
        m = _PATH.match(path)
        if method != "POST" or m is None:
            return self.error_reply(404, f"The requested URL {path} was not found on this server.")
        if not isinstance(body, dict):
            return self.error_reply(400, "Invalid JSON payload received.")
        for key, value in body.items():
            name = _SNAKE.get(key, key)
            if name not in _FIELDS:
                return self.error_reply(
                    400, f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
                )
            try:
                _FIELDS[name].validate_python(value)
            except ValidationError as exc:
                e = exc.errors()[0]
                loc = ".".join(str(p) for p in e["loc"])
                return self.error_reply(
                    400, f"Invalid JSON payload received. {key}.{loc}: {e['msg']}"
                )
        problem = self._protocol_problem(m.group(2), body)
        if problem is not None:
            return self.error_reply(400, problem)
        return None

    def _protocol_problem(self, model: str, body: dict[str, Any]) -> str | None:
        contents = body.get("contents") or []
        if not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        for tool in body.get("tools") or []:
            for decl in _g(tool, "functionDeclarations") or []:
                if not _FUNCTION_NAME.match(decl.get("name") or ""):
                    return (
                        f"* GenerateContentRequest.tools[0].function_declarations: Invalid function "
                        f"name {decl.get('name')!r}. Must start with a letter or an underscore."
                    )
        thinking = _g(_g(body, "generationConfig") or {}, "thinkingConfig") or {}
        if _g(thinking, "thinkingBudget") is not None and _g(thinking, "thinkingLevel") is not None:
            return "You can only set one of thinking budget and thinking level."
        pending: list[dict[str, Any]] = []
        for i, content in enumerate(contents):
            role = content.get("role") or "user"
            parts = content.get("parts") or []
            if role not in ("user", "model"):
                return f"Please use a valid role: user, model. (contents[{i}])"
            if not parts:
                return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            calls = [_g(p, "functionCall") for p in parts if _g(p, "functionCall")]
            responses = [_g(p, "functionResponse") for p in parts if _g(p, "functionResponse")]
            if role == "model":
                if pending:
                    return (
                        f"contents[{i}]: Please ensure that function call turn comes immediately "
                        "after a user turn or after a function response turn."
                    )
                pending = calls
                continue
            if pending or responses:
                if len(responses) != len(pending):
                    return (
                        f"contents[{i}]: Please ensure that the number of function response parts "
                        "is equal to the number of function call parts of the function call turn."
                    )
                for call, resp in zip(pending, responses, strict=True):
                    if call.get("name") != resp.get("name") or (
                        call.get("id") and resp.get("id") and call["id"] != resp["id"]
                    ):
                        return (
                            f"contents[{i}]: function response {resp.get('name')!r} does not "
                            f"answer function call {call.get('name')!r}"
                        )
            pending = []
        if pending:
            return "the last function call turn has no function response turn after it"
        if model.startswith("gemini-3"):
            return self._signature_problem(contents)
        return None

    def _signature_problem(self, contents: list[dict[str, Any]]) -> str | None:
        for i in range(len(contents) - 1, -1, -1):
            content = contents[i]
            parts = content.get("parts") or []
            if (content.get("role") or "user") == "user":
                if any(not _g(p, "functionResponse") for p in parts):
                    return None  # the current turn starts here
                continue
            first = next((p for p in parts if _g(p, "functionCall")), None)
            if first is None:
                continue
            raw = _g(first, "thoughtSignature")
            signature = _b64(raw) if isinstance(raw, str) else b""
            if signature not in _PLACEHOLDERS and signature != self._sign(
                _g(first, "functionCall")
            ):
                return (
                    f"Function call is missing a thought_signature in functionCall parts "
                    f"(contents[{i}]). This is required for tools to work correctly."
                )
        return None

    def last_text(self, body: Any) -> str:
        if not isinstance(body, dict) or not body.get("contents"):
            return ""
        texts: list[str] = []
        for p in body["contents"][-1].get("parts") or []:
            if p.get("text"):
                texts.append(p["text"])
            resp = _g(p, "functionResponse")
            if resp:
                texts.append(json.dumps(resp.get("response") or {}))
        return "".join(texts)

    # -- responses ---------------------------------------------------------------------

    def _cache(self, model: str) -> FastPrefixCache:
        minimum = self.minimum_for(model)
        if minimum not in self._caches:
            self._caches[minimum] = FastPrefixCache(minimum=minimum, block=1)
        return self._caches[minimum]

    def render(self, path: str, body: Any, turn: Turn) -> Reply:
        m = _PATH.match(path)
        assert m is not None
        model, stream = m.group(2), m.group(3) == "streamGenerateContent"
        prompt = json.dumps(
            [_g(body, "systemInstruction"), body.get("tools") or [], body["contents"]],
            sort_keys=True,
            separators=(",", ":"),
        )
        prompt_tokens = approx_tokens(prompt)
        cached = self._cache(model).lookup_and_store(model, prompt)
        if turn.cached_tokens is not None:
            cached = turn.cached_tokens
        cached = min(cached, prompt_tokens)
        malformed = ""
        call_parts: list[types.Part] = []
        for i, c in enumerate(turn.tool_calls):
            args: Any = c.arguments
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    args = None
            if not isinstance(args, dict):
                malformed = f"Malformed function call: {c.name}({c.arguments_json()})"
                call_parts = []
                break
            fc = {"name": c.name, "args": dict(args)}
            call_id = c.call_id or f"call_{uuid.uuid4().hex[:16]}"
            signature = self._sign(fc) if i == 0 else None
            if signature is not None:
                with self._lock:
                    self.issued_signatures[call_id] = signature
            call_parts.append(
                types.Part(
                    function_call=types.FunctionCall(id=call_id, name=c.name, args=dict(args)),
                    thought_signature=signature,
                )
            )
        out_text = turn.text + "".join(c.name + c.arguments_json() for c in turn.tool_calls)
        candidates_tokens = approx_tokens(out_text)
        usage = types.GenerateContentResponseUsageMetadata(
            prompt_token_count=prompt_tokens,
            cached_content_token_count=cached or None,
            candidates_token_count=candidates_tokens,
            thoughts_token_count=turn.reasoning_tokens or None,
            total_token_count=prompt_tokens + candidates_tokens + turn.reasoning_tokens,
        )
        finish = (
            types.FinishReason.MALFORMED_FUNCTION_CALL
            if malformed
            else types.FinishReason(turn.finish_reason or "STOP")
        )
        response_id = uuid.uuid4().hex[:20]

        def chunk(parts: list[types.Part], last: bool = False) -> types.GenerateContentResponse:
            candidate = types.Candidate(
                content=types.Content(role="model", parts=parts or None),
                index=0,
                finish_reason=finish if last else None,
                finish_message=(malformed or None) if last else None,
            )
            return types.GenerateContentResponse(
                candidates=[candidate],
                usage_metadata=usage if last else None,
                model_version=model,
                response_id=response_id,
            )

        def dump(r: types.GenerateContentResponse) -> bytes:
            return json.dumps(r.model_dump(mode="json", by_alias=True, exclude_none=True)).encode()

        if not stream:
            parts = ([types.Part(text=turn.text)] if turn.text else []) + call_parts
            return JSONReply(200, dump(chunk(parts, last=True)))
        chunks = [chunk([types.Part(text=p)]) for p in _pieces(turn.text)] if turn.text else []
        chunks.append(chunk(call_parts, last=True))
        return StreamReply([b"data: " + dump(c) + b"\r\n\r\n" for c in chunks])
