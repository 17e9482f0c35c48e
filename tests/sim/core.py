"""Provider-neutral machinery of the wire-protocol simulators.

A simulator is a real HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer`` in a
daemon thread), so clients are exercised through their real SDKs, sockets and SSE
parsing. This module owns what every provider simulator shares:

* the **script**: a queue of :class:`Turn` s (text and/or :class:`SimToolCall` s). Each
  request consumes the first turn whose ``when`` matches (``when=None`` matches
  anything; otherwise the last message's text must contain it), so tests with
  concurrent errands can route replies by content;
* **faults** (:class:`Fault`): queued, each applied to the next ``times`` requests that
  pass authentication and validation (see :data:`FaultKind`);
* the **record** of every request received (:class:`RecordedRequest`), including
  rejected ones, with the status the simulator answered;
* approximate token counting (:func:`approx_tokens`: ``ceil(chars / 4)``) and an
  emulation of provider prefix caching (:class:`PrefixCache`);
* optional **rate-limit enforcement** (:class:`SimLimits`, off unless
  :meth:`SimServer.enforce_limits` is called): a sliding window of requests and input
  tokens; a request over the limit gets 429 with ``retry-after`` / ``retry-after-ms``.

A provider subclass implements :meth:`SimServer.check_auth`, :meth:`SimServer.validate`,
:meth:`SimServer.render` and the error/garbage formats of its wire protocol, building
bodies with the provider SDK's own types.
"""

from __future__ import annotations

import collections.abc
import functools
import json
import math
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    Self,
    Union,
    get_args,
    get_origin,
)

from typing_extensions import ReadOnly, get_type_hints, is_typeddict

__all__ = [
    "Fault",
    "FaultKind",
    "JSONReply",
    "PrefixCache",
    "RecordedRequest",
    "Reply",
    "SimLimits",
    "SimServer",
    "SimToolCall",
    "StreamReply",
    "Turn",
    "approx_tokens",
    "call",
    "unknown_keys",
]

FaultKind = Literal[
    "server_error",  # HTTP `status` (default 500) with the provider's error body
    "rate_limit",  # HTTP 429 with `retry-after` / `retry-after-ms` headers
    "malformed_json",  # 200, but one SSE event (or the JSON body) is not valid JSON
    "truncated_stream",  # 200, the connection closes in the middle of the body
    "stream_ends_early",  # 200, the body ends cleanly halfway: no finish, no [DONE]
    "stream_error",  # 200, an error object arrives in the middle of the stream
    "hang",  # nothing is sent for `seconds` (released early by stop())
    "trickle",  # 200, half the stream, then an SSE comment every `interval` s for `seconds`
]


def approx_tokens(text: str) -> int:
    """The simulators' token count: one token per four characters, rounded up."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True, slots=True)
class SimToolCall:
    """A scripted tool call. ``arguments`` given as a str is sent verbatim (so it can be
    invalid JSON); a dict is serialised with ``json.dumps``."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments))


def call(
    name: str, arguments: Mapping[str, Any] | str | None = None, *, call_id: str | None = None
) -> SimToolCall:
    """Shorthand for :class:`SimToolCall`."""
    return SimToolCall(name, {} if arguments is None else arguments, call_id)


@dataclass(frozen=True, slots=True)
class Turn:
    """One scripted model reply."""

    text: str = ""
    tool_calls: tuple[SimToolCall, ...] = ()
    when: str | None = None  # only for a request whose last message contains this
    cached_tokens: int | None = None  # None: emulate prefix caching (PrefixCache)
    reasoning_tokens: int = 0  # added to the output tokens, as providers count them
    # Anthropic with thinking on: also a redacted_thinking block after the thinking one
    redacted_thinking: bool = False
    finish_reason: str | None = None  # None: the natural one (tool calls or stop)

    def matches(self, last_text: str) -> bool:
        return self.when is None or self.when in last_text


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    status: int = 500  # server_error only
    retry_after: float = 1.0  # rate_limit only; seconds
    seconds: float = 30.0  # hang, trickle
    message: str = "simulated failure"
    times: int = 1
    interval: float = 2.0  # trickle: seconds between keep-alive comments


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body, or None if it was not JSON
    raw: bytes
    status: int  # what the simulator answered (200 for a stream, even a faulty one)
    fault: FaultKind | None = None
    response: bytes = b""  # the body of a JSON reply (streams are not kept)


