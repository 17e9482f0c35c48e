"""What the SDK-backed provider clients share: :class:`ProviderClient` is the base of
:class:`~errands.models.providers.openai_chat.OpenAIChatModel`,
:class:`~errands.models.providers.openai_responses.OpenAIResponsesModel`,
:class:`~errands.models.providers.anthropic.AnthropicModel` and
:class:`~errands.models.providers.gemini.GeminiModel`. Each of those adds its wire format (the
request, the stream's accumulator, the reply) and its SDK's errors; this module holds
the plumbing that is the same for all:

* **Configuration** (:class:`ProviderAPI` names each provider's host and environment
  variables): ``base_url`` / ``api_key`` arguments, else the provider's environment
  variables. A custom ``base_url`` without a key gets a placeholder key (local servers
  and proxies ignore it); the official API without a key is refused before any request,
  with what to set.
* **The SDK client**: made by the subclass's :meth:`ProviderClient._new_sdk`, one per
  running event loop (its connection pool belongs to one loop), closed by
  :meth:`ProviderClient.aclose`.
* **Errors**: the :class:`~errands.models.protocol.ModelError` s every client raises in
  the same words -- timeouts, connection failures, streams cut short, garbage, HTTP
  statuses (:class:`HTTPStatusError`: 408/409/429/5xx are retryable) -- never with the
  API key or a bearer token in them, however the server echoed it.
* **Streams**: :meth:`ProviderClient._read_stream` opens an SDK stream, feeds its items to
  an accumulator, passes the text on and closes the stream however it ends;
  :func:`tool_call` and :func:`token_count` read what accumulators collected.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import re
import weakref
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict
from urllib.parse import urlsplit

from errands.core.events import ToolCall
from errands.install import extra_hint
from errands.models.protocol import ModelError, TextSink

__all__ = [
    "PLACEHOLDER_KEY",
    "ClientOptions",
    "HTTPStatusError",
    "ProviderAPI",
    "ProviderClient",
    "StreamGarbage",
    "check_reasoning_level",
    "error_fields",
    "retryable_status",
    "sdk_missing",
    "token_count",
    "tool_call",
]

PLACEHOLDER_KEY = "not-needed"  # sent to a custom base_url when no key is configured
_RETRYABLE_STATUS = frozenset({408, 409, 429})


def retryable_status(status: int) -> bool:
    """Whether trying again may help after HTTP *status*: 408, 409, 429 and 5xx."""
    return status in _RETRYABLE_STATUS or status >= 500


@dataclass(frozen=True, slots=True)
class ProviderAPI:
    """Where a provider's API is, where its configuration comes from, what its keys
    look like."""

    host: str  # the official API's host name
    url: str  # the official API's base URL, as error messages name it
    base_url_env: str  # the environment variable with another base URL
    key_envs: tuple[str, ...]  # the environment variables with the key: the first set wins
    key_pattern: str  # a regular expression for the provider's keys, also partly masked ones
    key_mask: str  # what a key matched by key_pattern becomes in error messages
    no_key_help: str  # the error when the official API has no key: what to set


class ClientOptions(TypedDict, total=False):
    """How a :class:`ProviderClient` connects (its keyword arguments but ``name``), for
    the ``**options`` of a subclass that adds settings of its own."""

    base_url: str | None
    api_key: str | None
    timeout: float
    max_retries: int


class HTTPStatusError(ModelError):
    """A :class:`ModelError` for an HTTP error status: 408/409/429/5xx are retryable."""

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(
            message,
            retryable=retryable_status(status),
            retry_after=retry_after,  # seconds, from a retry-after(-ms) header
        )
        self.status = status


class StreamGarbage(Exception):
    """The server sent something that is not a valid item of its API's stream."""


def sdk_missing(package: str, extra: str) -> ModelError:
    """The error for a provider SDK that is not installed."""
    return ModelError(f"the {package} package is not installed: {extra_hint(extra)}")


