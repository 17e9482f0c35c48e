"""The network guard: which addresses the network tools may reach, enforced at connect time.

Only ``http`` and ``https``. A host is resolved and *every* address it resolves to must
be public, unless the address is listed in ``settings.network.allow_private`` (IPs or
networks). Refused: private, loopback, link-local, unspecified, multicast and reserved
addresses, the same hidden inside IPv6 (IPv4-mapped, NAT64, 6to4, Teredo), and the cloud
metadata addresses -- those only pass when listed *exactly*, a broad network in the
allow-list does not open them. The port of any errands server on this machine (its own,
``settings.server_port``, and every one published in :mod:`errands.registry`) is refused
on every local address whatever the allow-list says. Numeric host spellings other than dotted-decimal
(``2130706433``, ``0177.0.0.1``, ``0x7f.1``) are refused outright.

``[network] egress_allow`` (:class:`EgressEntry`: ``host``, ``*.domain``, ``host:port``;
no port means 80 and 443) is the one egress policy: when it is set, the network tools
reach only the hosts it lists, and the shell's sandbox never reaches anything else
(through errands' proxy, :mod:`errands.tools.sandbox.proxy`, which applies this guard
too; with the list empty, the shell has no network at all).

The check that matters runs where the socket is opened: :class:`GuardedTransport`
resolves the host itself, vets every address and connects to a vetted address only,
so a DNS answer that changes between a check and the connection (DNS rebinding)
gains nothing. :func:`guarded_request` follows redirects by hand, at most five, each
one checked again; proxies from the environment are never used.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpcore
import httpx

from errands import registry
from errands.tools.tool import ToolError

if TYPE_CHECKING:
    from errands.config import Settings

__all__ = [
    "MAX_REDIRECTS",
    "METADATA_ADDRESSES",
    "EgressEntry",
    "Fetched",
    "GuardedTransport",
    "NetworkRefused",
    "acheck_url",
    "address_refusal",
    "check_url",
    "egress_allowed",
    "egress_entries",
    "guarded_client",
    "guarded_request",
    "host_within",
    "resolve_vetted",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean ...
        "fd00:ec2::254",  # AWS over IPv6
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)

# Not public, though older Pythons' ipaddress does not always say so.
_EXTRA_NON_PUBLIC: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4")
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

_NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")
_EGRESS_HOST = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|[0-9a-f:.]*:[0-9a-f:.]*")


class NetworkRefused(ToolError):
    """The network guard refused a URL or an address; the message says which and why."""

    kind = "network_refused"


# -- addresses ---------------------------------------------------------------------------


def _parse_address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and may be translated to on the way)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _special(ip: IPAddress) -> str | None:
    """Why *ip* is not a public address, or None if it is."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_v4(ip):
            reason = _special(inner)
            if reason is not None:
                return f"an IPv6 address wrapping {inner}, {reason}"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private or any(ip in net for net in _EXTRA_NON_PUBLIC if net.version == ip.version):
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if not ip.is_global:
        return "not a public address"
    return None


def _allow_list(entries: Iterable[str]) -> list[IPNetwork]:
    networks: list[IPNetwork] = []
    for entry in entries:
        try:
            net = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise NetworkRefused(
                f"network.allow_private: {entry!r} is not an IP address or network; "
                "fix the configuration"
            ) from None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
            mapped = net.network_address.ipv4_mapped
            if mapped is not None:  # ::ffff:a.b.c.d/n is listed as a.b.c.d
                net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
        networks.append(net)
    return networks


def _is_local(ip: IPAddress) -> bool:
    """Is *ip* an address of this machine (loopback, unspecified, or bound to an interface)?"""
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError as exc:
        # EADDRNOTAVAIL: not ours. No IPv6 here: unreachable anyway. Anything else: be careful.
        return exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    return True


def _errands_server(port: int, settings: Settings) -> str | None:
    """Which errands server listens on *port* on this machine, or None."""
    if settings.server_port is not None and port == settings.server_port:
        return "errands' own server"
    home = registry.published_ports().get(port)
    if home is None:
        return None
    if os.path.realpath(home) == os.path.realpath(settings.home):  # (from a worker of it)
        return "errands' own server"
    return f"an errands server (errands up for {home})"


def address_refusal(address: str, port: int, settings: Settings) -> str | None:
    """Why the guard refuses to connect to *address*:*port*, or None if it may.

    Args:
        address: an IP address, as resolved.
        port: the TCP port.
        settings: the errands settings (allow-list, server port).
    """
    ip = _unmapped(_parse_address(address))
    server = _errands_server(port, settings)
    if server is not None and _is_local(ip):
        return f"{ip} port {port} is {server}; errands never reaches an errands server's API"
    reason = _special(ip)
    if reason is None:
        return None
    allowed = _allow_list(settings.network.allow_private)
    if ip in METADATA_ADDRESSES:
        exact = ipaddress.ip_network(ip)
        if exact in allowed:
            return None
        return f"{ip} is {reason} (list it exactly in network.allow_private to allow it)"
    if any(ip in net for net in allowed if net.version == ip.version):
        return None
    return f"{ip} is {reason} (not in network.allow_private)"


