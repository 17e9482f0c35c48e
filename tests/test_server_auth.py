"""The server's Host/Origin rules, sessions and token file, as plain functions."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.datastructures import Headers

from errands.server.auth import Security
from errands.server.files import ServerRefused, is_loopback, load_token


def test_loopback_binding_answers_only_to_local_names_on_its_port() -> None:
    sec = Security(host="127.0.0.1", port=7878)
    for ok in ("127.0.0.1:7878", "localhost:7878", "[::1]:7878", "LOCALHOST:7878"):
        assert sec.host_ok(ok), ok
    for bad in (
        "evil.example:7878",  # DNS rebinding: a name the attacker controls
        "evil.example",
        "127.0.0.1",  # port 80 implied
        "127.0.0.1:7879",
        "10.0.0.5:7878",  # an IP literal, but not what we are bound to
        "127.0.0.1:7878@evil.example",
        "",
        None,
    ):
        assert not sec.host_ok(bad), bad


def test_wildcard_binding_answers_to_ip_literals_and_configured_names() -> None:
    sec = Security(host="0.0.0.0", port=7878, allowed_hosts=["errands.example.com", "proxy:8443"])
    assert sec.host_ok("10.0.0.5:7878") and sec.host_ok("[fe80::1]:7878")
    assert not sec.host_ok("evil.example:7878")
    assert sec.host_ok("errands.example.com")  # a configured name: any port (a proxy)
    assert sec.host_ok("proxy:8443") and not sec.host_ok("proxy:7878")
    with pytest.raises(ServerRefused):
        Security(host="127.0.0.1", port=1, allowed_hosts=["not a host"])


def test_origins_must_be_the_server_itself() -> None:
    sec = Security(host="127.0.0.1", port=7878)
    assert sec.origin_ok("http://127.0.0.1:7878")
    assert sec.origin_ok("http://localhost:7878")
    assert not sec.origin_ok("http://evil.example")
    assert not sec.origin_ok("http://127.0.0.1:9999")
    assert not sec.origin_ok("null")
    assert not sec.origin_ok("file://")
    assert not sec.origin_ok("http://127.0.0.1:7878/path")


def test_sessions_are_signed_with_the_token() -> None:
    sec = Security(host="0.0.0.0", port=7878, token="t" * 40)
    session = sec.new_session()
    assert sec.session_ok(session)
    nonce, _, mac = session.partition(".")
    assert not sec.session_ok(f"{nonce}x.{mac}")
    assert not sec.session_ok(f"{nonce}.{'0' * len(mac)}")
    other = Security(host="0.0.0.0", port=7878, token="u" * 40)
    assert not other.session_ok(session)  # a new token logs everyone out
    cookies = {sec.session_cookie: session}
    assert sec.authenticate(Headers({}), cookies) == "session"
    assert sec.authenticate(Headers({"authorization": "Bearer " + "t" * 40}), {}) == "bearer"
    assert sec.authenticate(Headers({"authorization": "Bearer nope"}), cookies) is None
    assert sec.authenticate(Headers({}), {}) is None
    assert Security(host="127.0.0.1", port=1).authenticate(Headers({}), {}) == "open"


def test_token_file(tmp_path: Path) -> None:
    token, created = load_token(tmp_path, create=True)
    assert created and token is not None and len(token) >= 40
    assert (tmp_path / "server-token").stat().st_mode & 0o777 == 0o600
    assert load_token(tmp_path, create=True) == (token, False)
    assert load_token(tmp_path / "nowhere", create=False) == (None, False)
    (tmp_path / "server-token").chmod(0o604)
    with pytest.raises(ServerRefused, match="chmod 600"):
        load_token(tmp_path, create=False)
    (tmp_path / "server-token").chmod(0o600)
    (tmp_path / "server-token").write_text("short\n")
    with pytest.raises(ServerRefused, match="usable token"):
        load_token(tmp_path, create=False)


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.1.2.3") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert not is_loopback("example.com")