def check_reasoning_level(level: str, known: Collection[str]) -> None:
    """Refuse a ``ModelRequest.reasoning`` level the provider has no setting for."""
    if level not in known:
        raise ModelError(f"unknown reasoning level {level!r}: use one of " + ", ".join(known))


def error_fields(body: object) -> dict[str, str]:
    """The string fields of an error body ``{"error": {...}}`` (or a bare ``{...}``):
    ``message``, ``type``, ``param``, ... -- whatever the server put there."""
    err = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return {}
    return {k: v for k, v in err.items() if isinstance(k, str) and isinstance(v, str)}


def tool_call(call_id: str, name: str, raw: str) -> ToolCall:
    """A tool call whose arguments came as JSON text: parsed when they are a JSON object
    (empty text is ``{}``), else kept in ``raw_arguments`` for the tool result to say
    what was wrong."""
    parsed: Any
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):  # (nested deeper than the parser goes)
        parsed = None
    if isinstance(parsed, dict):
        return ToolCall(call_id=call_id, name=name, arguments=parsed)
    return ToolCall(call_id=call_id, name=name, arguments={}, raw_arguments=raw)


def token_count(usage: Any, name: str) -> int:
    """The token count *name* of an SDK usage object, 0 when it (or the object) is
    missing or not an int: servers leave fields out or send null."""
    value = getattr(usage, name, None)
    return value if isinstance(value, int) else 0


