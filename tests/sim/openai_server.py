"""A wire-protocol simulator of OpenAI Chat Completions (``POST /v1/chat/completions``).

Requests are checked against the ``openai`` SDK's own request TypedDicts
(``CompletionCreateParamsStreaming`` / ``...NonStreaming``) with pydantic, strictly:
unknown keys at any level are rejected, as the real API does. On top of the types it
enforces the protocol rules the types cannot express (a tool message must answer a
preceding assistant tool call and every tool call must be answered; function names
match ``^[a-zA-Z0-9_-]{1,64}$``; ``stream_options`` needs ``stream: true``). A bad
request gets HTTP 400 with OpenAI's error body.

Responses are built with the SDK's own models (``ChatCompletion``,
``ChatCompletionChunk``, ``CompletionUsage``) and serialised with ``model_dump_json``;
streams are SSE ``data: ...`` frames ending with ``data: [DONE]``, the usage chunk
only when ``stream_options.include_usage`` is set.

Auth: ``Authorization: Bearer <api_key>``, else 401 -- and the 401 message echoes the
key it was given verbatim, so tests can check that clients redact it.

Usage: ``prompt_tokens`` = ceil(chars / 4) of the canonical JSON of tools + messages;
``cached_tokens`` from :class:`~sim.core.PrefixCache` (or the turn's override);
``completion_tokens`` = ceil(chars / 4) of the reply text and tool calls, plus the
turn's ``reasoning_tokens``.

Run it by hand: ``python -m sim.openai_server`` from ``tests/`` (prints the base URL).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from openai.types.completion_usage import (
    CompletionTokensDetails,
    CompletionUsage,
    PromptTokensDetails,
)
from pydantic import TypeAdapter, ValidationError

from .core import JSONReply, Reply, SimServer, StreamReply, Turn, approx_tokens, unknown_keys

__all__ = ["OpenAIChatSim"]

_STREAMING: TypeAdapter[Any] = TypeAdapter(CompletionCreateParamsStreaming)
_NON_STREAMING: TypeAdapter[Any] = TypeAdapter(CompletionCreateParamsNonStreaming)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_PIECE = 12  # characters per streamed text / arguments delta


class _Invalid(Exception):
    pass


def _describe(exc: ValidationError, path: str) -> str:
    parts = []
    for e in exc.errors()[:4]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{path}{'.' if path and loc else ''}{loc}: {e['msg']}")
    return "; ".join(parts)


def _materialise(value: Any, path: str = "") -> Any:
    """pydantic validates ``Iterable[...]`` fields lazily: walk them so they are
    validated, reporting errors with their full path."""
    if isinstance(value, dict):
        return {k: _materialise(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_materialise(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Iterator):
        try:
            items = list(value)
        except ValidationError as exc:
            raise _Invalid(_describe(exc, path)) from None
        return [_materialise(v, f"{path}[{i}]") for i, v in enumerate(items)]
    return value


def _pieces(text: str, size: int = _PIECE) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class OpenAIChatSim(SimServer):
    """The OpenAI Chat Completions simulator. ``base_url`` ends in ``/v1``, as
    ``OPENAI_BASE_URL`` expects."""

    provider = "openai"

    def __init__(self, *, api_key: str = "sk-sim-0123456789abcdef", port: int = 0) -> None:
        super().__init__(api_key=api_key, port=port)
        self.unsupported_params: set[str] = set()

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point an OpenAI client at this simulator."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key}

    def unsupported(self, *params: str) -> None:
        """Reject requests that carry these top-level params the way OpenAI rejects
        ``max_tokens`` for reasoning models (400, ``code: unsupported_parameter``)."""
        self.unsupported_params.update(params)

    # -- hooks ---------------------------------------------------------------------

    def error_reply(
        self, status: int, message: str, *, kind: str = "", headers: Mapping[str, str] | None = None
    ) -> JSONReply:
        return self._error(status, message, kind=kind, headers=headers)

    def _error(
        self,
        status: int,
        message: str,
        *,
        kind: str = "",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JSONReply:
        etype = kind or {
            400: "invalid_request_error",
            401: "invalid_request_error",
            404: "invalid_request_error",
            429: "rate_limit_exceeded",
        }.get(status, "server_error")
        body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
        return JSONReply(status, json.dumps(body).encode(), dict(headers or {}))

    def check_auth(self, headers: Mapping[str, str]) -> JSONReply | None:
        auth = headers.get("authorization", "")
        if auth == f"Bearer {self.api_key}":
            return None
        given = auth.removeprefix("Bearer ").strip()
        if not given:
            msg = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth."
        else:
            # deliberately echoes the key (some servers do): clients must redact it
            msg = (
                f"Incorrect API key provided: {given}. You can find your API key at your provider."
            )
        return self._error(401, msg, code="invalid_api_key")

    def validate(self, method: str, path: str, body: Any) -> JSONReply | None:
        if method == "GET" and path == "/v1/models":
            return None
        if method != "POST" or path != "/v1/chat/completions":
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
            CompletionCreateParamsStreaming if streaming else CompletionCreateParamsNonStreaming,
            body,
        )
        if unknown:
            return self._error(
                400,
                f"Unrecognized request argument supplied: {', '.join(unknown)}",
                param=unknown[0],
            )
        for param in sorted(self.unsupported_params & body.keys()):
            return self._error(
                400,
                f"Unsupported parameter: '{param}' is not supported with this model.",
                param=param,
                code="unsupported_parameter",
            )
        if body.get("stream_options") is not None and not streaming:
            return self._error(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        problem = self._protocol_problem(body)
        if problem is not None:
            return self._error(400, problem, param="messages")
        return None

    @staticmethod
    def _protocol_problem(body: dict[str, Any]) -> str | None:
        for i, tool in enumerate(body.get("tools") or []):
            name = (
                tool.get("function", {}).get("name", "") if tool.get("type") == "function" else ""
            )
            if tool.get("type") == "function" and not _TOOL_NAME.match(name):
                return f"tools[{i}].function.name {name!r} does not match '^[a-zA-Z0-9_-]{{1,64}}$'"
            params = tool.get("function", {}).get("parameters")
            if params is not None and params.get("type") != "object":
                return f"tools[{i}].function.parameters must be a JSON schema of type 'object'"
        messages = body["messages"]
        if not messages:
            return "messages must not be empty"
        open_calls: set[str] = set()
        for i, msg in enumerate(messages):
            role = msg["role"]
            if role == "tool":
                if msg["tool_call_id"] not in open_calls:
                    return (
                        f"Invalid parameter: messages[{i}] with role 'tool' must be a response "
                        "to a preceeding message with 'tool_calls'."
                    )
                open_calls.discard(msg["tool_call_id"])
                continue
            if open_calls:
                return (
                    "An assistant message with 'tool_calls' must be followed by tool messages "
                    f"responding to each 'tool_call_id'. Missing: {sorted(open_calls)} "
                    f"(before messages[{i}])"
                )
            if role == "assistant":
                for call in msg.get("tool_calls") or []:
                    open_calls.add(call["id"])
        if open_calls:
            return f"tool calls without a tool message: {sorted(open_calls)}"
        return None

    def last_text(self, body: Any) -> str:
        if not isinstance(body, dict) or not body.get("messages"):
            return ""
        return _content_text(body["messages"][-1].get("content"))

    # -- responses -----------------------------------------------------------------

    def _usage(self, body: dict[str, Any], turn: Turn) -> CompletionUsage:
        prompt = json.dumps(
            [body.get("tools") or [], body["messages"]], sort_keys=True, separators=(",", ":")
        )
        prompt_tokens = approx_tokens(prompt)
        cached = self.cache.lookup_and_store(str(body["model"]), prompt)
        if turn.cached_tokens is not None:
            cached = turn.cached_tokens
        out_text = turn.text + "".join(c.name + c.arguments_json() for c in turn.tool_calls)
        completion = approx_tokens(out_text) + turn.reasoning_tokens
        return CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=min(cached, prompt_tokens)),
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=turn.reasoning_tokens
            ),
        )

    @staticmethod
    def _finish(turn: Turn) -> Any:
        return turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")

    def fixed_reply(self, method: str, path: str) -> Reply | None:
        if method == "GET" and path == "/v1/models":
            return JSONReply(200, json.dumps({"object": "list", "data": []}).encode())
        return None

    def render(self, path: str, body: Any, turn: Turn) -> Reply:
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = str(body["model"])
        usage = self._usage(body, turn)
        call_ids = [c.call_id or f"call_{uuid.uuid4().hex[:24]}" for c in turn.tool_calls]
        if body.get("stream") is not True:
            message = ChatCompletionMessage(
                role="assistant",
                content=turn.text or None,
                tool_calls=[
                    ChatCompletionMessageFunctionToolCall(
                        id=cid,
                        type="function",
                        function=Function(name=c.name, arguments=c.arguments_json()),
                    )
                    for cid, c in zip(call_ids, turn.tool_calls, strict=True)
                ]
                or None,
            )
            completion = ChatCompletion(
                id=completion_id,
                object="chat.completion",
                created=created,
                model=model,
                choices=[Choice(index=0, message=message, finish_reason=self._finish(turn))],
                usage=usage,
            )
            return JSONReply(200, completion.model_dump_json(exclude_unset=True).encode())

        def chunk(
            delta: ChoiceDelta | None, finish: Any = None, u: CompletionUsage | None = None
        ) -> bytes:
            choices = (
                [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
            )
            extra: dict[str, Any] = {} if u is None else {"usage": u}
            c = ChatCompletionChunk(
                id=completion_id,
                object="chat.completion.chunk",
                created=created,
                model=model,
                choices=choices,
                **extra,
            )
            return b"data: " + c.model_dump_json(exclude_unset=True).encode() + b"\n\n"

        events = [chunk(ChoiceDelta(role="assistant", content=""))]
        if turn.text:
            events += [chunk(ChoiceDelta(content=p)) for p in _pieces(turn.text)]
        for index, (cid, c) in enumerate(zip(call_ids, turn.tool_calls, strict=True)):
            events.append(
                chunk(
                    ChoiceDelta(
                        tool_calls=[
                            ChoiceDeltaToolCall(
                                index=index,
                                id=cid,
                                type="function",
                                function=ChoiceDeltaToolCallFunction(name=c.name, arguments=""),
                            )
                        ]
                    )
                )
            )
            args = c.arguments_json()
            if args:
                events += [
                    chunk(
                        ChoiceDelta(
                            tool_calls=[
                                ChoiceDeltaToolCall(
                                    index=index, function=ChoiceDeltaToolCallFunction(arguments=p)
                                )
                            ]
                        )
                    )
                    for p in _pieces(args)
                ]
        events.append(chunk(ChoiceDelta(), finish=self._finish(turn)))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk(None, u=usage))
        events.append(b"data: [DONE]\n\n")
        return StreamReply(events)

    def error_event(self, message: str) -> bytes:
        err = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return b"data: " + json.dumps(err).encode() + b"\n\n"


def main() -> None:  # pragma: no cover - manual use
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="sk-sim-0123456789abcdef")
    parser.add_argument("--reply", default="Hello from the simulator.")
    args = parser.parse_args()
    sim = OpenAIChatSim(api_key=args.api_key, port=args.port)
    sim.script(default=args.reply)
    sim.start()
    print(f"OPENAI_BASE_URL={sim.base_url} OPENAI_API_KEY={sim.api_key}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sim.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