# -- URLs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int


def _target(url: str | httpx.URL) -> _Target:
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise NetworkRefused(f"{url!s} is not a valid URL: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise NetworkRefused(f"{url!s}: only http and https URLs can be fetched")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise NetworkRefused(f"{url!s}: the URL has no host")
    _refuse_numeric_tricks(host, str(url))
    return _Target(scheme, host, parsed.port or (443 if scheme == "https" else 80))


def _refuse_numeric_tricks(host: str, url: str) -> None:
    if ":" in host:  # an IPv6 literal; ipaddress reads it canonically
        return
    labels = host.rstrip(".").split(".")
    if all(_NUMERIC_LABEL.match(label) for label in labels):
        try:
            ipaddress.IPv4Address(host.rstrip("."))
        except ValueError:
            raise NetworkRefused(
                f"{url}: {host!r} is a numeric host in an unusual form; "
                "write IPv4 addresses as four decimal numbers (a.b.c.d)"
            ) from None


# -- the egress allow-list ---------------------------------------------------------------


@dataclass(frozen=True)
class EgressEntry:
    """One entry of an egress list: a host (or ``*.`` and a domain: its subdomains), and a
    port (None: 80 and 443)."""

    host: str
    port: int | None
    subdomains: bool

    @classmethod
    def parse(cls, text: str) -> EgressEntry:
        entry = text.strip().lower()
        port: int | None = None
        head, sep, tail = entry.rpartition(":")
        if sep and tail.isdigit() and (":" not in head or head.endswith("]")):
            entry, port = head, int(tail)  # (a bare IPv6 address has no port)
        subdomains = entry.startswith("*.")
        host = entry.removeprefix("*.").strip("[]").rstrip(".")
        if (
            not _EGRESS_HOST.fullmatch(host)
            or (":" in host and subdomains)
            or (port is not None and not 0 < port < 65536)
        ):
            raise NetworkRefused(
                f"{text!r} is not a host, *.domain or host:port (no scheme, no path)"
            )
        return cls(host, port, subdomains)

    def matches(self, host: str, port: int) -> bool:
        name = host.strip("[]").rstrip(".").lower()
        if self.port is None and port not in (80, 443):
            return False
        if self.port is not None and port != self.port:
            return False
        return name.endswith("." + self.host) if self.subdomains else name == self.host

    def covered_by(self, other: EgressEntry) -> bool:
        """Does *other* allow everything this entry allows?"""
        if other.port is not None and self.port != other.port:
            return False
        if other.subdomains:
            return self.host.endswith("." + other.host)
        return not self.subdomains and self.host == other.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return ("*." if self.subdomains else "") + host + (f":{self.port}" if self.port else "")


def egress_entries(texts: Iterable[str]) -> list[EgressEntry]:
    """Parsed egress entries; a malformed one is refused (:class:`NetworkRefused`)."""
    return [EgressEntry.parse(t) for t in texts]


def egress_allowed(host: str, port: int, entries: Iterable[EgressEntry]) -> bool:
    return any(e.matches(host, port) for e in entries)


def host_within(host: str, hosts: Iterable[str]) -> bool:
    """Is *host* one of *hosts* or a subdomain of one (a secret's ``hosts``)?"""
    name = host.strip("[]").rstrip(".").lower()
    for allowed in hosts:
        a = allowed.strip().strip(".").lower()
        if a and (name == a or name.endswith("." + a)):
            return True
    return False


def _egress_refusal(target: _Target, settings: Settings) -> str | None:
    allow = settings.network.egress_allow
    if not allow or egress_allowed(target.host, target.port, egress_entries(allow)):
        return None
    return f"{target.host} port {target.port} is not in network.egress_allow"


def _vet(target: _Target, addresses: Iterable[str], settings: Settings) -> list[str]:
    outside = _egress_refusal(target, settings)
    if outside is not None:
        raise NetworkRefused(f"refused to connect to {target.host}: {outside}")
    unique = list(dict.fromkeys(addresses))
    if not unique:
        raise NetworkRefused(f"{target.host} did not resolve to any address")
    for address in unique:
        reason = address_refusal(address, target.port, settings)
        if reason is not None:
            raise NetworkRefused(f"refused to connect to {target.host}: {reason}")
    return unique


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[str]:
    out: list[str] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        out.append(str(sockaddr[0]))
    return out


def check_url(url: str, settings: Settings) -> None:
    """Refuse (:class:`NetworkRefused`) a URL the network tools may not reach.

    Resolves the host now; the connection itself is checked again by
    :class:`GuardedTransport`, so this is an early, clear answer, not the only guard.
    """
    target = _target(url)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NetworkRefused(f"{url}: cannot resolve {target.host}: {exc}") from None
    _vet(target, _addresses(infos), settings)


async def acheck_url(url: str | httpx.URL, settings: Settings) -> list[str]:
    """:func:`check_url` without blocking the event loop; the vetted addresses."""
    target = _target(url)
    return await _resolve_vetted(target, settings)


async def resolve_vetted(host: str, port: int, settings: Settings) -> list[str]:
    """The addresses of *host* the guard lets a connection to *port* go to (every one it
    resolves to must pass); connect to one of these, never to the name again."""
    target = _Target("tcp", host.strip("[]"), port)
    _refuse_numeric_tricks(target.host, host)
    return await _resolve_vetted(target, settings)


async def _resolve_vetted(target: _Target, settings: Settings) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NetworkRefused(f"cannot resolve {target.host}: {exc}") from None
    return _vet(target, _addresses(infos), settings)


# -- the transport -----------------------------------------------------------------------


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the guard vetted, resolved right here."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner = httpcore.AnyIOBackend()
        self.connected: list[str] = []  # the addresses actually connected to

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve_vetted(host, port, self._settings)
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            self.connected.append(address)
            return stream
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise NetworkRefused("the network tools do not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context(trust_env=False)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose every TCP connection goes to a vetted address only."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        self.backend = _GuardedBackend(settings)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(), network_backend=self.backend, max_connections=10
        )

    @property
    def reached_non_public(self) -> bool:
        """Did a connection go to an address that is not public (allowed by the allow-list)?"""
        return any(_special(_unmapped(_parse_address(a))) for a in self.backend.connected)


def guarded_client(
    settings: Settings, transport: GuardedTransport | None = None
) -> httpx.AsyncClient:
    """An httpx client that reaches only what the guard allows; redirects are not followed."""
    return httpx.AsyncClient(
        transport=transport or GuardedTransport(settings),
        trust_env=False,
        follow_redirects=False,
        timeout=settings.network.timeout_seconds,
        headers={"User-Agent": "errands/0.1"},
    )


# -- one request, redirects followed by hand ---------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A response read through the guard, its body capped."""

    url: str  # where the body came from, after redirects
    status: int
    reason: str
    headers: httpx.Headers
    body: bytes
    truncated: bool  # the body was longer than the cap
    encoding: str | None  # the charset the response declared
    redirects: tuple[str, ...]
    reached_non_public: bool  # an allow-listed private address was reached


# the caller's headers a redirect to another origin may carry: they ask for a
# representation and say nothing about who asks; every other one (Authorization, Cookie,
# an API key in X-Whatever, a watch's secret) stays with the origin it was meant for
_PORTABLE_HEADERS = frozenset({"accept", "accept-language", "user-agent", "cache-control"})


async def guarded_request(
    method: str,
    url: str,
    settings: Settings,
    *,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    follow_redirects: bool = True,
    max_bytes: int | None = None,
) -> Fetched:
    """Send one request through the guard and read the response, at most *max_bytes*.

    Redirects (when followed) are followed by hand, at most :data:`MAX_REDIRECTS`, each
    target checked like the first; only headers that say nothing about who asks
    (:data:`_PORTABLE_HEADERS`) are carried to another origin -- no credential, no API
    key, no secret. The whole exchange must finish within ``network.timeout_seconds``.
    """
    limit = max_bytes if max_bytes is not None else settings.network.max_response_bytes
    seconds = settings.network.timeout_seconds
    send_headers = dict(headers or {})
    _target(url)  # a malformed or non-http URL is refused here, clearly
    current = httpx.URL(url)
    hops: list[str] = []
    transport = GuardedTransport(settings)
    try:
        async with guarded_client(settings, transport) as client, asyncio.timeout(seconds):
            while True:
                await acheck_url(current, settings)  # early and clear; the transport re-checks
                request = client.build_request(
                    method, current, headers=send_headers, content=content
                )
                response = await client.send(request, stream=True)
                try:
                    if follow_redirects and response.has_redirect_location:
                        if len(hops) >= MAX_REDIRECTS:
                            raise NetworkRefused(
                                f"{url}: more than {MAX_REDIRECTS} redirects; stopped at {current}"
                            )
                        try:
                            target = current.join(response.headers["location"])
                        except httpx.InvalidURL as exc:
                            raise NetworkRefused(
                                f"{current}: redirects to an invalid URL: {exc}"
                            ) from None
                        if (target.scheme, target.host, target.port) != (
                            current.scheme,
                            current.host,
                            current.port,
                        ):
                            send_headers = {
                                k: v
                                for k, v in send_headers.items()
                                if k.lower() in _PORTABLE_HEADERS
                            }
                        if response.status_code not in (307, 308):
                            content = None
                        hops.append(str(target))
                        current = target
                        continue
                    body, truncated = await _read_capped(response, limit)
                    return Fetched(
                        url=str(current),
                        status=response.status_code,
                        reason=response.reason_phrase,
                        headers=response.headers,
                        body=body,
                        truncated=truncated,
                        encoding=response.charset_encoding,
                        redirects=tuple(hops),
                        reached_non_public=transport.reached_non_public,
                    )
                finally:
                    await response.aclose()
    except TimeoutError:
        raise ToolError(f"{url}: no complete response within {seconds:g} seconds") from None
    except httpx.TimeoutException:
        raise ToolError(f"{url}: timed out after {seconds:g} seconds") from None
    except httpx.HTTPError as exc:
        raise ToolError(f"{url}: request failed: {type(exc).__name__}: {exc}") from None


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False