class ProviderClient(abc.ABC):
    """Base of the clients that reach a provider through its SDK. A subclass sets
    :attr:`kind` and :attr:`api`, makes the SDK client in :meth:`_new_sdk` (and closes
    it in :meth:`_close_sdk` when ``close()`` is not the way), and implements
    ``complete``.

    *name* is the client's model spec (default ``KIND:MODEL``), which error messages and
    replay state carry; *timeout* is in seconds; *max_retries* are the SDK's own
    retries (:func:`~errands.models.spec.resolve_model` sets 0). The error builders
    (``_timed_out``, ``_garbage``, ...) redact an exception they are given; text given
    as ``str`` is shown as it is, so redact it first."""

    kind: ClassVar[str]  # the client kind, as in specs (``KIND:MODEL``) and replay state
    api: ClassVar[ProviderAPI]

    def __init__(
        self,
        model_name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
        name: str | None = None,
    ) -> None:
        self.model_name = model_name
        self.name = name or f"{self.kind}:{model_name}"
        self.base_url = (base_url or os.environ.get(self.api.base_url_env) or "").strip() or None
        if api_key is None:
            api_key = next(filter(None, (os.environ.get(e) for e in self.api.key_envs)), None)
        key = (api_key or "").strip()
        self.official = self.base_url is None or urlsplit(self.base_url).hostname == self.api.host
        self._api_key: str | None = key or (None if self.official else PLACEHOLDER_KEY)
        self.timeout = timeout
        self.max_retries = max_retries
        self._sdk: Any = None
        self._sdk_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.model_name!r}, base_url={self.base_url!r})"

    @property
    def _where(self) -> str:
        return self.base_url or self.api.url

    # -- the SDK client ------------------------------------------------------------------

    @abc.abstractmethod
    def _new_sdk(self) -> Any:
        """A new SDK client for this client's settings."""

    async def _close_sdk(self, sdk: Any) -> None:
        await sdk.close()

    def _client(self) -> Any:
        """The SDK client, one per event loop (its connection pool belongs to one)."""
        loop = asyncio.get_running_loop()
        if self._sdk is None or self._sdk_loop is None or self._sdk_loop() is not loop:
            self._sdk = self._new_sdk()
            self._sdk_loop = weakref.ref(loop)
        return self._sdk

    async def aclose(self) -> None:
        if self._sdk is not None:
            await self._close_sdk(self._sdk)
            self._sdk = None

    def key_problem(self) -> str | None:
        """What is wrong with the key before any call (None: nothing known)."""
        return None if self._api_key is not None else f"{self.name}: {self.api.no_key_help}"

    def _require_key(self) -> None:
        problem = self.key_problem()
        if problem is not None:
            raise ModelError(problem)

    # -- the stream ----------------------------------------------------------------------

    async def _read_stream(
        self,
        open_stream: Callable[[], Awaitable[Any]],
        feed: Callable[[Any], str],
        on_text: TextSink | None,
        *,
        errors: tuple[type[Exception], ...],
        translate: Callable[[Exception], BaseException],
        not_valid: str,
        limit: int | None = 300,
    ) -> None:
        """Open an SDK stream and give each item to *feed*, passing the text it returns
        to *on_text*; the stream is closed however this ends. An exception of a type in
        *errors* while opening or reading is raised as ``translate(exc)``; an item *feed*
        cannot take (it reads SDK objects the SDK did not validate, so
        :class:`StreamGarbage`, ``AttributeError``, ``TypeError`` or ``ValueError``) is
        an error saying the server sent *not_valid*."""
        try:
            stream = await open_stream()
        except errors as exc:
            raise translate(exc) from None
        try:
            iterator = stream.__aiter__()
            while True:
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except errors as exc:
                    raise translate(exc) from None
                try:
                    text = feed(item)
                except (StreamGarbage, AttributeError, TypeError, ValueError) as exc:
                    raise self._garbage(not_valid, exc, limit) from None
                if text and on_text is not None:
                    on_text(text)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    # -- errors --------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        """*text* without the API key (however the server echoed it) or bearer tokens."""
        key = self._api_key or ""
        if key and key != PLACEHOLDER_KEY:
            text = text.replace(key, "[redacted]")
        text = re.sub(r"Bearer\s+\S+", "Bearer [redacted]", text)
        # partial echoes such as "sk-proj-****abcd": nothing after the prefix is useful
        return re.sub(self.api.key_pattern, self.api.key_mask, text)

    def _timed_out(self) -> ModelError:
        return ModelError(
            f"{self.name}: timed out after {self.timeout:g}s waiting for {self._where}",
            retryable=True,
        )

    def _connection_failed(
        self, cause: BaseException, *, mid_stream: bool, limit: int | None = None
    ) -> ModelError:
        what = (
            "the connection broke in the middle of the stream"
            if mid_stream
            else "cannot connect to"
        )
        detail = self._redact(str(cause))[:limit]
        return ModelError(f"{self.name}: {what} {self._where}: {detail}", retryable=True)

    def _mid_stream_error(self, detail: str, *, retryable: bool = True) -> ModelError:
        """An error the server reported inside a stream it had started (*detail* redacted)."""
        return ModelError(
            f"{self.name}: {self._where} reported an error mid-stream: {detail}",
            retryable=retryable,
        )

    def _cut_short(self, missing: str) -> ModelError:
        """The stream ended without its *missing* end marker."""
        return ModelError(
            f"{self.name}: the stream from {self._where} ended before the reply was "
            f"finished (no {missing})",
            retryable=True,
        )

    def _garbage(self, what: str, exc: Exception, limit: int | None = 300) -> ModelError:
        return ModelError(
            f"{self.name}: {self._where} sent {what}: {self._redact(str(exc))[:limit]}"
        )

    def _invalid_json(self, exc: Exception, expected: str, limit: int | None = 200) -> ModelError:
        return ModelError(
            f"{self.name}: {self._where} sent invalid JSON in its stream "
            f"({self._redact(str(exc))[:limit]}); is it {expected}?"
        )

    def _status_message(self, status: int, detail: str, hint: str) -> str:
        """An HTTP error's message (*detail* redacted, *hint* from :meth:`_status_hint`)."""
        return f"{self.name}: HTTP {status} from {self._where}: {detail}{hint}"

    def _status_hint(self, status: int, retry_after: float | None, not_found: str) -> str:
        """What an HTTP error suggests: checking the key (401), *not_found* (404), or
        how long to wait (429)."""
        if status == 401:
            return f" (check {self.api.key_envs[0]})"
        if status == 404:
            return f" ({not_found})"
        if status == 429 and retry_after is not None:
            return f" (retry after {retry_after:g}s)"
        return ""
