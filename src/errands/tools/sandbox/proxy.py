"""errands' egress proxy: the sandbox's only way out.

One proxy per shell call that may reach the network, listening on a unix socket that is
bound into the sandbox (its network namespace stays unshared; a bridge inside,
:mod:`errands.tools.sandbox.bridge`, listens on the sandbox's own loopback and forwards
each connection to the socket). It speaks HTTP ``CONNECT`` (for TLS) and plain HTTP with
an absolute URL, and for each connection:

1. the host and port must be in the call's egress list, in ``[network] egress_allow``
   and -- when the call carries secrets -- among the ``hosts`` of every one of them;
2. the proxy resolves the name itself and vets every address with errands' network guard
   (:func:`errands.tools.netguard.resolve_vetted`: no private, loopback, link-local or
   metadata address unless ``allow_private`` says so, never an errands server's port);
3. it connects to an address it vetted -- never to the name again, so a DNS answer that
   changes in between (rebinding) gains nothing;
4. it counts the bytes both ways against the call's budget (``egress_max_bytes``) and
   closes every connection when the budget is spent; at most :data:`MAX_CONNECTIONS` are
   open at once (each holds two of errands' file descriptors);
5. it logs the connection (:class:`Connection`: host, port, address, bytes,
   allowed or denied and why), which the shell's result shows.

Raw TCP, UDP and DNS have no way out: inside the sandbox only the bridge's loopback
port leads anywhere, and it leads here.

:class:`EgressProxy` is subclassed by tests (a proxy without the guard, as a control).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from errands.tools.netguard import (
    EgressEntry,
    NetworkRefused,
    egress_allowed,
    egress_entries,
    host_within,
    resolve_vetted,
)
from errands.tools.sandbox.bridge import pipe

if TYPE_CHECKING:
    from errands.config import Settings

__all__ = ["Connection", "EgressProxy", "SecretHosts"]

HEAD_SECONDS = 30.0  # to send it
MAX_LINES = 50  # connections shown one by one in the result
MAX_CONNECTIONS = 64  # open at once, per call: the sandbox cannot spend errands' descriptors
_HOP_HEADERS = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")


@dataclass(frozen=True)
class SecretHosts:
    """A secret a call carries (or an earlier call left in its workspace), by name, and
    the hosts it may go to."""

    name: str
    hosts: tuple[str, ...]
    earlier: bool = False  # given to an earlier call in this workspace, not to this one


@dataclass
class Connection:
    """One connection the sandbox asked for: what came of it."""

    method: str  # CONNECT, GET, ...
    host: str
    port: int
    allowed: bool = False
    why: str = ""  # why it was denied, or how it ended
    address: str = ""  # the vetted address connected to
    sent: int = 0  # bytes from the sandbox out
    received: int = 0  # bytes back into the sandbox

    def line(self) -> str:
        if not self.allowed:
            return f"denied  {self.method} {self.host}:{self.port}: {self.why}"
        via = f" ({self.address})" if self.address and self.address != self.host else ""
        end = f"; {self.why}" if self.why else ""
        return (
            f"allowed {self.method} {self.host}:{self.port}{via}: "
            f"{self.sent} bytes out, {self.received} in{end}"
        )


class _Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class EgressProxy:
    """A filtering HTTP proxy on a unix socket, for one shell call."""

    def __init__(
        self,
        settings: Settings,
        egress: Sequence[EgressEntry],
        secrets: Sequence[SecretHosts] = (),
    ) -> None:
        self.settings = settings
        self.egress = list(egress)
        self.configured = egress_entries(settings.network.egress_allow)
        self.secrets = list(secrets)
        self.budget = settings.network.egress_max_bytes
        self.used = 0
        self.log: list[Connection] = []  # the first MAX_LINES connections
        self.more = self.more_denied = 0  # and how many after them (memory stays bounded)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the policy (overridden by the tests' unguarded control) --------------------------
    def refusal(self, host: str, port: int) -> str | None:
        """Why the sandbox may not reach *host*:*port* at all (before any resolving)."""
        if not egress_allowed(host, port, self.egress):
            return "not in this call's egress list"
        if not egress_allowed(host, port, self.configured):
            return "not in network.egress_allow"
        for secret in self.secrets:
            if not host_within(host, secret.hosts):
                holds = (
                    f"its workspace was given the secret {secret.name} by an earlier call"
                    if secret.earlier
                    else f"the call carries the secret {secret.name}"
                )
                return f"{holds}, which may go only to {', '.join(secret.hosts) or 'nowhere'}"
        return None

    async def open_upstream(
        self, host: str, port: int
    ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve *host*, vet every address, connect to a vetted one."""
        addresses = await resolve_vetted(host, port, self.settings)
        failure: OSError | None = None
        for address in addresses:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(address, port),
                    timeout=self.settings.network.timeout_seconds,
                )
            except (OSError, TimeoutError) as exc:
                failure = exc if isinstance(exc, OSError) else OSError("timed out")
                continue
            return address, reader, writer
        raise failure or OSError("no address to connect to")

    # -- serving ---------------------------------------------------------------------------
    async def start(self, path: Path) -> None:
        """Listen on the unix socket *path*, for errands' own user only (the sandbox's
        user is that user outside its namespace): no other user of the machine may use
        errands' way out."""
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Stop listening and end every connection (closed first; what is still running
        two seconds later is cancelled)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            _, running = await asyncio.wait(set(self._tasks), timeout=2)
            for task in running:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)

    def lines(self) -> list[str]:
        """The log, one line per connection: the first :data:`MAX_LINES`, then how many
        more."""
        shown = [c.line() for c in self.log]
        if self.more:
            shown.append(f"... and {self.more} more connections ({self.more_denied} denied)")
        return shown

    def _logged(self, entry: Connection) -> bool:
        if len(self.log) < MAX_LINES:
            self.log.append(entry)
            return True
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:  # each holds two of errands' descriptors
            await _answer(writer, 503, f"at most {MAX_CONNECTIONS} connections at once")
            writer.close()
            return
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(_read_head(reader), timeout=HEAD_SECONDS)
        except (TimeoutError, ValueError):
            await _answer(writer, 400, "the proxy expects an HTTP request")
            return
        lines = head.split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            await _answer(writer, 400, "the proxy expects an HTTP request")
            return
        try:
            host, port, first = _destination(method, target, version)
        except _Refused as exc:
            await _answer(writer, exc.status, exc.why)
            return
        entry = Connection(method.upper(), host, port)
        if self._logged(entry):
            await self._connect(entry, reader, writer, lines, first)
            return
        try:
            await self._connect(entry, reader, writer, lines, first)
        finally:
            self.more += 1
            self.more_denied += not entry.allowed

    async def _connect(
        self,
        entry: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        lines: list[bytes],
        first: bytes | None,
    ) -> None:
        """Apply the policy and the guard to *entry*, then carry the connection."""
        host, port = entry.host, entry.port
        why = self.refusal(host, port)
        if why is not None:
            entry.why = why
            await _answer(writer, 403, f"errands' egress policy refuses {host}:{port}: {why}")
            return
        try:
            entry.address, up_reader, up_writer = await self.open_upstream(host, port)
        except NetworkRefused as exc:
            entry.why = str(exc)
            await _answer(writer, 403, f"errands' network guard: {exc}")
            return
        except OSError as exc:
            entry.allowed, entry.why = True, f"could not connect: {exc}"
            await _answer(writer, 502, f"could not connect to {host}:{port}: {exc}")
            return
        entry.allowed = True
        self._writers.add(up_writer)
        try:
            if first is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                rest = [ln for ln in lines[1:] if ln and not _is_hop(ln)]
                out = b"\r\n".join([first, *rest, b"Connection: close", b"", b""])
                if not self._spend(entry, len(out), outgoing=True):
                    return
                up_writer.write(out)
            await asyncio.gather(
                pipe(reader, up_writer, lambda n: self._spend(entry, n, outgoing=True)),
                pipe(up_reader, writer, lambda n: self._spend(entry, n, outgoing=False)),
            )
        finally:
            self._writers.discard(up_writer)
            up_writer.close()

    def _spend(self, entry: Connection, size: int, *, outgoing: bool) -> bool:
        self.used += size
        if outgoing:
            entry.sent += size
        else:
            entry.received += size
        if self.used > self.budget:
            if not entry.why:
                entry.why = f"cut off: the call's {self.budget} bytes of egress are spent"
            for w in list(self._writers):
                w.close()
            return False
        return True


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The request's head (its stream's limit, 64 KiB, caps it); what follows stays."""
    try:
        return (await reader.readuntil(b"\r\n\r\n"))[:-4]
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise ValueError("no complete head") from None


def _is_hop(line: bytes) -> bool:
    return line.split(b":", 1)[0].strip().lower() in _HOP_HEADERS


def _destination(method: str, target: str, version: str) -> tuple[str, int, bytes | None]:
    """Where a request goes: host, port, and for plain HTTP the request line to send on
    (None for CONNECT)."""
    if not version.startswith("HTTP/1."):
        raise _Refused(400, "the proxy speaks HTTP/1.x")
    if method.upper() == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
            raise _Refused(400, f"CONNECT {target}: write host:port")
        return host.strip("[]").lower(), int(port), None
    try:
        parts = urlsplit(target)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        raise _Refused(400, f"{target}: not a valid URL") from None
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise _Refused(400, f"{target}: the proxy forwards http:// URLs (https goes by CONNECT)")
    try:
        number = parts.port or 80
    except ValueError:
        raise _Refused(400, f"{target}: not a valid port") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname.lower(), number, f"{method} {path} {version}".encode("latin-1")


async def _answer(writer: asyncio.StreamWriter, status: int, why: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}.get(status, "Busy")
    body = (why + "\n").encode("utf-8", "replace")
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()
