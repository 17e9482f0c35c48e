"""Canonical URLs and paths: the one spelling of what a tool will actually reach.

Every check that judges *where* a call goes -- the policy's rules, the built-in votes,
the coming egress proxy and flow control -- and the tools that then go there use this
module, so a check cannot be walked around with another spelling of the same place.
(Not to be confused with :mod:`errands.core.canonical`, canonical *JSON* for hashes.)

**URLs** (:func:`canonical_url`) follow the WHATWG URL standard where it decides how a
browser or a client reads a URL, and RFC 3986's normalisations otherwise:

- leading and trailing spaces and control characters are removed, tabs and line breaks
  inside are dropped (as browsers do);
- the scheme and the host are lower case; a host is IDNA-encoded (UTS #46, non-
  transitional: ``Bücher.example`` is ``xn--bcher-kva.example``); one trailing dot is
  dropped; an IPv6 literal is written compressed; IPv4 must be four decimal numbers
  (``127.1``, ``0x7f.0.0.1``, ``2130706433`` are refused, as the network guard does);
- the default port (80 for http, 443 for https) is dropped; other ports are kept;
- the userinfo (``user:password@``) is kept apart (:attr:`CanonicalUrl.userinfo`) and is
  never part of the canonical text; the fragment is dropped (no client sends it);
- for http(s), ``\\`` before the query is ``/``, and any number of slashes after the
  scheme introduces the host (``https:/host``, ``https:\\\\host``);
- in the path and the query, a percent-escape of an unreserved character is decoded
  (``%7E`` is ``~``), other escapes get upper-case hex, and characters a URL may not
  carry are percent-encoded (UTF-8); a stray ``%`` becomes ``%25``;
- the path's ``.`` and ``..`` segments (also written ``%2E``) are resolved and empty
  segments (``//``) are collapsed; an empty path is ``/``; an empty query is dropped.

The result is idempotent (canonical of canonical is the same text) and is sent by the
HTTP client exactly as it is written.

**Paths** (:func:`canonical_path`) are what the file tools open: the text stripped of
surrounding whitespace, ``~`` expanded, made absolute against the workspace, every
symbolic link followed (:func:`resolve_path`, which
:func:`errands.tools.workspace.resolve_inside` -- and so every file tool -- uses); a
path outside the workspace is refused.

**Patterns** in ``policy.toml`` get the same treatment where it is safe to apply to a
glob (:func:`url_pattern`, :func:`path_pattern`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from dataclasses import dataclass
from functools import lru_cache

import idna

__all__ = [
    "DEFAULT_PORTS",
    "CanonicalPath",
    "CanonicalUrl",
    "PathError",
    "UrlError",
    "canonical_path",
    "canonical_url",
    "path_pattern",
    "resolve_path",
    "url_pattern",
    "web_url",
]

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
# WHATWG's "special" schemes: a host is required and "\" reads as "/"
_SPECIAL = frozenset(DEFAULT_PORTS)

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_SUB_DELIMS = "!$&'()*+,;="
_PATH_SAFE = _UNRESERVED | frozenset(_SUB_DELIMS + ":@/")
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_USERINFO_SAFE = _UNRESERVED | frozenset(_SUB_DELIMS + ":")
_HEX = frozenset(string.hexdigits)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_EDGES = "".join(chr(c) for c in range(0x21))  # C0 controls and space
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")
# WHATWG's forbidden host code points (besides C0 controls, DEL and "%", handled apart)
_FORBIDDEN_HOST = frozenset(" #/:<>?@[\\]^|")
_NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")
_ASCII_LABEL = re.compile(r"^[a-z0-9_-]+$")


class UrlError(ValueError):
    """Text that is not a URL errands can read; the message says why, in one sentence."""


@dataclass(frozen=True)
class CanonicalUrl:
    """A URL in its one canonical spelling (:attr:`text`), and its parts."""

    text: str  # scheme://host[:port]/path[?query]: what is matched, sent, shown
    scheme: str
    host: str  # lower-case ASCII; an IPv6 literal in brackets; "" for an opaque URL
    port: int | None  # the port a connection goes to (the default one if none is written)
    path: str
    query: str | None
    userinfo: str = ""  # "user:password" as written (percent-normalised); never in text

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` as the canonical text writes it ("" for an opaque URL)."""
        if not self.host and self.scheme != "file":
            return ""
        shown = "" if self.port in (None, DEFAULT_PORTS.get(self.scheme)) else f":{self.port}"
        return f"{self.scheme}://{self.host}{shown}"

    def __str__(self) -> str:
        return self.text


