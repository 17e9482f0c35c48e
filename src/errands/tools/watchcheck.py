"""The model-free check of a watch: fetch a page through the network guard, extract items.

An **item** is one thing a watch reports as new: one CSS selector match (its visible
text), one JSON-path match (an array match gives one item per element), or, with
neither, one non-empty line of the page's visible text (a JSON document is taken as
the path ``$``). Every item's text is **normalised** -- Unicode NFKC, each run of
whitespace one space, stripped -- and its **key** is the SHA-256 (hex) of the whole
normalised text; a JSON value that is not a string is first written as canonical JSON
(RFC 8785: sorted keys, compact), so a server that reorders keys changes no key. The
text kept is cut to :data:`MAX_TEXT` characters. Items keep page order; a repeated key
is dropped. Nothing here reads or writes the store: the scheduler compares the keys
with the ones it has seen.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from errands.config import Settings
from errands.core.canonical import canonical_json
from errands.errors import UserError
from errands.tools.canonical import UrlError, web_url
from errands.tools.netguard import NetworkRefused, check_url, guarded_request
from errands.tools.tool import ToolError

if TYPE_CHECKING:  # (the parsers are imported when a check needs them: the CLI starts fast)
    import jsonpath
    import soupsieve
    from bs4 import BeautifulSoup

__all__ = ["Checked", "Item", "WatchError", "WatchSpecError", "check", "extract", "validate_watch"]

MAX_TEXT = 2000

_BLOCKS = re.compile(
    r"^(?:address|article|aside|blockquote|br|dd|div|dl|dt|figcaption|figure|footer|form|h[1-6]"
    r"|header|hr|li|main|nav|ol|p|pre|section|table|tr|ul)$"
)


class WatchSpecError(UserError):
    """A watch's definition is unusable; :attr:`field` names the field at fault."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field


class WatchError(Exception):
    """A check failed; the message says what and where, on one line.

    :attr:`transient`: True when the same check may succeed soon (a timeout, a connection
    or DNS failure, HTTP 408, 425, 429, 5xx): back off and retry. False when something must
    change first (the guard refuses the URL, HTTP 404, 410 and other 4xx, a body not of the
    kind asked, a page over the size limit): retry later still, but tell the person.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(" ".join(message.split()))
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Item:
    key: str  # sha256 hex of the whole normalised text
    text: str  # the normalised text, at most MAX_TEXT characters


@dataclass(frozen=True, slots=True)
class Checked:
    not_modified: bool  # 304 to a conditional request: items is empty and means nothing
    items: tuple[Item, ...]  # in page order, repeated keys dropped
    etag: str | None  # to send as If-None-Match next time
    last_modified: str | None  # to send as If-Modified-Since next time
    url: str  # the final URL, after redirects
    status: int


def _selector(select: str) -> soupsieve.SoupSieve:
    import soupsieve

    try:
        return soupsieve.compile(select)
    except soupsieve.SelectorSyntaxError as exc:
        detail = str(exc).splitlines()[0]
        raise WatchSpecError("select", f"{select!r} is not a CSS selector: {detail}") from None


def _path(json_path: str) -> jsonpath.JSONPath | jsonpath.CompoundJSONPath:
    import jsonpath

    try:
        return jsonpath.compile(json_path, strict=True)
    except jsonpath.JSONPathError as exc:
        detail = str(exc).splitlines()[0]
        raise WatchSpecError(
            "json_path", f"{json_path!r} is not a valid JSONPath (RFC 9535): {detail}"
        ) from None


def validate_watch(url: str, select: str | None, json_path: str | None, settings: Settings) -> str:
    """Check a watch's definition before anything is written; the canonical URL.

    Raises :class:`WatchSpecError` (a :class:`UserError`) naming the field: a malformed
    URL or one the network guard refuses (the host is resolved now, blocking; a name that
    does not resolve now is accepted -- offline, or a DNS hiccup: every check resolves it
    again, and a failing one backs off and says why), select and json_path both given, an
    invalid CSS selector or JSONPath.
    """
    if select is not None and json_path is not None:
        raise WatchSpecError("select", "give select or json_path, not both")
    if select is not None:
        _selector(select)
    if json_path is not None:
        _path(json_path)
    try:
        canonical = web_url(url)
    except UrlError as exc:
        raise WatchSpecError("url", str(exc)) from None
    try:
        check_url(canonical, settings)
    except NetworkRefused as exc:
        if isinstance(exc.__context__, (socket.gaierror, UnicodeError)):
            return canonical  # (a name that does not resolve now: each check tries again)
        raise WatchSpecError("url", str(exc)) from None
    return canonical


def _items(texts: Iterable[str]) -> tuple[Item, ...]:
    found: dict[str, Item] = {}
    for text in (" ".join(unicodedata.normalize("NFKC", t).split()) for t in texts):
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if text and key not in found:
            found[key] = Item(key, text[:MAX_TEXT])
    return tuple(found.values())


def _decode(body: bytes, encoding: str | None) -> str:
    """The declared charset, else UTF-8, else a page's own <meta charset>, else cp1252."""
    definite = [e for e in (encoding, "utf-8") if e]
    from bs4 import UnicodeDammit

    dammit = UnicodeDammit(body, definite, is_html=True, user_encodings=["windows-1252"])
    return dammit.unicode_markup or body.decode("utf-8", errors="replace")


