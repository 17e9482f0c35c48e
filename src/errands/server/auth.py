"""Who may talk to the server, and from where.

Every request passes :class:`RequestGuard`, an ASGI middleware, before it reaches a route:

- **Host**: only the names the server is bound to (``localhost``, ``127.0.0.1``,
  ``::1``, the bound address, ``[server] allowed_hosts``) with the right port -- a
  DNS-rebinding page (``evil.example`` resolving to 127.0.0.1) gets 421.
- **Origin**: a request that carries an ``Origin`` must come from the server itself
  (403 otherwise); a state-changing request from a browser (``Sec-Fetch-Site`` says
  cross-site) without one is refused too.
- **Token**: whenever the server answers to a name that is not loopback -- it is bound
  to another address, or ``[server] allowed_hosts`` names one (behind a reverse proxy:
  whoever reaches the proxy reaches errands; :func:`remote_names`) -- and with
  ``[server] require_token``, every request needs ``Authorization: Bearer <token>`` or
  the inbox's session cookie, which the login page sets after checking the token. The
  token lives in ``ERRANDS_HOME/server-token`` with mode 0600; a file others can read
  is refused.
- **Proxies**: a server without a token refuses any request a proxy forwarded
  (``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``; :meth:`Security.proxied`): it came
  from someone who may not be on this machine.
- **CSRF**: the inbox is a JavaScript page calling the JSON API. Every state-changing
  request that comes from a browser (it carries a cookie, an ``Origin`` or
  ``Sec-Fetch-*``) must send the header ``X-CSRF-Token`` equal to the ``errands_csrf``
  cookie (a double-submit token; the page reads it from a ``<meta>`` tag). A
  cross-site page can neither read the cookie nor send a custom header without a
  CORS preflight, which the server never grants. Bearer-token clients need no CSRF
  token: browsers never attach that header on their own.
- **Probes**: ``/healthz`` and ``/readyz`` need no token from a client on loopback
  whose request no proxy forwarded (:func:`_local_probe`); from anywhere else they are
  like every other path.
- **Bodies**: capped at ``[server] max_body_bytes`` (413); API bodies must be JSON (415).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errands.server.files import ServerRefused

__all__ = ["FORWARDING_HEADERS", "RequestGuard", "Security", "remote_names"]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# paths a person can reach before logging in
PUBLIC_PATHS = frozenset({"/login", "/api/health", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
# paths a process on this machine reaches without the token (errands.server.probes)
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# headers a reverse proxy adds to what it forwards
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: with no-referrer a form POST carries "Origin: null"
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None] | None:
    """('host', port) from a Host header value; None if it does not parse."""
    value = value.strip()
    if not value or any(c in value for c in "/@\\ \t"):
        return None
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    if parts.hostname is None:
        return None
    return parts.hostname.lower(), port


def _loopback_name(name: str) -> bool:
    name = name.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def remote_names(host: str, allowed_hosts: Iterable[str]) -> list[str]:
    """The names beyond loopback a server bound to *host* with *allowed_hosts* answers
    to (the bound address, or each allowed name that is not loopback). Any of them
    means people who are not on this machine can reach it: it needs the token.
    Refuses (:class:`ServerRefused`) an entry of *allowed_hosts* that is not a host."""
    names = []
    if not _loopback_name(host):
        names.append(f"{host} (every interface)" if not host or _is_wildcard(host) else host)
    for entry in allowed_hosts:
        parsed = _split_host(entry)
        if parsed is None:
            raise ServerRefused(f"server.allowed_hosts: {entry!r} is not a host name")
        if not _loopback_name(parsed[0]):
            names.append(entry)
    return names


@dataclass
class Security:
    """The server's address and token, and the checks made against them."""

    host: str
    port: int
    token: str | None = None
    allowed_hosts: Iterable[str] = ()
    max_body_bytes: int = 1_048_576
    names: set[str] = field(init=False)
    any_port_names: set[str] = field(init=False)
    exact: set[tuple[str, int]] = field(init=False)
    ip_literals: bool = field(init=False)

    def __post_init__(self) -> None:
        bound = self.host.strip("[]").lower()
        self.names = {"localhost", "127.0.0.1", "::1", bound}
        self.ip_literals = _is_wildcard(bound)
        if self.ip_literals:
            # reachable on every interface: answer to this machine's names too. Any IP
            # literal is fine: DNS rebinding needs a name the attacker controls.
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.any_port_names = set()
        self.exact = set()
        for entry in self.allowed_hosts:
            parsed = _split_host(entry)
            if parsed is None:
                raise ServerRefused(f"server.allowed_hosts: {entry!r} is not a host name")
            name, port = parsed
            if port is None:
                self.any_port_names.add(name)
            else:
                self.exact.add((name, port))

    # -- names ----------------------------------------------------------------------

    @property
    def cookie_suffix(self) -> str:
        return str(self.port)  # cookies ignore ports: keep two servers on one host apart

    @property
    def session_cookie(self) -> str:
        return f"errands_session_{self.cookie_suffix}"

    @property
    def csrf_cookie(self) -> str:
        return f"errands_csrf_{self.cookie_suffix}"

    def host_ok(self, value: str | None, *, default_port: int = 80) -> bool:
        if value is None:
            return False
        parsed = _split_host(value)
        if parsed is None:
            return False
        name, port = parsed
        port = default_port if port is None else port
        if name in self.any_port_names or (name, port) in self.exact:
            return True
        if port != self.port:
            return False
        if name in self.names:
            return True
        if self.ip_literals:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            return True
        return False

    def origin_ok(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or parts.path or parts.query:
            return False
        return self.host_ok(parts.netloc, default_port=443 if parts.scheme == "https" else 80)

    # -- the token, sessions -----------------------------------------------------------

    def _mac(self, purpose: str, nonce: str) -> str:
        assert self.token is not None
        return hmac.new(
            self.token.encode(), f"{purpose}:{nonce}".encode(), hashlib.sha256
        ).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            candidate.encode(), self.token.encode()
        )

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._mac('session', nonce)}"

    def session_ok(self, value: str | None) -> bool:
        if self.token is None or not value or "." not in value:
            return False
        nonce, _, mac = value.partition(".")
        return hmac.compare_digest(mac.encode(), self._mac("session", nonce).encode())

    def proxied(self, headers: Headers) -> str | None:
        """The forwarding header a request carries when this server has no token (a
        proxy forwarded it: from someone who may not be on this machine), else None."""
        if self.token is not None:
            return None
        return next((h for h in FORWARDING_HEADERS if h in headers), None)

    def authenticate(self, headers: Headers, cookies: dict[str, str]) -> str | None:
        """'bearer', 'session' or 'open' (no token needed); None if not authenticated."""
        if self.token is None:
            return "open"
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            return "bearer" if self.token_matches(value.strip()) else None
        if self.session_ok(cookies.get(self.session_cookie)):
            return "session"
        return None