def _escape(data: bytes) -> str:
    return "".join(f"%{b:02X}" for b in data)


def _normalise(text: str, safe: frozenset[str], what: str) -> str:
    """Percent-normalise *text*: decode escapes of unreserved characters, upper-case the
    hex of the others, encode what *safe* does not allow (and a stray ``%``)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
                decoded = chr(int(pair, 16))
                out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
                i += 3
                continue
            out.append("%25")
        elif c in safe:
            out.append(c)
        else:
            try:
                out.append(_escape(c.encode("utf-8")))
            except UnicodeEncodeError:
                raise UrlError(f"the URL's {what} holds a character that is not text") from None
        i += 1
    return "".join(out)


def _dot_segments(path: str) -> str:
    """Resolve ``.`` and ``..``, collapse empty segments; always starts with ``/``."""
    kept: list[str] = []
    segments = path.split("/")
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    trailing = segments[-1] in ("", ".", "..") and bool(kept)
    return "/" + "/".join(kept) + ("/" if trailing else "")


def _percent_decoded_host(host: str) -> str:
    if "%" not in host:
        return host
    raw = bytearray()
    i = 0
    while i < len(host):
        pair = host[i + 1 : i + 3]
        if host[i] == "%" and len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
            raw.append(int(pair, 16))
            i += 3
        else:
            raw.extend(host[i].encode("utf-8", "surrogatepass"))
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UrlError("the URL's host is percent-encoded bytes that are not UTF-8") from None


def _host(raw: str, scheme: str) -> str:
    host = _percent_decoded_host(raw)
    if host.startswith("["):
        if not host.endswith("]"):
            raise UrlError(f"the URL's host {raw!r} opens a bracket it does not close")
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise UrlError(f"the URL's host {raw!r} is not an IPv6 address") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c in _FORBIDDEN_HOST or c == "%" for c in host):
        raise UrlError(f"the URL's host {raw!r} holds a character no host name can have")
    if not host.isascii():
        try:
            host = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            raise UrlError(f"the URL's host {raw!r} is not a valid host name: {exc}") from None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        if scheme == "file":
            return ""
        raise UrlError("the URL has no host")
    labels = host.split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise UrlError(f"the URL's host {raw!r} has an empty label (two dots in a row)")
        if label.isascii():
            if not _ASCII_LABEL.match(label):
                raise UrlError(f"the URL's host {raw!r} holds a character no host name can have")
            out.append(label)
        else:
            try:
                out.append(idna.alabel(label).decode("ascii"))
            except (idna.IDNAError, UnicodeError) as exc:
                raise UrlError(f"the URL's host {raw!r} is not a valid host name: {exc}") from None
    if all(_NUMERIC_LABEL.match(label) for label in out):
        dotted = ".".join(out)
        try:
            return str(ipaddress.IPv4Address(dotted))
        except ValueError:
            raise UrlError(
                f"the URL's host {raw!r} is a numeric host in an unusual form; "
                "write IPv4 addresses as four decimal numbers (a.b.c.d)"
            ) from None
    return ".".join(out)


def _port(raw: str, scheme: str) -> int | None:
    if raw == "":
        return DEFAULT_PORTS.get(scheme)
    if not raw.isascii() or not raw.isdigit():
        raise UrlError(f"the URL's port {raw!r} is not a number")
    port = int(raw)
    if port > 65535:
        raise UrlError(f"the URL's port {port} is out of range (0-65535)")
    return port


@lru_cache(maxsize=4096)  # (a tool's validated URL is judged again by the policy)
def canonical_url(text: str) -> CanonicalUrl:
    """The canonical form of the URL *text* (see the module docstring), or :class:`UrlError`."""
    if not isinstance(text, str):
        raise UrlError("a URL must be text")
    stripped = text.strip(_EDGES).translate(_TAB_NEWLINE)
    m = _SCHEME.match(stripped)
    if m is None:
        raise UrlError(f"{_shown(text)} is not an absolute URL (it needs a scheme, like https://)")
    scheme = m.group(1).lower()
    rest = stripped[m.end() :].partition("#")[0]
    if scheme in _SPECIAL or scheme == "file":
        before, mark, query_text = rest.partition("?")
        rest = before.replace("\\", "/") + mark + query_text
        if scheme != "file" or rest.startswith("//"):
            rest = rest.lstrip("/") if scheme != "file" else rest[2:]
            hierarchical = True
        else:
            hierarchical = False
    elif rest.startswith("//"):
        rest, hierarchical = rest[2:], True
    else:
        hierarchical = False
    if not hierarchical:  # an opaque URL (mailto:, urn:) or file:/path: no authority
        body, mark, query_text = rest.partition("?")
        path = _normalise(body, _PATH_SAFE, "path")
        if scheme == "file":
            path = _dot_segments(path)
        q = _normalise(query_text, _QUERY_SAFE, "query") if mark and query_text else None
        return CanonicalUrl(
            text=f"{scheme}:{'//' if scheme == 'file' else ''}{path}" + (f"?{q}" if q else ""),
            scheme=scheme,
            host="",
            port=None,
            path=path,
            query=q,
        )
    end = len(rest)
    for stop in "/?":
        at = rest.find(stop)
        if at != -1:
            end = min(end, at)
    authority, remainder = rest[:end], rest[end:]
    userinfo, at_sign, hostport = authority.rpartition("@")
    if not at_sign:
        userinfo = ""
    if hostport.startswith("["):
        close = hostport.find("]")
        host_raw = hostport[: close + 1] if close != -1 else hostport
        after = hostport[len(host_raw) :]
        if after and not after.startswith(":"):
            raise UrlError(f"the URL's host {hostport!r} has text after its closing bracket")
        port_raw = after[1:]
    else:
        host_raw, _, port_raw = hostport.partition(":")
    host = _host(host_raw, scheme)
    port = _port(port_raw, scheme)
    path_raw, mark, query_raw = remainder.partition("?")
    path = _dot_segments(_normalise(path_raw, _PATH_SAFE, "path"))
    query = _normalise(query_raw, _QUERY_SAFE, "query") if mark and query_raw else None
    shown_port = "" if port is None or port == DEFAULT_PORTS.get(scheme) else f":{port}"
    return CanonicalUrl(
        text=f"{scheme}://{host}{shown_port}{path}" + ("" if query is None else f"?{query}"),
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        query=query,
        userinfo=_normalise(userinfo, _USERINFO_SAFE, "user name"),
    )


def _shown(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:200] + "…")


def web_url(text: str) -> str:
    """The canonical text of an http(s) URL a web tool may be given, or :class:`UrlError`.

    Credentials in the URL (``user:password@``) are refused: they belong in an
    ``Authorization`` header, where the policy sees them.
    """
    url = canonical_url(text)
    if url.scheme not in ("http", "https"):
        raise UrlError(f"{_shown(text)}: only http and https URLs can be fetched")
    if url.userinfo:
        raise UrlError(
            f"{_shown(url.text)}: the URL carries a user name or password; send credentials "
            "in an Authorization header instead"
        )
    return url.text


# -- paths -------------------------------------------------------------------------------


class PathError(ValueError):
    """A path that leads outside the workspace or cannot be resolved; says why."""


@dataclass(frozen=True)
class CanonicalPath:
    """Where a path argument leads: the file a tool would open."""

    relative: str  # POSIX path relative to the workspace ("." for the workspace itself)
    absolute: str  # the real absolute path, every symbolic link followed


def resolve_path(workspace: str | os.PathLike[str], text: str) -> tuple[str, str]:
    """``(real workspace, real absolute path)`` of the path *text* inside *workspace*,
    or :class:`PathError` saying why not.

    *text* is stripped of surrounding whitespace (an empty one is the workspace),
    ``~`` is expanded, and it is taken relative to the workspace unless absolute. Every
    symbolic link is followed, including a dangling one in the last component (so a
    write through it is judged by where it would land) and symlinked directories in the
    middle; ``..`` is resolved after the links, as the OS would. This is what
    :func:`errands.tools.workspace.resolve_inside` -- and so every file tool -- does.
    """
    if "\x00" in text:
        raise PathError("paths cannot contain NUL characters")
    root = os.path.realpath(workspace)
    given = os.path.expanduser(text.strip() or ".")
    candidate = given if os.path.isabs(given) else os.path.join(root, given)
    try:
        resolved = os.path.realpath(candidate)
    except OSError as exc:  # a link changed while being resolved (lstat, then readlink)
        raise PathError(f"{text!r} changed while it was being resolved: {exc.strerror}") from None
    prefix = root if root.endswith(os.sep) else root + os.sep
    if resolved == root or resolved.startswith(prefix):
        return root, resolved
    lexical = os.path.normpath(candidate)
    if lexical == root or lexical.startswith(prefix):
        raise PathError(
            f"{text!r} leads outside the workspace through a symbolic link; "
            "only paths inside the workspace can be used"
        )
    raise PathError(f"{text!r} is outside the workspace; use a path relative to the workspace")


def canonical_path(text: str, workspace: str | os.PathLike[str]) -> CanonicalPath:
    """The canonical form of the path *text* inside *workspace* (:func:`resolve_path`,
    expressed relative to the workspace), or :class:`PathError`."""
    root, resolved = resolve_path(workspace, text)
    if resolved == root:
        return CanonicalPath(relative=".", absolute=resolved)
    relative = resolved[len(root) :].lstrip(os.sep)
    return CanonicalPath(relative=relative.replace(os.sep, "/"), absolute=resolved)


# -- patterns ----------------------------------------------------------------------------

_PATTERN_HEAD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-*?\[\]]*)://([^/?]*)(.*)$", re.DOTALL)
_GLOB = frozenset("*?[")


def _pattern_percent(text: str) -> str:
    """Normalise the percent-escapes of a glob's URL part (globs are left alone)."""

    def fix(m: re.Match[str]) -> str:
        decoded = chr(int(m.group(1), 16))
        return decoded if decoded in _UNRESERVED else "%" + m.group(1).upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", fix, text)


