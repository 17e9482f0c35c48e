"""The egress proxy reads where a request goes, however the request spells it.

Requests are sent to errands' proxy directly on its unix socket (no sandbox: the proxy is
the guard here). ``ok.test`` is allowed, ``evil.test`` is not; both resolve to loopback
addresses the network guard allows (127.0.0.1 and 127.0.0.2, a server on each, the same
port), so only the proxy's reading of the request stands between them. Hypothesis builds
request lines and headers from spellings that have fooled URL parsers -- userinfo,
fragments, a trailing dot, case, ports, a Host header that disagrees, an absolute URL in
a CONNECT -- and the evil server must never see a request. Negative control
(``HostHeaderProxy``): a proxy that checks the request line but connects to the Host
header's host; hypothesis finds the spelling that gets through.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.upstream import Upstream, upstream
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from errands.config import NetworkSettings, Settings
from errands.tools.netguard import egress_entries
from errands.tools.sandbox.proxy import EgressProxy


class HostHeaderProxy(EgressProxy):
    """The control: checks the request line, then connects where the Host header says."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        hosts = [
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"host:")
        ]
        target = head.split(b" ")[1].decode()
        allowed = "ok.test" in target.split("/")[2] if "//" in target else False
        if not allowed or not hosts:
            await super()._handle(_Replay(head, reader), writer)  # type: ignore[arg-type]
            return
        host, _, port = hosts[0].rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        up_writer.write(head)
        await up_writer.drain()
        writer.write(await up_reader.read(65536))
        up_writer.close()


class _Replay:
    """A reader that gives back the head already read, then the rest."""

    def __init__(self, head: bytes, reader: asyncio.StreamReader) -> None:
        self.head, self.reader = head, reader

    async def readuntil(self, sep: bytes) -> bytes:
        head, self.head = self.head, b""
        return head

    async def read(self, n: int) -> bytes:
        return await self.reader.read(n)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Upstream, Upstream]]:
    with upstream("127.0.0.1") as ok, upstream("127.0.0.2", ok.port) as evil:
        yield ok, evil


@pytest.fixture(scope="module", autouse=True)
def names() -> Iterator[None]:
    real = socket.getaddrinfo
    where = {"ok.test": "127.0.0.1", "evil.test": "127.0.0.2"}

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.rstrip(".").lower() if isinstance(host, str) else host
        return real(where.get(name, host), port, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", resolve)
        yield


HOSTS = st.sampled_from(
    [
        "ok.test",
        "OK.TEST",
        "ok.test.",
        "evil.test",
        "ok.test@evil.test",
        "evil.test#@ok.test",
        "evil.test\\@ok.test",
        "ok.test.evil.test",
        "evil.test/ok.test",
        "evil.test?ok.test",
        "ok.test%2F@evil.test",
        "evil.test%00ok.test",
        "[ok.test]",
        "ok.test:{port}@evil.test",
        "evil.test:{port}#ok.test",
    ]
)


@st.composite
def requests(draw: st.DrawFn, port: int) -> bytes:
    host = draw(HOSTS).format(port=port)
    host_port = f"{host}:{port}" if draw(st.booleans()) else host
    method = draw(st.sampled_from(["GET", "CONNECT", "POST"]))
    if method == "CONNECT":
        target = draw(st.sampled_from([f"{host}:{port}", f"http://{host_port}/", host_port]))
    else:
        path = draw(st.sampled_from(["/", "/x", "@evil.test/", "#", "?a=ok.test"]))
        target = f"http://{host_port}{path}"
    header = draw(st.sampled_from(["ok.test", "evil.test"])) + f":{port}"
    return f"{method} {target} HTTP/1.1\r\nHost: {header}\r\n\r\n".encode()


async def _send(proxy_class: type[EgressProxy], request: bytes, port: int) -> bytes:
    settings = Settings(
        network=NetworkSettings(
            allow_private=["127.0.0.0/8"], egress_allow=[f"ok.test:{port}"], timeout_seconds=3
        )
    )
    with tempfile.TemporaryDirectory(prefix="errands-proxy-test-") as tmp:
        proxy = proxy_class(settings, egress_entries([f"ok.test:{port}"]))
        path = Path(tmp) / "proxy.sock"
        await proxy.start(path)
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(request)
            writer.write_eof()  # (a tunnel then ends too, when the server sees the end)
            answer = await asyncio.wait_for(reader.read(), timeout=5)  # to the end
            writer.close()
            return answer
        finally:
            await proxy.close()


def _reaches_evil(
    proxy_class: type[EgressProxy], servers: tuple[Upstream, Upstream], request: bytes
) -> bool:
    _, evil = servers
    before = len(evil.requests)
    asyncio.run(_send(proxy_class, request, evil.port))
    return len(evil.requests) > before


def test_no_spelling_reaches_a_host_outside_the_list(servers: tuple[Upstream, Upstream]) -> None:
    ok, _ = servers

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=requests(ok.port))
    def check(request: bytes) -> None:
        assert not _reaches_evil(EgressProxy, servers, request), request

    before = len(ok.requests)
    check()
    assert len(ok.requests) - before >= 3  # it did not refuse everything
    assert b"upstream-ok" in asyncio.run(
        _send(EgressProxy, f"GET http://ok.test:{ok.port}/ HTTP/1.1\r\n\r\n".encode(), ok.port)
    )


def test_negative_control_a_proxy_trusting_the_host_header_is_fooled(
    servers: tuple[Upstream, Upstream],
) -> None:
    ok, _ = servers
    found = find(
        requests(ok.port),
        lambda request: _reaches_evil(HostHeaderProxy, servers, request),
        settings=settings(max_examples=300, deadline=None),
    )
    assert b"Host: evil.test" in found
