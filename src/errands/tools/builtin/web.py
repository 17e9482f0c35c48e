"""Web tools behind the network guard: fetch_url and http_request.

Both go through :func:`errands.tools.netguard.guarded_request`: only public addresses
(or ones the person allow-listed), checked where the connection is made and again on
every redirect; responses are capped at ``network.max_response_bytes``. What comes
back is labelled untrusted: a web page is the classic carrier of prompt injection.

A URL argument is validated into its canonical spelling
(:func:`errands.tools.canonical.web_url`), so the policy judges, the approval card shows
and the request goes to one and the same URL; credentials in a URL are refused (they
belong in a header, where the effect class sees them). An ``http_request`` is a plain
read (``network``) only when it is a GET or HEAD with no body and only headers from
:data:`SAFE_READ_HEADERS`; anything else it carries may change or reveal something, so
it is ``external``.

``http_request(..., auth="secret:NAME")`` sends ``Authorization: Bearer VALUE`` where VALUE
is the secret NAME declared in ``[secrets]`` of errands.toml (:func:`secret_auth`): only to
that secret's hosts (checked on the canonical URL before anything is sent; a redirect to
another origin drops the header, :func:`errands.tools.netguard.guarded_request`), never in
the arguments, the approval card (which names the secret), the log or the result (every
spelling of the value in the response or an error is redacted). Such a call is
``external``: it acts as someone.
"""

from __future__ import annotations

import codecs
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import html2text
import httpx
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from errands.config import Settings
from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity
from errands.store.redact import MIN_SECRET_LENGTH
from errands.tools.canonical import UrlError, web_url
from errands.tools.netguard import Fetched, guarded_request
from errands.tools.sandbox.secrets import Redact, declared_values, secret_redactor
from errands.tools.tool import ToolArgumentError, ToolContext, ToolError, ToolOutput

__all__ = [
    "FORBIDDEN_HEADERS",
    "SAFE_READ_HEADERS",
    "HttpMethod",
    "WebUrl",
    "fetch_url",
    "http_request",
    "http_request_effect",
    "http_request_preview",
    "make_http_request",
    "secret_auth",
]

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

# Headers the transport owns: hop-by-hop ones, framing, the target, and our idempotency key.
FORBIDDEN_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "idempotency-key",
    }
)

# Headers a plain read may carry and stay a read: they ask for a representation and
# say nothing about who asks. Any other header (Authorization, Cookie, a custom one)
# makes even a GET `external`.
SAFE_READ_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "user-agent",
        "if-none-match",
        "if-modified-since",
        "range",
        "cache-control",
    }
)


class WebUrl(str):
    """An http(s) URL argument, validated into its canonical spelling (``web_url``).

    Its JSON schema is a plain string; a URL errands cannot read, another scheme or
    credentials in the URL are refused with one clear error before anything is judged.
    """

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(web_url, core_schema.str_schema())


def _sent_url(url: str) -> str:
    """The URL a logged call goes to: canonical again (a redacted secret may have been
    written into it since it was validated), refused like a bad argument."""
    try:
        return web_url(url)
    except UrlError as exc:
        raise ToolArgumentError(str(exc)) from None


_SHOWN_HEADERS = (
    "content-type",
    "content-length",
    "location",
    "retry-after",
    "etag",
    "last-modified",
    "cache-control",
    "www-authenticate",
)

_TEXT_TYPES = ("json", "xml", "javascript", "ecmascript", "csv", "yaml", "x-www-form-urlencoded")


def _unchanged(text: str) -> str:
    return text


def _settings(ctx: ToolContext) -> Settings:
    settings = ctx.settings
    return settings if isinstance(settings, Settings) else Settings()


def _media_type(fetched: Fetched) -> str:
    return str(fetched.headers.get("content-type", "")).split(";", 1)[0].strip().lower()


def _decode(fetched: Fetched) -> str:
    encoding = fetched.encoding or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    return fetched.body.decode(encoding, errors="replace")


def _is_text(fetched: Fetched, media: str) -> bool:
    if media.startswith("text/") or any(t in media for t in _TEXT_TYPES):
        return True
    if media:
        return False
    return b"\x00" not in fetched.body[:4096]


def _is_html(fetched: Fetched, media: str) -> bool:
    if "html" in media:
        return True
    head = fetched.body[:512].lstrip().lower()
    return not media and (head.startswith(b"<!doctype html") or head.startswith(b"<html"))