@lru_cache(maxsize=1024)
def url_pattern(glob: str) -> str:
    """A rule's URL glob, spelled like the canonical URLs it is matched against.

    A glob that starts with ``scheme://`` has its scheme in lower case and its
    percent-escapes normalised; when its host part holds no glob character, the host is
    canonical too (lower case, IDNA, no trailing dot, no default port) and ``/`` is
    added if it names no path. Any other glob is used as written -- so write host names
    in lower case.
    """
    m = _PATTERN_HEAD.match(glob.strip())
    if m is None:
        return glob
    scheme, authority, rest = m.group(1).lower(), m.group(2), m.group(3)
    if _GLOB & set(authority) or _GLOB & set(scheme):
        return f"{scheme}://{authority.lower()}{_pattern_percent(rest)}"
    try:
        parsed = canonical_url(f"{scheme}://{authority}/")
    except UrlError:
        return glob  # it cannot name a canonical URL, so it matches none
    return parsed.origin + _pattern_percent(rest or "/")


@lru_cache(maxsize=1024)
def path_pattern(glob: str) -> str:
    """A rule's path glob, spelled like the canonical paths it is matched against:
    surrounding whitespace removed, ``./`` and empty segments dropped. A glob that
    starts with ``/`` is matched against the real absolute path; any other, against the
    path relative to the workspace."""
    text = glob.strip()
    absolute = text.startswith("/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    joined = "/".join(parts)
    if text.endswith("/") and parts:
        joined += "/"
    return ("/" + joined) if absolute else (joined or ".")