def _visible(html: str) -> BeautifulSoup:
    from bs4 import BeautifulSoup

    """The page parsed, invisible parts dropped, block edges marked with line breaks."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(["script", "style", "template", "noscript"]):
        tag.decompose()
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    for tag in soup.find_all(["td", "th"]):
        tag.insert_after(" ")
    return soup


def _json_items(text: str, json_path: str) -> list[str]:
    import jsonpath

    compiled = _path(json_path)
    try:
        doc = json.loads(text)
        if isinstance(doc, str):  # a bare string has no children; jsonpath would parse it again
            matches: list[object] = [doc] if str(compiled) == "$" else []
        else:
            matches = compiled.findall(doc)
        values = [v for m in matches for v in (m if isinstance(m, list) else [m])]
        return [v if isinstance(v, str) else canonical_json(v) for v in values]
    except (ValueError, jsonpath.JSONPathError) as exc:  # canonical_json refuses NaN
        raise WatchError(f"the response is not usable JSON: {exc}", transient=False) from None


def extract(
    body: bytes,
    content_type: str,
    *,
    select: str | None,
    json_path: str | None,
    encoding: str | None = None,
) -> tuple[Item, ...]:
    """The items of a response body (see the module's docstring); :class:`WatchError`
    (not transient) for a body not of the kind asked or a definition validate_watch refuses.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if select is not None and json_path is not None:
        raise WatchError("give select or json_path, not both", transient=False)
    text = _decode(body, encoding)
    try:
        if json_path is not None:
            return _items(_json_items(text, json_path))
        if select is not None:
            return _items(m.get_text() for m in _selector(select).select(_visible(text)))
    except WatchSpecError as exc:
        raise WatchError(str(exc), transient=False) from None
    if "json" in media:
        return _items(_json_items(text, "$"))
    if "\x00" in text:
        raise WatchError(f"the response is {media or 'binary'}, not text", transient=False)
    if "html" in media or "xml" in media or text.lstrip()[:14].lower() == "<!doctype html":
        soup = _visible(text)
        return _items((soup.body or soup).get_text().splitlines())
    return _items(text.splitlines())


def _sendable(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's headers, refused by name (never by value: it may be a secret)."""
    for name, value in (headers or {}).items():
        if not (name.isascii() and value.isascii()) or any(c in name + value for c in "\r\n\x00"):
            raise WatchError(
                f"header {name!r} has forbidden characters (ASCII only, no line breaks)",
                transient=False,
            )
    return dict(headers or {})


def _failed(url: str, exc: ToolError, secrets: Iterable[str]) -> WatchError:
    message = str(exc) if url in str(exc) else f"{url}: {exc}"
    for secret in secrets:
        if len(secret) >= 4:
            message = message.replace(secret, "[hidden]")
    # The guard raises a name that does not resolve (now) as a refusal: it may resolve later.
    refused = isinstance(exc, NetworkRefused) and not isinstance(exc.__context__, socket.gaierror)
    return WatchError(message, transient=not refused)


_HINTS = {401: "check the watch's headers", 403: "check the watch's headers"}
_HINTS |= {404: "check the watch's URL", 410: "check the watch's URL"}


async def check(
    url: str,
    settings: Settings,
    *,
    select: str | None = None,
    json_path: str | None = None,
    headers: Mapping[str, str] | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
) -> Checked:
    """GET *url* through the network guard and extract its items.

    *etag* and *last_modified* (from the previous :class:`Checked`) make the request
    conditional; a 304 answers ``not_modified``. The caller's *headers* may carry
    secrets: no error message and no result carries their values. Raises
    :class:`WatchError` for any failure (see its ``transient``).
    """
    send = {"Accept-Encoding": "identity", **_sendable(headers)}
    if etag is not None:
        send["If-None-Match"] = etag
    if last_modified is not None:
        send["If-Modified-Since"] = last_modified
    try:
        fetched = await guarded_request("GET", web_url(url), settings, headers=send)
    except UrlError as exc:
        raise WatchError(str(exc), transient=False) from None
    except ToolError as exc:
        raise _failed(url, exc, (headers or {}).values()) from None
    status, where = fetched.status, fetched.url
    new_etag, new_modified = fetched.headers.get("etag"), fetched.headers.get("last-modified")
    if status == 304:
        return Checked(True, (), new_etag or etag, new_modified or last_modified, where, status)
    if not 200 <= status < 300:
        hint = _HINTS.get(status, "")
        raise WatchError(
            f"{where}: HTTP {status} {fetched.reason}" + (f"; {hint}" if hint else ""),
            transient=status in (408, 425, 429) or status >= 500,
        )
    if fetched.truncated:
        raise WatchError(
            f"{where}: the page is larger than the {settings.network.max_response_bytes:,} "
            "bytes network.max_response_bytes allows; raise it in errands.toml to watch this page",
            transient=False,
        )
    body, media, charset = fetched.body, fetched.headers.get("content-type", ""), fetched.encoding
    try:
        items = extract(body, media, select=select, json_path=json_path, encoding=charset)
    except WatchError as exc:
        raise WatchError(f"{where}: {exc}", transient=False) from None
    return Checked(False, items, new_etag, new_modified, where, status)