def _cookies(headers: Headers) -> dict[str, str]:
    raw = headers.get("cookie")
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header is no cookie at all
        return {}
    return {k: m.value for k, m in jar.items()}


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _local_probe(scope: Scope, headers: Headers) -> bool:
    """A liveness or readiness probe from loopback that no proxy forwarded."""
    if scope["path"] not in PROBE_PATHS or any(h in headers for h in FORWARDING_HEADERS):
        return False
    client = scope.get("client")
    return client is not None and _loopback_name(str(client[0]))


def _looks_like_browser(headers: Headers) -> bool:
    return any(h in headers for h in ("cookie", "origin", "sec-fetch-site", "sec-fetch-mode"))


async def _respond(
    send: Send,
    status: int,
    detail: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *SECURITY_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class RequestGuard:
    """ASGI middleware: Host, Origin, token, CSRF and body checks; security headers."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sec = self.security
        headers = Headers(scope=scope)
        path: str = scope["path"]
        method: str = scope["method"]
        if not sec.host_ok(headers.get("host")):
            await _respond(
                send,
                421,
                "this server does not answer to that Host name "
                "(add it to [server] allowed_hosts if it is yours)",
            )
            return
        origin = headers.get("origin")
        if origin is not None and not sec.origin_ok(origin):
            await _respond(send, 403, "cross-origin requests are refused")
            return
        unsafe = method in UNSAFE_METHODS
        fetch_site = headers.get("sec-fetch-site")
        if unsafe and origin is None and fetch_site not in (None, "same-origin", "none"):
            await _respond(send, 403, "cross-site requests are refused")
            return
        forwarded = sec.proxied(headers)
        if forwarded is not None and not _is_public(path):
            await _respond(
                send,
                403,
                f"this request came through a proxy ({forwarded}) and this server has no "
                "token: behind a proxy errands needs one -- set [server] require_token = true "
                "(or allowed_hosts) and restart errands up",
            )
            return
        cookies = _cookies(headers)
        auth = sec.authenticate(headers, cookies)
        if auth is None and not _is_public(path) and not _local_probe(scope, headers):
            if path.startswith("/api/") or path in ("/openapi.json", *PROBE_PATHS) or unsafe:
                await _respond(
                    send,
                    401,
                    "a token is needed: send Authorization: Bearer <token> "
                    "(the token is in ERRANDS_HOME/server-token)",
                    [(b"www-authenticate", b'Bearer realm="errands"')],
                )
            else:
                target = path + (
                    "?" + scope["query_string"].decode() if scope["query_string"] else ""
                )
                location = "/login?next=" + quote(target, safe="")
                await send(
                    {
                        "type": "http.response.start",
                        "status": 303,
                        "headers": [(b"location", location.encode()), *SECURITY_HEADERS],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
            return
        if unsafe and auth != "bearer" and _looks_like_browser(headers):
            expected = cookies.get(sec.csrf_cookie, "")
            given = headers.get("x-csrf-token", "")
            if path == "/login":
                given = "form"  # the login form carries its CSRF token in the body (checked there)
            elif not expected or not hmac.compare_digest(given.encode(), expected.encode()):
                await _respond(
                    send,
                    403,
                    "missing or wrong CSRF token: reload the page "
                    "(browser requests must send X-CSRF-Token)",
                )
                return
        if unsafe:
            try:
                receive, size = await self._buffered(receive, headers)
            except _TooLarge:
                await _respond(
                    send,
                    413,
                    f"the request body is larger than {sec.max_body_bytes} bytes",
                )
                return
            if path.startswith("/api/") and size:
                media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if media != "application/json" and not media.endswith("+json"):
                    await _respond(
                        send, 415, "send the body as JSON (Content-Type: application/json)"
                    )
                    return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _buffered(self, receive: Receive, headers: Headers) -> tuple[Receive, int]:
        """Read the whole body (at most max_body_bytes) and replay it to the app."""
        limit = self.security.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise _TooLarge
            except ValueError:
                pass
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay, size