@dataclass(slots=True)
class JSONReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    truncate: bool = False  # send half of the body, then close


@dataclass(slots=True)
class StreamReply:
    """An SSE response: ``events`` are complete SSE frames (``b"data: ...\\n\\n"``)."""

    events: list[bytes]
    truncate_after: int | None = None  # send this many events and half the next, then close
    # (after, seconds, interval): after this many events, keep-alive comments for a while
    trickle: tuple[int, float, float] | None = None


Reply = JSONReply | StreamReply


class PrefixCache:
    """Emulates provider prompt caching: the cached part of a prompt is its longest
    common prefix with an earlier prompt of the same model, counted in tokens, rounded
    down to ``block`` tokens and zero below ``minimum`` (OpenAI: 1024 / 128)."""

    def __init__(self, *, minimum: int = 1024, block: int = 128) -> None:
        self.minimum = minimum
        self.block = block
        self._seen: dict[str, list[str]] = {}

    def lookup_and_store(self, model: str, prompt: str) -> int:
        best = 0
        seen = self._seen.setdefault(model, [])
        for earlier in seen:
            n = 0
            limit = min(len(earlier), len(prompt))
            while n < limit and earlier[n] == prompt[n]:
                n += 1
            best = max(best, n)
        seen.append(prompt)
        tokens = best // 4
        if tokens < self.minimum:
            return 0
        return tokens - tokens % self.block


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    sim: SimServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_POST(self) -> None:
        self.server.sim._handle(self)

    def do_GET(self) -> None:
        self.server.sim._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the record is in SimServer.requests


