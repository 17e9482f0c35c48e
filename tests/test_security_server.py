"""Issue 13, item 4 (behind a reverse proxy the API had no token) and item 8's token
line (printed into service logs), against real ``errands up`` processes.

- With ``allowed_hosts = ["errands.example.com"]`` on a loopback bind -- the proxy
  set-up -- the server requires its token and says why at start; a request naming
  that host without the token starts nothing and approves nothing (401).
- A server without a token refuses a request a proxy forwarded (``X-Forwarded-For``,
  ``Forwarded``, ...): a proxy that rewrites ``Host`` to 127.0.0.1 is still caught
  when it says it forwarded.
- The token is printed only to a terminal; into a file (a service's log) the start
  message names the 0600 file instead.

Each check runs against its negative control (tests/seams/controls.py), installed in
the server's process: ``no_proxy_token``, ``open_to_proxies``, ``token_anywhere``.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.server import ServerProc, clean_env, write_config
from seams import child_env

PROXY = '[server]\nallowed_hosts = ["errands.example.com"]'
NAMED = {"Host": "errands.example.com"}


def start(home: Path, control: str | None = None) -> ServerProc:
    env = child_env(clean_env(home), controls=[control] if control else [])
    return ServerProc(home, env=env).start()


def errand_count(server: ServerProc) -> int:
    with server.client() as api:
        listed = api.get("/api/errands")
        assert listed.status_code == 200, listed.text
        return len(listed.json())


# -- item 4: the proxy set-up requires the token -------------------------------------------


def observe_proxy(tmp_path: Path, control: str | None) -> dict[str, Any]:
    home = tmp_path / "home"
    write_config(home, PROXY)
    server = start(home, control)
    try:
        info = json.loads((home / "server.json").read_text())
        with httpx.Client(base_url=server.url, headers=NAMED, timeout=30) as anon:
            created = anon.post("/api/errands", json={"text": "hi", "model": "scripted:demo"})
            approvals = anon.get("/api/approvals")
            approve = anon.post("/api/approvals/e0.1/approve", json={})
            # the errand's stream (its events and a running tool's live output)
            eid = created.json()["id"] if created.status_code == 201 else "m0"
            with anon.stream("GET", f"/api/errands/{eid}/stream") as live:
                stream = live.status_code
        return {
            "info": info,
            "created": created.status_code,
            "approvals": approvals.status_code,
            "approve": approve.status_code,
            "stream": stream,
            "errands": errand_count(server),
            "out": server.output(),
            "server": server,
        }
    finally:
        server.kill()


def check_proxy(obs: dict[str, Any]) -> None:
    assert obs["info"]["token_required"] is True
    assert obs["created"] == 401 and obs["approvals"] == 401 and obs["approve"] == 401
    assert obs["stream"] == 401  # (the live output goes only where the API goes)
    assert obs["errands"] == 0  # nothing was started
    assert "a token is required: it answers to errands.example.com" in obs["out"]


def test_behind_a_proxy_the_api_requires_the_token(tmp_path: Path) -> None:
    obs = observe_proxy(tmp_path, None)
    check_proxy(obs)
    home = tmp_path / "home"
    assert (home / "server-token").stat().st_mode & 0o777 == 0o600
    # with the token, through the proxy's name, it works
    server: ServerProc = obs["server"]
    server.start()
    try:
        assert server.token
        with server.client(headers=NAMED) as api:
            r = api.post("/api/errands", json={"text": "hi", "model": "scripted:demo"})
            assert r.status_code == 201, r.text
    finally:
        server.kill()


def test_control_without_the_proxy_rule_anyone_at_the_proxy_starts_errands(
    tmp_path: Path,
) -> None:
    obs = observe_proxy(tmp_path, "no_proxy_token")
    assert obs["created"] == 201  # what the outside attack run saw
    assert obs["stream"] == 200  # and its stream, live output included
    with pytest.raises(AssertionError):
        check_proxy(obs)


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ('[server]\nallowed_hosts = ["localhost:9000", "127.0.0.1"]', None),
        ('[server]\nallowed_hosts = ["proxy.lan:8443"]', "it answers to proxy.lan:8443"),
        ("[server]\nrequire_token = true", "[server] require_token is set"),
    ],
)
def test_the_start_message_says_why_a_token_is_required(
    tmp_path: Path, config: str, why: str | None
) -> None:
    home = tmp_path / "home"
    write_config(home, config)
    server = start(home)
    try:
        out = server.output()
        assert (server.token is not None) is (why is not None)
        if why is None:  # only loopback names: no token, as before
            assert "token" not in out
        else:
            assert f"a token is required: {why}" in out
    finally:
        server.kill()


# -- item 4: what a proxy forwarded, to a server without a token ------------------------------


def observe_forwarded(tmp_path: Path, control: str | None) -> dict[str, Any]:
    home = tmp_path / "home"
    write_config(home)
    server = start(home, control)
    try:
        assert server.token is None  # loopback, no allowed_hosts: no token
        codes = {}
        with server.client() as local:  # a proxy rewriting Host to 127.0.0.1:PORT
            for header, value in (
                ("X-Forwarded-For", "203.0.113.9"),
                ("Forwarded", "for=203.0.113.9;proto=https"),
                ("X-Real-IP", "203.0.113.9"),
            ):
                r = local.post(
                    "/api/errands",
                    json={"text": "hi", "model": "scripted:demo"},
                    headers={header: value},
                )
                codes[header] = (r.status_code, r.json().get("detail", ""))
            health = local.get("/api/health", headers={"X-Forwarded-For": "203.0.113.9"})
            plain = local.get("/api/errands")
        return {
            "codes": codes,
            "health": health.status_code,
            "plain": plain.status_code,
            "errands": errand_count(server),
        }
    finally:
        server.kill()


def check_forwarded(obs: dict[str, Any]) -> None:
    for header, (status, detail) in obs["codes"].items():
        assert status == 403, header
        assert "came through a proxy" in detail and "require_token" in detail
    assert obs["errands"] == 0
    assert obs["health"] == 200 and obs["plain"] == 200  # local requests go on as before


def test_a_server_without_a_token_refuses_what_a_proxy_forwarded(tmp_path: Path) -> None:
    check_forwarded(observe_forwarded(tmp_path, None))


def test_control_without_the_forwarding_check_a_rewritten_host_passes(tmp_path: Path) -> None:
    obs = observe_forwarded(tmp_path, "open_to_proxies")
    assert obs["errands"] == 3
    with pytest.raises(AssertionError):
        check_forwarded(obs)


# -- item 8: the token is never printed into a log ---------------------------------------------


def observe_logged_token(tmp_path: Path, control: str | None) -> dict[str, Any]:
    home = tmp_path / "home"
    write_config(home, "[server]\nrequire_token = true")
    server = start(home, control)  # stdout is a file, as under systemd or nohup
    try:
        return {"token": server.token, "out": server.output(), "home": home}
    finally:
        server.kill()


def check_logged_token(obs: dict[str, Any]) -> None:
    assert obs["token"] and obs["token"] not in obs["out"]
    token_file = obs["home"] / "server-token"
    assert f"the token is in {token_file} (mode 0600)" in obs["out"]


def test_the_token_is_not_printed_into_a_log(tmp_path: Path) -> None:
    check_logged_token(observe_logged_token(tmp_path, None))


def test_control_printing_the_token_anywhere_puts_it_in_the_log(tmp_path: Path) -> None:
    obs = observe_logged_token(tmp_path, "token_anywhere")
    with pytest.raises(AssertionError):
        check_logged_token(obs)


def test_on_a_terminal_the_new_token_is_shown_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, "[server]\nrequire_token = true")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "errands", "up", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.DEVNULL,
        env=clean_env(home),
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops it" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(leader, 65536)
                except OSError:
                    break
    finally:
        proc.kill()
        proc.wait(30)
        os.close(leader)
    token = (home / "server-token").read_text().strip()
    assert f"{token}".encode() in seen, seen.decode(errors="replace")
    assert b"shown once, on this terminal only" in seen