def _readable(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    converter.unicode_snob = True
    return str(converter.handle(html)).strip()


def _cut_note(fetched: Fetched) -> str:
    return (
        f"\n[... cut off after {len(fetched.body)} bytes of the response]"
        if fetched.truncated
        else ""
    )


def _label(fetched: Fetched, default: Confidentiality) -> Confidentiality:
    # Content from an allow-listed private address (an intranet, a NAS) is not public.
    return Confidentiality.private if fetched.reached_non_public else default


async def fetch_url(url: WebUrl, ctx: ToolContext) -> ToolOutput:
    """Fetch a web page or file with GET and return it as readable text.

    HTML is converted to plain text with links kept. Redirects are followed (at most
    five). Only public http(s) addresses can be reached. Long responses are cut off.

    Args:
        url: The http:// or https:// URL to fetch.
    """
    settings = _settings(ctx)
    fetched = await guarded_request(
        "GET", _sent_url(url), settings, headers={"Accept-Encoding": "identity", "Accept": "*/*"}
    )
    media = _media_type(fetched)
    status = f"HTTP {fetched.status} {fetched.reason}".rstrip()
    head = f"{status} · {media or 'unknown type'} · {fetched.url}"
    if _is_html(fetched, media):
        text = _readable(_decode(fetched)) + _cut_note(fetched)
    elif _is_text(fetched, media):
        text = _decode(fetched) + _cut_note(fetched)
    else:
        size = fetched.headers.get("content-length", f"at least {len(fetched.body)}")
        text = f"[binary content, {size} bytes, not shown]"
    return ToolOutput(
        text=f"{head}\n\n{text}",
        integrity=Integrity.untrusted,
        confidentiality=_label(fetched, Confidentiality.public),
        source=fetched.url,
    )


def http_request_effect(args: Mapping[str, Any]) -> EffectClass:
    """A plain read (``network``): GET or HEAD with no body and only headers from
    :data:`SAFE_READ_HEADERS`. Anything else may change something or act as someone --
    another method, a body, credentials (Authorization, Cookie), a custom header -- and
    is ``external``."""
    if args.get("method") not in ("GET", "HEAD") or args.get("body") not in (None, ""):
        return EffectClass.external
    if args.get("auth"):  # a credential: the request acts as someone
        return EffectClass.external
    headers = args.get("headers") or {}
    if not isinstance(headers, Mapping):
        return EffectClass.external
    if any(str(name).strip().lower() not in SAFE_READ_HEADERS for name in headers):
        return EffectClass.external
    return EffectClass.network


def _checked_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        lowered = name.strip().lower()
        if lowered in FORBIDDEN_HEADERS or lowered.startswith("proxy-"):
            raise ToolArgumentError(
                f"http_request: the {name} header cannot be set; the transport sets it"
            )
        if (
            not lowered
            or not (name.isascii() and value.isascii())
            or any(c in name for c in "\r\n:\x00 ")
            or any(c in value for c in "\r\n\x00")
        ):
            raise ToolArgumentError(
                f"http_request: header {name!r} has forbidden characters "
                "(ASCII only, no line breaks)"
            )
        out[name.strip()] = value
    return out


AUTH_PREFIX = "secret:"


def _auth_name(auth: str) -> str:
    name = auth.strip().removeprefix(AUTH_PREFIX)
    if not auth.strip().startswith(AUTH_PREFIX) or not name:
        raise ToolArgumentError(
            f"http_request: auth must be secret:NAME, naming a secret declared in errands.toml "
            f"([secrets.NAME]); got {auth[:40]!r}"
        )
    return name


def _ascii_host(url: str) -> str:
    """The host a request to *url* connects to, as its ASCII (IDNA) spelling, lower case,
    without a trailing dot. Not the Unicode form casefolded: ``exampleß.com`` is
    ``xn--example-6va.com``, another domain, yet it casefolds to ``exampless.com``."""
    try:
        return httpx.URL(url).raw_host.decode("ascii").rstrip(".").lower()
    except (httpx.InvalidURL, UnicodeError):
        return ""


def _loopback(host: str) -> bool:
    """Is *host* this machine (a local test server may be plain http)?"""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _declared_host(host: str) -> str:
    """A secret's declared host in the same ASCII spelling ("" if it cannot be one)."""
    host = host.strip().strip(".")
    return _ascii_host(f"https://{host}/") if host else ""


def secret_auth(
    settings: Settings, auth: str, url: str, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """(name, value) of the secret ``auth="secret:NAME"`` names, when it may go to *url*'s
    host (its ``hosts``, or a subdomain of one); one clear error otherwise."""
    name = _auth_name(auth)
    declared = settings.secrets.get(name)
    if declared is None:
        known = ", ".join(sorted(settings.secrets)) or "none"
        raise ToolArgumentError(
            f"http_request: no secret named {name} in errands.toml (declared: {known}); the "
            f'person declares it and where it may go: [secrets.{name}] hosts = ["example.com"]'
        )
    host = _ascii_host(url)
    if not host or not any(
        host == a or host.endswith("." + a) for a in map(_declared_host, declared.hosts) if a
    ):
        raise ToolError(
            f"http_request: the secret {name} may be sent only to "
            f"{', '.join(declared.hosts)}, not to {host or url}; nothing was sent"
        )
    if httpx.URL(url).scheme != "https" and not _loopback(host):
        raise ToolError(
            f"http_request: the secret {name} goes only over https (plain http shows it to "
            f"every network on the way); use https://{host}/...; nothing was sent"
        )
    value = (os.environ if environ is None else environ).get(declared.env or name, "")
    if not value:
        raise ToolError(
            f"http_request: the secret {name} is not set: errands' environment has no "
            f"{declared.env or name}; nothing was sent"
        )
    if len(value) < MIN_SECRET_LENGTH:  # too short to find in a response without noise
        raise ToolError(
            f"http_request: the secret {name} is shorter than {MIN_SECRET_LENGTH} characters, "
            "too short to be redacted from a response; it is not sent"
        )
    return name, value


def http_request_preview(args: Mapping[str, Any], workspace: Any = None) -> str:
    """The approval card: method and URL, the headers, the secret by name, the body."""
    lines = [f"{args.get('method', 'GET')} {args.get('url', '')}"]
    lines += [f"{k}: {v}" for k, v in (args.get("headers") or {}).items()]
    if args.get("auth"):
        lines.append(
            f"Authorization: Bearer [the secret {str(args['auth']).removeprefix(AUTH_PREFIX)}: "
            "errands adds its value, only for the secret's hosts; it is never shown]"
        )
    if args.get("body"):
        lines += ["", str(args["body"])]
    return "\n".join(lines)


AuthCheck = Callable[[Settings, str, str], tuple[str, str]]  # (settings, auth, url)


def make_http_request(auth_check: AuthCheck = secret_auth) -> Callable[..., Any]:
    """The ``http_request`` tool function; *auth_check* finds the secret ``auth`` names
    and refuses a host it may not go to (tests pass a control)."""

    async def http_request(
        method: HttpMethod,
        url: WebUrl,
        ctx: ToolContext,
        headers: dict[str, str] | None = None,
        body: str | None = None,
        auth: str | None = None,
    ) -> ToolOutput:
        """Send an HTTP request (for APIs) and return the status, main headers and body.

        GET and HEAD follow redirects (at most five); other methods return a redirect as
        it is. Every request carries an Idempotency-Key header, so a retried request is
        recognised by servers that support it. Only public http(s) addresses can be
        reached. Long bodies are cut off.

        Args:
            method: The HTTP method.
            url: The http:// or https:// URL.
            headers: Request headers, for example `{"Content-Type": "application/json"}`.
                Host, Content-Length, Idempotency-Key and hop-by-hop headers cannot be set.
            body: The request body as text (sent as UTF-8).
            auth: `secret:NAME` to send `Authorization: Bearer <the secret NAME>`; the secret
                is declared in errands.toml with the hosts it may go to, and you never see
                its value (e.g. `secret:BOARD_TOKEN`).
        """
        send = _checked_headers(headers)
        send["Idempotency-Key"] = ctx.idempotency_key
        settings = _settings(ctx)
        target = _sent_url(url)
        redact: Redact = _unchanged
        if auth is not None:
            if any(k.strip().lower() == "authorization" for k in send):
                raise ToolArgumentError(
                    "http_request: give either an Authorization header or auth, not both"
                )
            if any(k.strip().lower() == "range" for k in send):
                raise ToolArgumentError(
                    "http_request: a Range header cannot go with auth (a slice of a response "
                    "that echoes the secret would carry part of it past the redaction)"
                )
            name, value = auth_check(settings, auth, target)
            send["Authorization"] = f"Bearer {value}"
            redact = secret_redactor({**declared_values(settings), name: value})
        try:
            fetched = await guarded_request(
                method,
                target,
                settings,
                headers=send,
                content=body.encode("utf-8") if body is not None else None,
                follow_redirects=method in ("GET", "HEAD"),
            )
        except ToolError as exc:  # (an error names what was sent only redacted)
            exc.args = (redact(str(exc)),)
            raise
        lines = [f"HTTP {fetched.status} {fetched.reason}".rstrip()]
        if fetched.redirects:
            lines.append(f"(redirected to {fetched.url})")
        for name in _SHOWN_HEADERS:
            if name in fetched.headers:
                lines.append(f"{name}: {fetched.headers[name]}")
        for name, value in fetched.headers.items():
            if name.lower().startswith(("x-ratelimit-", "ratelimit-")):
                lines.append(f"{name.lower()}: {value}")
        media = _media_type(fetched)
        if not fetched.body:
            shown = ""
        elif _is_text(fetched, media):  # (redacted before the note: a body cut off inside
            shown = redact(_decode(fetched)) + _cut_note(fetched)  # a secret ends with its start)
        else:
            shown = f"[binary content, {len(fetched.body)} bytes, not shown]"
        return ToolOutput(
            text=redact("\n".join(lines)) + "\n\n" + shown,
            integrity=Integrity.untrusted,
            # a response to an arbitrary request (with credentials, to an account) may be personal
            confidentiality=Confidentiality.private,
            source=redact(fetched.url),  # (a same-origin redirect may have echoed it)
        )

    return http_request


http_request = make_http_request()
