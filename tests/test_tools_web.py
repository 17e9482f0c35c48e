"""The web tools and the network guard, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import pytest
from helpers.kit import call as kit_call
from helpers.kit import harness_for, script
from test_shell_secrets import Recording

from errands.config import NetworkSettings, SecretSettings, Settings
from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.policy.preview import preview_of
from errands.store import Store
from errands.tools.builtin import builtin_toolset
from errands.tools.builtin.web import http_request_effect, make_http_request, secret_auth
from errands.tools.canonical import web_url
from errands.tools.netguard import NetworkRefused, check_url, guarded_client, guarded_request
from errands.tools.sandbox.secrets import secret_redactor
from errands.tools.tool import ToolArgumentError, ToolContext, ToolError, ToolOutput, make_tool
from errands.tools.toolset import FunctionToolset

PAGE = (
    b"<!doctype html><html><head><title>Listings</title><style>p{}</style></head>"
    b"<body><h1>Two bedrooms</h1><p>Rent <b>1,900</b> - <a href='/flat/7'>details</a></p>"
    b"</body></html>"
)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    port: int
    requests: list[Seen] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Handler(BaseHTTPRequestHandler):
    server_state: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = type(self).server_state
        state.requests.append(
            Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/page":
            self._reply(200, PAGE, "text/html; charset=utf-8")
        elif url.path == "/text":
            self._reply(200, "plain text, café".encode(), "text/plain; charset=utf-8")
        elif url.path == "/big":
            self._reply(200, b"x" * 200_000, "text/plain")
        elif url.path == "/binary":
            self._reply(200, bytes(range(256)) * 4, "application/octet-stream")
        elif url.path == "/redirect":
            self._reply(302, b"", "text/plain", Location=query["to"][0])
        elif url.path.startswith("/hop/"):
            n = int(url.path.rsplit("/", 1)[1])
            self._reply(302, b"", "text/plain", Location=f"/hop/{n + 1}")
        elif url.path == "/whoami":  # echoes the credential: the result must not show it
            said = self.headers.get("Authorization", "nobody")
            self._reply(200, f'{{"you": "{said}"}}'.encode(), "application/json")
        elif url.path == "/whoami-moved":  # a same-origin redirect that echoes it in the URL
            said = quote(self.headers.get("Authorization", "nobody"), safe="")
            self._reply(302, b"", "text/plain", Location=f"/whoami?was={said}")
        elif url.path == "/whoami-padded":  # the credential after PAD bytes
            said = self.headers.get("Authorization", "nobody")
            pad = "x" * int(query["pad"][0])
            self._reply(200, f"{pad}{said}".encode(), "text/plain")
        elif url.path == "/echo":
            reply = f"{self.command} {body.decode()}".encode()
            self._reply(201, reply, "application/json", X_RateLimit_Remaining="41", X_Other="no")
        else:
            self._reply(404, b"not here", "text/plain")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Server(port=httpd.server_address[1])
    Handler.server_state = state
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _fresh(server: Server) -> None:
    server.requests.clear()


def settings_for(allow: list[str] | None = None, **kw: Any) -> Settings:
    return Settings(
        network=NetworkSettings(allow_private=allow or [], timeout_seconds=5, **kw),
    )


ALLOW_LOOPBACK = ["127.0.0.1"]


@pytest.fixture
def registry() -> FunctionToolset:
    return builtin_toolset()


async def call(
    registry: FunctionToolset, settings: Settings, name: str, key: str = "e1:7", **args: Any
) -> ToolOutput:
    tool = registry.get(name)
    ctx = ToolContext("e1", 7, key, Path("."), settings)
    return await tool.invoke(tool.validate(args), ctx)


# -- fetch_url -----------------------------------------------------------------------------


async def test_fetch_html_as_readable_untrusted_text(
    registry: FunctionToolset, server: Server
) -> None:
    out = await call(registry, settings_for(ALLOW_LOOPBACK), "fetch_url", url=server.url("/page"))
    assert out.text.startswith(f"HTTP 200 OK · text/html · {server.url('/page')}\n\n")
    assert "# Two bedrooms" in out.text
    assert "Rent **1,900**" in out.text
    assert "[details](/flat/7)" in out.text
    assert "<p>" not in out.text
    assert "p{}" not in out.text  # style sheets are not text
    assert out.integrity is Integrity.untrusted
    assert out.source == server.url("/page")
    # reached through the allow-list, so not public content
    assert out.confidentiality is Confidentiality.private


async def test_fetch_caps_the_response(registry: FunctionToolset, server: Server) -> None:
    settings = settings_for(ALLOW_LOOPBACK, max_response_bytes=1000)
    out = await call(registry, settings, "fetch_url", url=server.url("/big"))
    body = out.text.split("\n\n", 1)[1]
    assert body.startswith("x" * 1000 + "\n[... cut off after 1000 bytes")
    assert "x" * 1001 not in body


async def test_fetch_does_not_show_binary(registry: FunctionToolset, server: Server) -> None:
    out = await call(registry, settings_for(ALLOW_LOOPBACK), "fetch_url", url=server.url("/binary"))
    assert out.text.endswith("[binary content, 1024 bytes, not shown]")


async def test_fetch_follows_a_redirect_and_reports_where_it_landed(
    registry: FunctionToolset, server: Server
) -> None:
    start = server.url("/redirect?to=/text")
    out = await call(registry, settings_for(ALLOW_LOOPBACK), "fetch_url", url=start)
    assert out.text.endswith("plain text, café")
    assert out.source == server.url("/text")
    assert [r.path for r in server.requests] == ["/redirect?to=/text", "/text"]


# -- the guard: what must be refused ---------------------------------------------------------


async def test_loopback_is_refused_by_default(registry: FunctionToolset, server: Server) -> None:
    with pytest.raises(NetworkRefused, match=r"127\.0\.0\.1 is a loopback address"):
        await call(registry, settings_for(), "fetch_url", url=server.url("/text"))
    assert server.requests == []


async def test_localhost_by_name_is_refused(registry: FunctionToolset, server: Server) -> None:
    with pytest.raises(NetworkRefused, match="refused to connect to localhost"):
        await call(registry, settings_for(), "fetch_url", url=f"http://localhost:{server.port}/")
    assert server.requests == []


async def test_own_server_port_is_refused_even_when_allowed(
    registry: FunctionToolset, server: Server
) -> None:
    settings = settings_for(ALLOW_LOOPBACK)
    settings.server_port = server.port
    with pytest.raises(NetworkRefused, match="errands' own server"):
        await call(registry, settings, "fetch_url", url=server.url("/text"))
    # also on the unspecified address, with everything allow-listed
    settings.network.allow_private = ["0.0.0.0/0", "::/0"]
    for url in (f"http://0.0.0.0:{server.port}/", f"http://[::ffff:127.0.0.1]:{server.port}/"):
        with pytest.raises(NetworkRefused, match="errands' own server"):
            check_url(url, settings)
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped IPv6
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[64:ff9b::a00:1]/", "wrapping 10.0.0.1"),  # NAT64
        ("http://[2002:c0a8:101::1]/", "wrapping 192.168.1.1"),  # 6to4
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://100.64.0.1/", "private"),  # carrier-grade NAT
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[fe80::1]/", "link-local"),
        ("http://2130706433/", "numeric host in an unusual form"),  # 127.0.0.1 in decimal
        ("http://0x7f000001/", "numeric host in an unusual form"),
        ("http://0x7f.0.0.1/", "numeric host in an unusual form"),
        ("http://127.1/", "numeric host in an unusual form"),
        ("http://0177.0.0.1/", "0177"),  # octal: refused as a malformed address
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1/", "only http and https"),
    ],
)
def test_refused_urls(url: str, why: str) -> None:
    with pytest.raises(NetworkRefused, match=why):
        check_url(url, settings_for())


def test_metadata_needs_an_exact_allow_entry() -> None:
    broad = settings_for(["169.254.0.0/16"])
    check_url("http://169.254.1.1/", broad)  # the broad entry opens the network ...
    with pytest.raises(NetworkRefused, match="cloud metadata"):
        check_url("http://169.254.169.254/", broad)  # ... but not the metadata service
    check_url("http://169.254.169.254/", settings_for(["169.254.169.254"]))


def test_allow_list_matches_mapped_addresses_and_rejects_garbage() -> None:
    check_url("http://[::ffff:127.0.0.1]:1/", settings_for(ALLOW_LOOPBACK))
    check_url("http://10.9.8.7/", settings_for(["10.0.0.0/8"]))
    with pytest.raises(NetworkRefused, match="not an IP address or network"):
        check_url("http://10.9.8.7/", settings_for(["intranet"]))


async def test_redirect_to_a_refused_address_is_refused(
    registry: FunctionToolset, server: Server
) -> None:
    settings = settings_for(ALLOW_LOOPBACK)
    for target in ("http://169.254.169.254/latest/", f"http://[::1]:{server.port}/text"):
        url = server.url(f"/redirect?to={target}")
        with pytest.raises(NetworkRefused):
            await call(registry, settings, "fetch_url", url=url)
    # a redirect to the server port on the same, allowed, loopback address
    settings.server_port = server.port + 1 if server.port < 65535 else server.port - 1
    url = server.url(f"/redirect?to=http://127.0.0.1:{settings.server_port}/")
    with pytest.raises(NetworkRefused, match="errands' own server"):
        await call(registry, settings, "fetch_url", url=url)
    assert all(r.path.startswith("/redirect") for r in server.requests)


async def test_too_many_redirects_are_refused(registry: FunctionToolset, server: Server) -> None:
    with pytest.raises(NetworkRefused, match="more than 5 redirects"):
        await call(registry, settings_for(ALLOW_LOOPBACK), "fetch_url", url=server.url("/hop/0"))
    assert len(server.requests) == 6


async def test_the_transport_itself_refuses_unvetted_addresses(server: Server) -> None:
    # no check_url first: the connection is vetted where it is made
    async with guarded_client(settings_for()) as client:
        with pytest.raises(NetworkRefused, match="loopback"):
            await client.get(server.url("/text"))
    assert server.requests == []


async def test_dns_rebinding_gains_nothing(
    registry: FunctionToolset, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resolver that answers with a public address first, then with 127.0.0.1 -- the
    # rebinding attack. The resolver is faked (it is not ours); the guard is real.
    real = socket.getaddrinfo
    answers = iter(["93.184.215.14"])

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            host = next(answers, "127.0.0.1")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(NetworkRefused, match=r"rebind\.test: 127\.0\.0\.1 is a loopback"):
        await call(registry, settings_for(), "fetch_url", url=f"http://rebind.test:{server.port}/")
    assert server.requests == []


# -- http_request ----------------------------------------------------------------------------


async def test_http_request_sends_the_idempotency_key(
    registry: FunctionToolset, server: Server
) -> None:
    out = await call(
        registry,
        settings_for(ALLOW_LOOPBACK),
        "http_request",
        key="e1:7",
        method="POST",
        url=server.url("/echo"),
        headers={"Content-Type": "application/json", "Authorization": "Bearer t"},
        body='{"bid": 1900}',
    )
    [seen] = server.requests
    assert seen.method == "POST"
    assert seen.headers["idempotency-key"] == "e1:7"
    assert seen.headers["authorization"] == "Bearer t"
    assert seen.body == b'{"bid": 1900}'
    assert out.text.splitlines() == [
        "HTTP 201 Created",
        "content-type: application/json",
        "content-length: 18",
        "x-ratelimit-remaining: 41",
        "",
        'POST {"bid": 1900}',
    ]
    assert out.integrity is Integrity.untrusted
    assert out.confidentiality is Confidentiality.private


async def test_http_get_follows_redirects_with_the_key_on_every_hop(
    registry: FunctionToolset, server: Server
) -> None:
    url = server.url("/redirect?to=/echo")
    out = await call(
        registry, settings_for(ALLOW_LOOPBACK), "http_request", key="k-2", method="GET", url=url
    )
    assert [(r.path, r.headers["idempotency-key"]) for r in server.requests] == [
        ("/redirect?to=/echo", "k-2"),
        ("/echo", "k-2"),
    ]
    assert out.text.splitlines()[:2] == [
        "HTTP 201 Created",
        f"(redirected to {server.url('/echo')})",
    ]


async def test_http_post_does_not_follow_a_redirect(
    registry: FunctionToolset, server: Server
) -> None:
    url = server.url("/redirect?to=/echo")
    out = await call(
        registry, settings_for(ALLOW_LOOPBACK), "http_request", method="POST", url=url, body="x"
    )
    assert out.text.splitlines()[:3] == [
        "HTTP 302 Found",
        "content-type: text/plain",
        "content-length: 0",
    ]
    assert "location: /echo" in out.text
    assert len(server.requests) == 1


async def test_http_request_is_guarded_too(registry: FunctionToolset, server: Server) -> None:
    with pytest.raises(NetworkRefused):
        await call(registry, settings_for(), "http_request", method="DELETE", url=server.url("/x"))
    assert server.requests == []


@pytest.mark.parametrize(
    "header",
    ["Host", "host", "Transfer-Encoding", "Connection", "Upgrade", "Idempotency-Key", "Proxy-X"],
)
async def test_transport_headers_cannot_be_set(
    registry: FunctionToolset, server: Server, header: str
) -> None:
    with pytest.raises(ToolArgumentError, match="cannot be set"):
        await call(
            registry,
            settings_for(ALLOW_LOOPBACK),
            "http_request",
            method="GET",
            url=server.url("/echo"),
            headers={header: "evil.example"},
        )
    assert server.requests == []


async def test_header_injection_is_refused(registry: FunctionToolset, server: Server) -> None:
    with pytest.raises(ToolArgumentError, match="forbidden characters"):
        await call(
            registry,
            settings_for(ALLOW_LOOPBACK),
            "http_request",
            method="GET",
            url=server.url("/echo"),
            headers={"X-A": "1\r\nHost: evil"},
        )
    with pytest.raises(ToolArgumentError, match="ASCII only"):
        await call(
            registry,
            settings_for(ALLOW_LOOPBACK),
            "http_request",
            method="GET",
            url=server.url("/echo"),
            headers={"X-Name": "café"},
        )
    assert server.requests == []


def test_http_request_effect_depends_on_the_method(registry: FunctionToolset) -> None:
    tool = registry.get("http_request")
    assert tool.honours_idempotency_key and tool.safe_to_retry
    url = "https://example.com/"
    assert tool.effect(tool.validate({"method": "GET", "url": url})) is EffectClass.network
    assert tool.effect(tool.validate({"method": "HEAD", "url": url})) is EffectClass.network
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        assert tool.effect(tool.validate({"method": method, "url": url})) is EffectClass.external
    with pytest.raises(ToolArgumentError, match="method"):
        tool.validate({"method": "TRACE", "url": url})


# the built-in tools and their effects (other tools may join: each of these must stay)
BUILTIN_EFFECTS = {
    "delegate": EffectClass.none,
    "fetch_url": EffectClass.network,
    "http_request": EffectClass.network,
    "list_files": EffectClass.read,
    "merge_children": EffectClass.write_local,
    "read_errand_result": EffectClass.none,
    "read_file": EffectClass.read,
    "shell": EffectClass.write_local,
    "wait": EffectClass.none,
    "wait_for": EffectClass.none,
    "write_file": EffectClass.write_local,
}


def test_builtin_toolset_has_the_builtin_tools(registry: FunctionToolset) -> None:
    names = [t.name for t in registry.listing]
    assert names == sorted(names) and len(set(names)) == len(names)
    missing = sorted(set(BUILTIN_EFFECTS) - set(names))
    assert not missing, f"built-in tools gone: {missing}"
    args = {"method": "GET", "command": "ls", "tasks": [{"task": "x"}], "ids": ["x"]}
    effects = {t.name: t.effect(args) for t in registry.listing if t.name in BUILTIN_EFFECTS}
    assert effects == BUILTIN_EFFECTS
    # every one but the shell is safe to run again after a crash (a command may not be)
    unsafe = [t.name for t in registry.listing if not t.safe_to_retry]
    assert [n for n in unsafe if n in BUILTIN_EFFECTS] == ["shell"]


async def test_a_connection_failure_is_a_clear_tool_error(registry: FunctionToolset) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ToolError, match="request failed: ConnectError"):
        await call(
            registry, settings_for(ALLOW_LOOPBACK), "fetch_url", url=f"http://127.0.0.1:{port}/"
        )


# -- http_request(auth="secret:NAME") ------------------------------------------------------

AUTH_ENV = "WEB_AUTH_CANARY_VALUE"  # not *_TOKEN/_KEY: only the tool's redaction stands
AUTH_VALUE = "brd-7Hq2+kP9/xW4=Zz1"


def auth_settings(hosts: list[str]) -> Settings:
    return Settings(
        network=NetworkSettings(allow_private=ALLOW_LOOPBACK, timeout_seconds=5),
        secrets={"BOARD": SecretSettings(env=AUTH_ENV, hosts=hosts)},
    )


def no_host_check(settings: Settings, auth: str, url: str) -> tuple[str, str]:
    """The control: finds the secret and sends it wherever the call says."""
    declared = settings.secrets["BOARD"]
    return "BOARD", os.environ[declared.env or "BOARD"]


@pytest.mark.parametrize("check", [secret_auth, no_host_check], ids=["guarded", "CONTROL"])
async def test_auth_sends_the_secret_only_to_its_hosts_and_never_shows_it(
    server: Server, monkeypatch: pytest.MonkeyPatch, check: Any
) -> None:
    monkeypatch.setenv(AUTH_ENV, AUTH_VALUE)
    tool = make_tool(
        make_http_request(check),
        effect=http_request_effect,
        roles={"method": "method", "url": "url", "headers": "headers", "body": "body"},
    )
    args = {"method": "GET", "url": server.url("/whoami"), "auth": "secret:BOARD"}
    ctx = ToolContext("e1", 7, "e1:7", Path("."), auth_settings(["127.0.0.1"]))
    out = await tool.invoke(tool.validate(args), ctx)
    assert server.requests[-1].headers["authorization"] == f"Bearer {AUTH_VALUE}"
    assert AUTH_VALUE not in out.text and "[REDACTED:BOARD]" in out.text, out.text
    assert tool.effect(args) is EffectClass.external  # a GET acting as someone
    server.requests.clear()
    elsewhere = ToolContext("e1", 8, "e1:8", Path("."), auth_settings(["board.example.com"]))
    if check is no_host_check:  # the control: the secret reaches a host it is not for
        await tool.invoke(tool.validate(args), elsewhere)
        assert server.requests[-1].headers["authorization"] == f"Bearer {AUTH_VALUE}"
        return
    with pytest.raises(ToolError, match=re.escape("only to board.example.com, not to 127.0.0.1")):
        await tool.invoke(tool.validate(args), elsewhere)
    assert server.requests == []  # nothing was sent


@pytest.mark.parametrize(
    ("auth", "headers", "why"),
    [
        ("Bearer abc", None, "auth must be secret:NAME"),
        ("secret:", None, "auth must be secret:NAME"),
        ("secret:NOPE", None, "no secret named NOPE in errands.toml .declared: BOARD"),
        ("secret:BOARD", {"authorization": "Bearer x"}, "either an Authorization header or auth"),
        ("secret:BOARD", {"Range": "bytes=9-14"}, "a Range header cannot go with auth"),
    ],
)
async def test_bad_auth_is_one_clear_error_and_nothing_is_sent(
    registry: FunctionToolset,
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    auth: str,
    headers: dict[str, str] | None,
    why: str,
) -> None:
    monkeypatch.setenv(AUTH_ENV, AUTH_VALUE)
    with pytest.raises(ToolArgumentError, match=why):
        await call(
            registry,
            auth_settings(["127.0.0.1"]),
            "http_request",
            method="GET",
            url=server.url("/whoami"),
            auth=auth,
            headers=headers,
        )
    assert server.requests == []


async def test_an_unset_secret_sends_nothing(
    registry: FunctionToolset, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(AUTH_ENV, raising=False)
    with pytest.raises(ToolError, match=f"has no {AUTH_ENV}; nothing was sent"):
        await call(
            registry,
            auth_settings(["127.0.0.1"]),
            "http_request",
            method="GET",
            url=server.url("/whoami"),
            auth="secret:BOARD",
        )
    assert server.requests == []


def test_the_card_names_the_secret_and_never_its_value(
    registry: FunctionToolset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTH_ENV, AUTH_VALUE)
    tool = registry.get("http_request")
    args = tool.validate(
        {"method": "GET", "url": "https://board.example.com/issues", "auth": "secret:BOARD"}
    )
    card = preview_of(tool, args, Path("."))
    assert card.startswith("GET https://board.example.com/issues")
    assert "the secret BOARD" in card and AUTH_VALUE not in card


async def test_auth_never_reaches_the_log_or_the_model(
    server: Server, store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTH_ENV, AUTH_VALUE)
    configured = settings.model_copy(
        update={
            "network": NetworkSettings(allow_private=ALLOW_LOOPBACK, timeout_seconds=5),
            "secrets": {"BOARD": SecretSettings(env=AUTH_ENV, hosts=["127.0.0.1"])},
        }
    )
    url = server.url("/whoami")
    model = Recording(
        script(
            {
                "text": "",
                "tool_calls": [
                    kit_call("http_request", method="GET", url=url, auth="secret:BOARD")
                ],
            },
            {"text": "done"},
        ).script
    )
    harness = harness_for(store, configured, model=model)
    eid = await create_errand(store, configured, "read the board", model="scripted:demo")
    runner = harness.runner()
    view = await runner.run_errand(eid)
    (pending,) = view.pending.values()  # external: it asks, naming the secret
    assert "the secret BOARD" in pending.preview and AUTH_VALUE not in pending.preview
    await harness.approvals.approve(pending.id, by="ann", channel="cli")
    view = await runner.run_errand(eid)
    assert view.state is ErrandState.done
    assert server.requests[-1].headers["authorization"] == f"Bearer {AUTH_VALUE}"
    logged = json.dumps([s.event.model_dump(mode="json") for s in await store.read(eid)])
    assert "[REDACTED:BOARD]" in logged and AUTH_VALUE not in logged
    assert len(model.seen) == 2 and all(AUTH_VALUE not in seen for seen in model.seen)
    assert "[REDACTED:BOARD]" in model.seen[-1]  # the model saw the result, redacted


async def test_a_redirect_to_another_origin_does_not_carry_the_secret(
    registry: FunctionToolset, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTH_ENV, AUTH_VALUE)
    other = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # (same handler: one request log)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        elsewhere = f"http://127.0.0.1:{other.server_address[1]}/whoami"
        out = await call(
            registry,
            auth_settings(["127.0.0.1"]),
            "http_request",
            method="GET",
            url=server.url(f"/redirect?to={elsewhere}"),
            auth="secret:BOARD",
        )
    finally:
        other.shutdown()
        other.server_close()
    first, second = server.requests
    assert first.headers["authorization"] == f"Bearer {AUTH_VALUE}"  # the origin it was for
    assert "authorization" not in second.headers  # another port: another origin
    assert '"you": "nobody"' in out.text


def casefolded_host_check(settings: Settings, auth: str, url: str) -> tuple[str, str]:
    """The control: the host compared as its Unicode form casefolded (a43d3e3's check)."""
    host = (httpx.URL(url).host or "").strip(".").casefold()
    declared = settings.secrets["BOARD"]
    if not any(host == a or host.endswith("." + a) for a in declared.hosts):
        raise ToolError("not for this host")
    return "BOARD", os.environ[declared.env or "BOARD"]


@pytest.mark.parametrize("check", [secret_auth, casefolded_host_check], ids=["ascii", "CONTROL"])
def test_a_host_that_only_casefolds_to_the_secrets_host_is_another_host(
    monkeypatch: pytest.MonkeyPatch, check: Any
) -> None:
    # exampleß.com (xn--example-6va.com) is a domain of its own; casefolded it reads
    # exampless.com, the secret's host
    monkeypatch.setenv(AUTH_ENV, AUTH_VALUE)
    settings = auth_settings(["exampless.com", "bücher.example"])
    url = "https://xn--example-6va.com/issues"
    if check is casefolded_host_check:
        assert check(settings, "secret:BOARD", url) == ("BOARD", AUTH_VALUE)  # the hole
        assert check(settings, "secret:BOARD", "http://api.exampless.com/") == ("BOARD", AUTH_VALUE)
        return
    with pytest.raises(
        ToolError, match=re.escape("only to exampless.com, bücher.example, not to xn--")
    ):
        check(settings, "secret:BOARD", url)
    with pytest.raises(ToolError, match="goes only over https"):  # (on every network)
        check(settings, "secret:BOARD", "http://api.exampless.com/issues")
    for fine in (
        "https://EXAMPLESS.com./x",
        "https://api.exampless.com/",
        "https://bücher.example/",
    ):
        assert check(settings, "secret:BOARD", web_url(fine)) == ("BOARD", AUTH_VALUE)


async def test_a_url_the_server_echoed_the_secret_into_is_redacted_in_the_source(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTH_ENV, AUTH_VALUE)
    settings = auth_settings(["127.0.0.1"])
    tool = make_tool(make_http_request(), effect=http_request_effect)
    args = {"method": "GET", "url": server.url("/whoami-moved"), "auth": "secret:BOARD"}
    out = await tool.invoke(tool.validate(args), ToolContext("e1", 7, "e1:7", Path("."), settings))
    assert out.source is not None and "/whoami?was=" in out.source
    assert AUTH_VALUE not in unquote(out.source) and "[REDACTED:BOARD]" in out.source
    # control: where the request landed (what the result's source was) carries the value
    fetched = await guarded_request(
        "GET", args["url"], settings, headers={"Authorization": f"Bearer {AUTH_VALUE}"}
    )
    assert AUTH_VALUE in unquote(fetched.url)


async def test_a_response_cut_off_inside_the_secret_does_not_show_its_start(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the model picks the padding so that the cap falls 12 characters into the secret
    monkeypatch.setenv(AUTH_ENV, AUTH_VALUE)
    settings = auth_settings(["127.0.0.1"])
    settings.network.max_response_bytes = 100 + len("Bearer ") + 12
    tool = make_tool(make_http_request(), effect=http_request_effect)
    args = {"method": "GET", "url": server.url("/whoami-padded?pad=100"), "auth": "secret:BOARD"}
    out = await tool.invoke(tool.validate(args), ToolContext("e1", 7, "e1:7", Path("."), settings))
    assert "cut off after 119 bytes" in out.text and "Bearer [REDACTED]" in out.text, out.text
    assert AUTH_VALUE[:12] not in out.text and AUTH_VALUE[:4] not in out.text
    # control: the same text redacted after the note was put after it (a43d3e3's order)
    body = "x" * 100 + "Bearer " + AUTH_VALUE[:12]
    whole = secret_redactor({"BOARD": AUTH_VALUE})(body + "\n[... cut off after 119 bytes]")
    assert AUTH_VALUE[:12] in whole