class SimServer:
    """Base class of the provider simulators. Use as a context manager or call
    :meth:`start` / :meth:`stop`."""

    provider = "sim"

    def __init__(self, *, api_key: str = "sk-sim-0123456789abcdef", port: int = 0) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._turns: list[Turn] = []
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.default_turn: Turn | None = None  # served when no scripted turn matches
        self.cache = PrefixCache()
        self.limiter: SlidingWindowLimiter | None = None  # see enforce_limits()
        self.latency = 0.0  # seconds every answer waits (calls overlap: one thread each)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        httpd = _HTTPServer(("127.0.0.1", self._port), _Handler)
        httpd.sim = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hung handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        assert self._httpd is not None, "simulator not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        return self.origin

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point the provider's client at this simulator."""
        raise NotImplementedError

    # -- scripting -------------------------------------------------------------------

    def script(self, *turns: Turn | str, default: Turn | str | None = None) -> None:
        """Append turns to the script (a str is a text-only turn). ``default`` is served
        when no scripted turn matches; without one such a request gets HTTP 400."""
        with self._lock:
            self._turns.extend(Turn(text=t) if isinstance(t, str) else t for t in turns)
            if default is not None:
                self.default_turn = Turn(text=default) if isinstance(default, str) else default

    def fault(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        status: int = 500,
        retry_after: float = 1.0,
        seconds: float = 30.0,
        message: str = "simulated failure",
        interval: float = 2.0,
    ) -> None:
        """Queue a fault for the next ``times`` valid, authenticated requests."""
        f = Fault(kind, status, retry_after, seconds, message, times, interval)
        with self._lock:
            self._faults.append(f)

    def reset(self) -> None:
        with self._lock:
            self._turns.clear()
            self._faults.clear()
            self._requests.clear()
            self.default_turn = None
            self.cache = PrefixCache()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy), rejected ones included."""
        with self._lock:
            return list(self._requests)

    @property
    def pending_turns(self) -> list[Turn]:
        with self._lock:
            return list(self._turns)

    # -- optional rate-limit enforcement (off unless enforce_limits is called) -------

    def enforce_limits(self, limits: SimLimits | None) -> SlidingWindowLimiter | None:
        """Enforce *limits* from now on (None: stop); returns the limiter, whose
        ``admitted`` / ``rejected`` logs say what happened."""
        self.limiter = None if limits is None else SlidingWindowLimiter(limits)
        return self.limiter

    def _limit_reply(self, wait: float) -> JSONReply:
        wait = max(wait, 0.001)
        headers = {
            "retry-after": str(math.ceil(wait)),
            "retry-after-ms": str(math.ceil(wait * 1000)),
        }
        return self.error_reply(
            429, "Rate limit reached (simulated limits)", kind="rate_limit", headers=headers
        )

    # -- provider hooks --------------------------------------------------------------

    def check_auth(self, headers: Mapping[str, str]) -> JSONReply | None:
        raise NotImplementedError

    def validate(self, method: str, path: str, body: Any) -> JSONReply | None:
        raise NotImplementedError

    def fixed_reply(self, method: str, path: str) -> Reply | None:
        """The answer to a request that needs no turn (e.g. a model list), if any."""
        return None

    def last_text(self, body: Any) -> str:
        """The text of the request's last message (for ``Turn.when``)."""
        raise NotImplementedError

    def render(self, path: str, body: Any, turn: Turn) -> Reply:
        raise NotImplementedError

    def error_reply(
        self, status: int, message: str, *, kind: str = "", headers: Mapping[str, str] | None = None
    ) -> JSONReply:
        raise NotImplementedError

    def garbage_event(self) -> bytes:
        """An SSE frame whose data is not valid JSON."""
        return b'data: {"id": "broken", "choices": [{"delta": {"content": "unterminated\n\n'

    def error_event(self, message: str) -> bytes:
        raise NotImplementedError

    # -- request handling ------------------------------------------------------------

    def _take_fault(self) -> Fault | None:
        with self._lock:
            if not self._faults:
                return None
            f = self._faults[0]
            if f.times <= 1:
                self._faults.pop(0)
            else:
                self._faults[0] = Fault(
                    f.kind, f.status, f.retry_after, f.seconds, f.message, f.times - 1
                )
            return f

    def _take_turn(self, last_text: str, *, consume: bool) -> Turn | None:
        with self._lock:
            for i, turn in enumerate(self._turns):
                if turn.matches(last_text):
                    if consume:
                        del self._turns[i]
                    return turn
            return self.default_turn

    def _respond(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[Reply, Any, FaultKind | None]:
        denied = self.check_auth(headers)
        if denied is not None:
            return denied, None, None
        body: Any = None
        if method == "POST":
            try:
                body = json.loads(raw)
            except ValueError:
                return self.error_reply(400, "the request body is not valid JSON"), None, None
        invalid = self.validate(method, path, body)
        if invalid is not None:
            return invalid, body, None
        fixed = self.fixed_reply(method, path)
        if fixed is not None:
            return fixed, body, None
        if self.limiter is not None:
            over = self.limiter.admit(body)
            if over is not None:
                return self._limit_reply(over), body, "rate_limit"
        if self.latency:
            self._stopping.wait(self.latency)
        fault = self._take_fault()
        if fault is not None:
            if fault.kind == "hang":
                self._stopping.wait(fault.seconds)
                return self.error_reply(504, "simulator hang ended"), body, fault.kind
            if fault.kind == "server_error":
                return (
                    self.error_reply(fault.status, fault.message, kind="server_error"),
                    body,
                    fault.kind,
                )
            if fault.kind == "rate_limit":
                hdrs = {
                    "retry-after": str(math.ceil(fault.retry_after)),
                    "retry-after-ms": str(int(fault.retry_after * 1000)),
                }
                return (
                    self.error_reply(
                        429, "Rate limit reached (simulated)", kind="rate_limit", headers=hdrs
                    ),
                    body,
                    fault.kind,
                )
        last = self.last_text(body)
        # a faulty partial answer does not use up the turn: the retry gets it whole
        turn = self._take_turn(last, consume=fault is None)
        if turn is None:
            return (
                self.error_reply(
                    400, f"{self.provider} simulator: no scripted turn matches {last[:80]!r}"
                ),
                body,
                None,
            )
        reply = self.render(path, body, turn)
        if fault is not None:
            reply = self._apply_fault(reply, fault)
        return reply, body, (fault.kind if fault else None)

    def _apply_fault(self, reply: Reply, fault: Fault) -> Reply:
        if isinstance(reply, JSONReply):
            if fault.kind == "malformed_json":
                reply.body = reply.body[: len(reply.body) // 2]  # cut: not valid JSON
            elif fault.kind == "truncated_stream":
                reply.truncate = True
            return reply
        middle = max(1, len(reply.events) // 2)
        if fault.kind == "malformed_json":
            reply.events.insert(middle, self.garbage_event())
        elif fault.kind == "truncated_stream":
            reply.truncate_after = middle
        elif fault.kind == "stream_ends_early":
            reply.events = reply.events[:middle]
        elif fault.kind == "stream_error":
            reply.events = [*reply.events[:middle], self.error_event(fault.message)]
        elif fault.kind == "trickle":
            reply.trickle = (middle, fault.seconds, fault.interval)
        return reply

    def _handle(self, h: _Handler) -> None:
        if self._stopping.is_set():  # stopped: a pooled keep-alive connection gets no answer
            h.close_connection = True
            return
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        path = h.path.split("?", 1)[0]
        try:
            reply, body, fault = self._respond(h.command, path, headers, raw)
        except Exception as exc:  # a simulator bug: answer loudly, never hang the client
            reply, body, fault = self.error_reply(500, f"simulator crashed: {exc!r}"), None, None
        status, response = (
            (reply.status, reply.body) if isinstance(reply, JSONReply) else (200, b"")
        )
        with self._lock:
            self._requests.append(
                RecordedRequest(h.command, path, headers, body, raw, status, fault, response)
            )
        try:
            if isinstance(reply, JSONReply):
                self._write_json(h, reply)
            else:
                self._write_stream(h, reply)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client went away (e.g. it timed out)

    @staticmethod
    def _write_json(h: _Handler, reply: JSONReply) -> None:
        h.send_response(reply.status)
        h.send_header("content-type", reply.content_type)
        h.send_header("content-length", str(len(reply.body)))
        for k, v in reply.headers.items():
            h.send_header(k, v)
        if reply.truncate:
            h.send_header("connection", "close")
            h.end_headers()
            h.wfile.write(reply.body[: len(reply.body) // 2])
            h.close_connection = True
            return
        h.end_headers()
        h.wfile.write(reply.body)

    def _write_stream(self, h: _Handler, reply: StreamReply) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("cache-control", "no-cache")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()

        def chunk(data: bytes) -> None:
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        for i, event in enumerate(reply.events):
            if reply.trickle is not None and i == reply.trickle[0]:
                _, seconds, interval = reply.trickle
                end = time.monotonic() + seconds
                while time.monotonic() < end and not self._stopping.wait(interval):
                    chunk(b": keep-alive\n\n")  # a comment: resets a read timeout
            if reply.truncate_after is not None and i >= reply.truncate_after:
                # half an event in a chunk that promises more bytes, then hang up
                part = event[: len(event) // 2]
                h.wfile.write(f"{len(event):x}\r\n".encode() + part)
                h.wfile.flush()
                h.close_connection = True
                return
            chunk(event)
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


# -- optional rate-limit enforcement ---------------------------------------------------
# Off by default. bench/ratelimit_bench.py and tests/test_reliability.py switch it on to
# check that errands' rate limiter keeps under a provider's limits.


def _body_tokens(body: Any) -> int:
    return approx_tokens(json.dumps(body, sort_keys=True, separators=(",", ":")))


@dataclass(frozen=True, slots=True)
class SimLimits:
    """Limits per ``window`` seconds (a provider's are per 60 s; a shorter window keeps
    benchmarks short). ``input_tokens`` are counted with ``tokens(body)`` (default:
    :func:`approx_tokens` of the whole JSON body) when the request arrives."""

    requests: int | None = None
    input_tokens: int | None = None
    window: float = 60.0
    tokens: Callable[[Any], int] = _body_tokens


class SlidingWindowLimiter:
    """Admits a request when, over the last ``window`` seconds, the admitted requests
    and input tokens plus this one stay within the limits (rejected requests are not
    counted). Keeps the admission log for reports."""

    def __init__(self, limits: SimLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._tokens_in_window = 0
        self.admitted: list[tuple[float, int]] = []  # (monotonic time, input tokens)
        self.rejected: list[float] = []

    def admit(self, body: Any) -> float | None:
        """None if admitted; else the seconds until this request would fit."""
        tokens = self.limits.tokens(body) if self.limits.input_tokens is not None else 0
        with self._lock:
            now = self._clock()
            while self._recent and self._recent[0][0] <= now - self.limits.window:
                self._tokens_in_window -= self._recent.popleft()[1]
            wait = 0.0
            if self.limits.requests is not None and len(self._recent) + 1 > self.limits.requests:
                oldest = self._recent[len(self._recent) - self.limits.requests][0]
                wait = max(wait, oldest + self.limits.window - now)
            cap = self.limits.input_tokens
            if cap is not None and self._tokens_in_window + tokens > cap:
                excess = self._tokens_in_window + tokens - cap
                freed, until = 0, now
                for t, n in self._recent:
                    freed, until = freed + n, t
                    if freed >= excess:
                        break
                wait = max(wait, until + self.limits.window - now)
            if wait > 0:
                self.rejected.append(now)
                return wait
            self._recent.append((now, tokens))
            self._tokens_in_window += tokens
            self.admitted.append((now, tokens))
            return None


# -- strict key checking for SDK TypedDicts ---------------------------------------------
# pydantic validates TypedDicts but ignores unknown keys, while real APIs reject them
# ("Unrecognized request argument", "Additional properties are not allowed"). These
# helpers walk a validated value along its TypedDict type and list the unknown keys.


def _strip(tp: Any) -> Any:
    while get_origin(tp) in _WRAPPERS:
        tp = get_args(tp)[0]
    return tp


_WRAPPERS: tuple[Any, ...] = (Required, NotRequired, Annotated, ReadOnly)


@functools.cache
def _hints(tp: Any) -> dict[str, Any]:
    return get_type_hints(tp, include_extras=True)


def _could_be(tp: Any, value: Any) -> bool:
    tp = _strip(tp)
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return False
        if any(k not in value for k in tp.__required_keys__):
            return False
        for k, hint in _hints(tp).items():
            hint = _strip(hint)
            if get_origin(hint) is Literal and k in value and value[k] not in get_args(hint):
                return False
        return True
    if isinstance(value, dict):
        return get_origin(tp) in (dict, collections.abc.Mapping) or tp in (dict, object)
    return True


def unknown_keys(tp: Any, value: Any, path: str = "") -> list[str]:
    """The dotted paths of keys in ``value`` that its TypedDict type ``tp`` does not
    declare, recursing through unions (the best-matching member), lists and dicts."""
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        best: list[str] | None = None
        for member in get_args(tp):
            if member is type(None) or not _could_be(member, value):
                continue
            found = unknown_keys(member, value, path)
            if not found:
                return []
            if best is None or len(found) < len(best):
                best = found
        return best or []
    if is_typeddict(tp) and isinstance(value, dict):
        hints = _hints(tp)
        out: list[str] = []
        for k, v in value.items():
            where = f"{path}.{k}" if path else k
            if k not in hints:
                out.append(where)
            else:
                out.extend(unknown_keys(hints[k], v, where))
        return out
    if isinstance(value, list) and get_args(tp):
        out = []
        for i, item in enumerate(value):
            out.extend(unknown_keys(get_args(tp)[0], item, f"{path}[{i}]"))
        return out
    return []
