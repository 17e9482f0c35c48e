"""The HTTP API of a real `errands up`: bad input, conflicts, streams, idempotency, crashes.

Every refusal is a clear 4xx and leaves the store as it was.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.kit import call, write_script
from helpers.server import (
    ServerProc,
    Sink,
    clean_env,
    free_port,
    post_script,
    wait_for,
    write_config,
)
from seams import child_env

from errands.config import load_settings
from errands.store.sqlite import SQLiteStore
from errands.store.sync import BlockingStore


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    home = tmp_path_factory.mktemp("api") / "home"
    write_config(home)
    proc = ServerProc(home).start()
    yield proc
    proc.kill()


@pytest.fixture
def api(server: ServerProc) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def model(server: ServerProc, sink: Sink, name: str, **kwargs: Any) -> str:
    return post_script(server.home.parent / f"{name}.json", f"{sink.url}/{name}", **kwargs)


def start(api: httpx.Client, spec: str, text: str = "post the note") -> str:
    r = api.post("/api/errands", json={"text": text, "model": spec})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def waiting(api: httpx.Client, errand_id: str) -> dict[str, Any]:
    def pending() -> dict[str, Any] | None:
        detail = api.get(f"/api/errands/{errand_id}").json()
        return detail["approvals"][0] if detail["approvals"] else None

    found: dict[str, Any] = wait_for(pending)
    return found


def state(api: httpx.Client, errand_id: str) -> str:
    return str(api.get(f"/api/errands/{errand_id}").json()["status"])


def log_of(api: httpx.Client, errand_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = api.get(f"/api/errands/{errand_id}").json()["events"]
    return events


def count_errands(api: httpx.Client) -> int:
    return len(api.get("/api/errands", params={"limit": 1000}).json())


# -- the happy path, and the stream ---------------------------------------------------------


def test_start_follow_and_approve(server: ServerProc, api: httpx.Client, sink: Sink) -> None:
    spec = model(server, sink, "happy", latency_ms=600)
    errand_id = start(api, spec, "post the happy note")
    assert any(e["id"] == errand_id for e in api.get("/api/errands").json())
    seen: list[tuple[str, Any]] = []
    with api.stream("GET", f"/api/errands/{errand_id}/stream") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                seen.append((kind, json.loads(line[6:])))
                if kind == "event" and seen[-1][1]["event"]["type"] == "approval_requested":
                    break
    types = [d["event"]["type"] for k, d in seen if k == "event"]
    assert types[0] == "errand_created" and types[-1] == "approval_requested"
    text = "".join(d["delta"] for k, d in seen if k == "text")
    assert text == "I will post the note now."  # the model's text, streamed live

    approval = waiting(api, errand_id)
    listed = api.get("/api/approvals").json()
    assert approval["id"] in [a["id"] for a in listed]
    assert approval["preview"].startswith(f"POST {sink.url}/happy")
    r = api.post(
        f"/api/approvals/{approval['id']}/approve", json={"args_hash": approval["args_hash"]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "approved"
    wait_for(lambda: state(api, errand_id) == "done")
    detail = api.get(f"/api/errands/{errand_id}").json()
    assert detail["result"] == "Sent: the note is posted."
    assert detail["usage"]["input_tokens"] > 0
    assert [e["path"] for e in sink.effects].count("/happy") == 1
    granted = [e for e in detail["events"] if e["event"]["type"] == "approval_granted"]
    assert granted[0]["event"]["channel"] == "api"


def test_stream_resumes_after_last_event_id(
    server: ServerProc, api: httpx.Client, sink: Sink
) -> None:
    errand_id = start(api, model(server, sink, "resume"))
    waiting(api, errand_id)
    with api.stream(
        "GET", f"/api/errands/{errand_id}/stream", headers={"Last-Event-ID": "2"}
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("id: "):
                assert int(line[4:]) == 3  # the first event after the one the client had
                break


def test_messages_reopen_and_cancel(server: ServerProc, api: httpx.Client, sink: Sink) -> None:
    errand_id = start(api, model(server, sink, "chat"))
    waiting(api, errand_id)
    r = api.post(f"/api/errands/{errand_id}/messages", json={"text": "also say hi"})
    assert r.status_code == 201 and r.json()["seq"] > 0
    r = api.post(f"/api/errands/{errand_id}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = api.post(f"/api/errands/{errand_id}/cancel")
    assert again.status_code == 409


# -- bad input: a clear 4xx and nothing written ----------------------------------------------


def test_malformed_json_is_400_and_writes_nothing(api: httpx.Client) -> None:
    before = count_errands(api)
    r = api.post(
        "/api/errands", content=b'{"text": "half', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["detail"]
    r = api.post("/api/errands", json={"text": "   "})
    assert r.status_code == 422 and "text" in r.json()["detail"]
    r = api.post("/api/errands", json={"text": "x", "unknown": 1})
    assert r.status_code == 422
    r = api.post("/api/errands", json={"text": "go", "model": "nosuch:model"})
    assert r.status_code == 422 and "unknown model provider" in r.json()["detail"]
    r = api.post("/api/errands", json={"text": "go", "workspace": "/"})
    assert r.status_code == 422 and "root directory" in r.json()["detail"]
    assert count_errands(api) == before


def test_an_errand_budget_is_set_by_the_api_and_today_is_reported(
    server: ServerProc, api: httpx.Client, sink: Sink
) -> None:
    before = count_errands(api)
    for bad in (-1, "lots", 1e9):
        r = api.post("/api/errands", json={"text": "go", "max_cost_usd": bad})
        assert r.status_code == 422 and "max_cost_usd" in r.json()["detail"], r.text
    assert count_errands(api) == before
    r = api.post("/api/errands", json={"text": "go", "max_cost_usd": 0.25, "model": "x:y"})
    assert r.status_code == 422  # (the model is checked too: still nothing written)
    spec = model(server, sink, "budgeted")
    r = api.post("/api/errands", json={"text": "go", "model": spec, "max_cost_usd": 0.25})
    assert r.status_code == 201
    with BlockingStore(make=lambda: SQLiteStore(load_settings(server.home).db_path)) as store:
        created = store.read(r.json()["id"])[0].event
        assert created.limits.max_cost_usd == 0.25  # type: ignore[union-attr]
    budget = api.get("/api/budget").json()
    assert budget["daily_usd"] is None and budget["left_usd"] is None
    assert budget["spent_usd"] >= 0 and budget["day"].count("-") == 2
    inbox = api.get("/fragments/inbox").text  # the inbox says what today cost
    assert f"Today: ${budget['spent_usd']:.4f} spent" in inbox and "no daily budget" in inbox


def test_oversized_bodies_are_413(api: httpx.Client) -> None:
    before = count_errands(api)
    big = json.dumps({"text": "x" * (1024 * 1024 + 10)}).encode()
    r = api.post("/api/errands", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"text": "'
        for _ in range(40):
            yield b"y" * 32_768
        yield b'"}'

    r = api.post("/api/errands", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert count_errands(api) == before


def test_non_json_bodies_are_415(api: httpx.Client) -> None:
    r = api.post("/api/errands", content=b"text=hi", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_unknown_ids_are_404(api: httpx.Client) -> None:
    assert api.get("/api/errands/enosuch000000").status_code == 404
    assert api.get("/api/errands/enosuch000000/stream").status_code == 404
    r = api.post("/api/errands/enosuch000000/messages", json={"text": "hi"})
    assert r.status_code == 404
    assert api.post("/api/errands/enosuch000000/cancel").status_code == 404
    assert api.post("/api/approvals/enosuch000000.4/approve", json={}).status_code == 404
    r = api.post("/api/approvals/enosuch000000.4/deny", json={"reason": "no"})
    assert r.status_code == 404
    assert api.get("/api/nothing-here").status_code == 404


def test_approval_ids_that_were_never_asked_are_404(
    server: ServerProc, api: httpx.Client, sink: Sink
) -> None:
    errand_id = start(api, model(server, sink, "never"))
    waiting(api, errand_id)
    assert api.post(f"/api/approvals/{errand_id}.1/approve", json={}).status_code == 404
    assert api.post(f"/api/approvals/{errand_id}.999/approve", json={}).status_code == 404


def test_double_approval_is_409_and_changes_nothing(
    server: ServerProc, api: httpx.Client, sink: Sink
) -> None:
    errand_id = start(api, model(server, sink, "double"))
    approval = waiting(api, errand_id)
    assert api.post(f"/api/approvals/{approval['id']}/approve", json={}).status_code == 200
    wait_for(lambda: state(api, errand_id) == "done")
    before = log_of(api, errand_id)
    r = api.post(f"/api/approvals/{approval['id']}/approve", json={})
    assert r.status_code == 409 and "decided already" in r.json()["detail"]
    r = api.post(f"/api/approvals/{approval['id']}/deny", json={"reason": "too late"})
    assert r.status_code == 409
    assert log_of(api, errand_id) == before
    assert [e["path"] for e in sink.effects].count("/double") == 1


def test_approval_after_cancel_is_409(server: ServerProc, api: httpx.Client, sink: Sink) -> None:
    errand_id = start(api, model(server, sink, "cancelled"))
    approval = waiting(api, errand_id)
    assert api.post(f"/api/errands/{errand_id}/cancel", json={}).status_code == 200
    before = log_of(api, errand_id)
    r = api.post(f"/api/approvals/{approval['id']}/approve", json={})
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    assert log_of(api, errand_id) == before
    time.sleep(0.5)
    assert "/cancelled" not in [e["path"] for e in sink.effects]


def test_edits_are_validated_and_bound_to_what_was_seen(
    server: ServerProc, api: httpx.Client, sink: Sink
) -> None:
    errand_id = start(api, model(server, sink, "edit"))
    approval = waiting(api, errand_id)
    path = f"/api/approvals/{approval['id']}/approve"
    bad = {"method": "FETCH", "url": f"{sink.url}/edit"}
    r = api.post(path, json={"edited_arguments": bad})
    assert r.status_code == 422 and "not valid" in r.json()["detail"]
    r = api.post(path, json={"args_hash": "sha256:" + "0" * 64})
    assert r.status_code == 409 and "different arguments" in r.json()["detail"]
    r = api.post(path, json={"always_pattern": {"url": "*"}})
    assert r.status_code == 422
    r = api.post(f"/api/approvals/{approval['id']}/deny", json={"reason": " "})
    assert r.status_code == 422
    assert approval["id"] in [a["id"] for a in api.get("/api/approvals").json()]
    edited = {"method": "POST", "url": f"{sink.url}/edit", "body": "edited body"}
    r = api.post(path, json={"edited_arguments": edited, "args_hash": approval["args_hash"]})
    assert r.status_code == 200, r.text
    wait_for(lambda: state(api, errand_id) == "done")
    assert [e["body"] for e in sink.effects if e["path"] == "/edit"] == ["edited body"]


def test_deny_goes_back_to_the_model(server: ServerProc, api: httpx.Client, sink: Sink) -> None:
    errand_id = start(api, model(server, sink, "denied"))
    approval = waiting(api, errand_id)
    r = api.post(f"/api/approvals/{approval['id']}/deny", json={"reason": "not to that board"})
    assert r.status_code == 200 and r.json()["decision"] == "denied"
    wait_for(lambda: state(api, errand_id) == "done")
    assert api.get(f"/api/errands/{errand_id}").json()["result"] == "Understood: I did not send it."
    assert "/denied" not in [e["path"] for e in sink.effects]


# -- idempotency ------------------------------------------------------------------------------


def test_idempotency_key_gives_the_same_response_and_creates_once(
    server: ServerProc, api: httpx.Client, sink: Sink
) -> None:
    spec = model(server, sink, "idem")
    body = {"text": "once only", "model": spec}
    before = count_errands(api)
    first = api.post("/api/errands", json=body, headers={"Idempotency-Key": "k-1"})
    second = api.post("/api/errands", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert count_errands(api) == before + 1
    other = api.post(
        "/api/errands", json={**body, "text": "something else"}, headers={"Idempotency-Key": "k-1"}
    )
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    errand_id = first.json()["id"]
    m1 = api.post(
        f"/api/errands/{errand_id}/messages", json={"text": "hi"}, headers={"Idempotency-Key": "m"}
    )
    m2 = api.post(
        f"/api/errands/{errand_id}/messages", json={"text": "hi"}, headers={"Idempotency-Key": "m"}
    )
    assert m1.json() == m2.json()
    messages = [e for e in log_of(api, errand_id) if e["event"]["type"] == "user_message"]
    assert len(messages) == 1


def test_concurrent_duplicates_create_one_errand(
    server: ServerProc, api: httpx.Client, sink: Sink
) -> None:
    body = {"text": "at once", "model": model(server, sink, "dupes")}
    before = count_errands(api)

    def send(_: int) -> dict[str, Any]:
        with server.client() as client:
            r = client.post("/api/errands", json=body, headers={"Idempotency-Key": "same"})
            assert r.status_code == 201, r.text
            answer: dict[str, Any] = r.json()
            return answer

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert len({a["id"] for a in answers}) == 1
    assert count_errands(api) == before + 1


# -- idempotency across a real SIGKILL --------------------------------------------------------
#
# `errands up` reserves an Idempotency-Key with the errand id it will use (durably),
# creates the errand, then records the answer. The fault points ``after_reserve`` and
# ``after_create`` kill the server (SIGKILL, from inside: seams.faults) in each gap.

CRASH_KEY = {"Idempotency-Key": "crash-1"}


def dies_answering(proc: ServerProc, body: dict[str, Any]) -> None:
    """POST *body* with CRASH_KEY to a server armed to die: the connection drops with no
    answer, and the process is gone by SIGKILL."""
    with proc.client() as api, pytest.raises(httpx.TransportError):
        api.post("/api/errands", json=body, headers=CRASH_KEY)
    assert proc.proc is not None and proc.proc.wait(30) == -signal.SIGKILL, proc.output()


def key_row(home: Path) -> tuple[str, int | None]:
    """(the errand id reserved for CRASH_KEY, the answer's status or None)."""
    with closing(sqlite3.connect(home / "server.sqlite")) as db:
        reserved, status = db.execute(
            "SELECT reserved, status FROM idempotency WHERE scope = 'create' AND key = ?",
            (CRASH_KEY["Idempotency-Key"],),
        ).fetchone()
    return reserved, status


def errand_ids(home: Path) -> list[str]:
    with BlockingStore(make=lambda: SQLiteStore(load_settings(home).db_path)) as store:
        return [v.id for v in store.list_errands(limit=1000)]


def test_idempotency_survives_sigkill_between_reserving_creating_and_answering(
    tmp_path: Path,
) -> None:
    """Killed after reserving, then (on the retry) after creating: the next retry
    answers the id reserved first, and there is one errand."""
    home = tmp_path / "home"
    write_config(home)
    body = {"text": "create me once", "model": write_script(tmp_path / "m.json", {"text": "ok"})}
    proc = ServerProc(home, env=child_env(clean_env(home), fault="after_reserve:1"))
    try:
        proc.start()
        dies_answering(proc, body)
        reserved, status = key_row(home)
        assert status is None and errand_ids(home) == []  # reserved, nothing created

        proc.env = child_env(clean_env(home), fault="after_create:1")
        proc.start()
        dies_answering(proc, body)  # the retry
        assert key_row(home) == (reserved, None)
        assert errand_ids(home) == [reserved]  # created under the reserved id, not answered

        proc.env = clean_env(home)
        proc.start()
        with proc.client() as api:
            for _ in range(2):
                r = api.post("/api/errands", json=body, headers=CRASH_KEY)
                assert r.status_code == 201 and r.json() == {"id": reserved}
        assert errand_ids(home) == [reserved]
        assert key_row(home) == (reserved, 201)
    finally:
        proc.kill()


def test_negative_control_a_retry_that_forgets_the_reservation_creates_twice(
    tmp_path: Path,
) -> None:
    """The control: keys that remember answers but not what the dead attempt reserved.
    The same crash after creating, the same retry: a second errand, another id."""
    home = tmp_path / "home"
    write_config(home)
    body = {"text": "create me once", "model": write_script(tmp_path / "m.json", {"text": "ok"})}
    env = child_env(clean_env(home), fault="after_create:1", controls=["forgetful_idempotency"])
    proc = ServerProc(home, env=env)
    try:
        proc.start()
        dies_answering(proc, body)
        reserved, _ = key_row(home)
        assert errand_ids(home) == [reserved]
        proc.env = child_env(clean_env(home), controls=["forgetful_idempotency"])
        proc.start()
        with proc.client() as api:
            r = api.post("/api/errands", json=body, headers=CRASH_KEY)
        assert r.status_code == 201 and r.json() != {"id": reserved}
        assert sorted(errand_ids(home)) == sorted([reserved, r.json()["id"]])  # created twice
    finally:
        proc.kill()


# -- Host, Origin, CSRF ----------------------------------------------------------------------------


def test_host_and_origin_are_checked(server: ServerProc, api: httpx.Client) -> None:
    before = count_errands(api)
    body = {"text": "from afar", "model": "scripted:demo"}
    assert api.get("/api/errands", headers={"Host": "evil.example"}).status_code == 421
    r = api.get("/api/errands", headers={"Host": f"evil.example:{server.port}"})
    assert r.status_code == 421  # DNS rebinding: the name is wrong even if the port is right
    assert api.get("/api/errands", headers={"Host": "localhost:1"}).status_code == 421
    assert api.get("/", headers={"Host": f"localhost:{server.port}"}).status_code == 200
    r = api.post("/api/errands", json=body, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = api.get("/api/errands", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = api.post("/api/errands", json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    # a browser on the inbox's own origin still needs the CSRF token for a write
    origin = {"Origin": server.url}
    r = api.post("/api/errands", json=body, headers=origin)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    with server.client() as browser:
        page = browser.get("/")
        csrf = page.cookies[f"errands_csrf_{server.port}"]
        assert f'content="{csrf}"' in page.text
        r = browser.post("/api/errands", json=body, headers={**origin, "X-CSRF-Token": "wrong"})
        assert r.status_code == 403
        assert count_errands(api) == before
        r = browser.post("/api/errands", json=body, headers={**origin, "X-CSRF-Token": csrf})
        assert r.status_code == 201


def test_security_headers(api: httpx.Client) -> None:
    r = api.get("/")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "server" not in r.headers


def test_network_tools_cannot_reach_the_server(server: ServerProc, api: httpx.Client) -> None:
    """Even with 127.0.0.1 allow-listed, an errand's own tools never reach the server's port."""
    spec = post_script(server.home.parent / "self.json", f"{server.url}/api/errands")
    errand_id = start(api, spec, "post to yourself")
    approval = waiting(api, errand_id)
    assert api.post(f"/api/approvals/{approval['id']}/approve", json={}).status_code == 200
    wait_for(lambda: state(api, errand_id) == "done")
    results = [e["event"] for e in log_of(api, errand_id) if e["event"]["type"] == "tool_result"]
    assert not results[0]["ok"]
    assert "errands' own server" in results[0]["content"]["text"]


# -- the token, off loopback ---------------------------------------------------------------------


def test_token_required_off_loopback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home)
    proc = ServerProc(home, host="0.0.0.0").start()
    try:
        token_file = home / "server-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        # never printed into a file (a service's log): the file's path instead
        assert token not in proc.out_path.read_text()
        assert f"the token is in {token_file} (mode 0600)" in proc.out_path.read_text()
        with httpx.Client(base_url=proc.url, timeout=30) as anon:
            r = anon.get("/api/errands")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert anon.get("/openapi.json").status_code == 401
            bad = anon.get("/api/errands", headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401
            r = anon.post("/api/errands", json={"text": "hi", "model": "scripted:demo"})
            assert r.status_code == 401
            r = anon.get("/", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/login")
            assert anon.get("/api/health").status_code == 200
            login = anon.get("/login")
            assert login.status_code == 200
            csrf = login.cookies[f"errands_csrf_{proc.port}"]
            form = {"token": "wrong", "csrf": csrf, "next": "/"}
            r = anon.post("/login", data=form, headers={"Origin": proc.url})
            assert r.status_code == 401
            r = anon.post(
                "/login",
                data={**form, "token": token, "next": "//evil.example/"},
                headers={"Origin": proc.url},
                follow_redirects=False,
            )
            assert r.status_code == 303 and r.headers["location"] == "/"
            assert anon.get("/").status_code == 200  # the session cookie now
        with proc.client() as api:
            assert api.get("/api/errands").status_code == 200
        proc.stop()
        proc.start()
        assert token not in proc.out_path.read_text()
    finally:
        proc.kill()


# -- crashes and shutdown ---------------------------------------------------------------------------


def test_sigkill_with_pending_approvals_and_mid_action(tmp_path: Path) -> None:
    """SIGKILL while approvals wait, and again while an approved action runs: after each
    restart the approvals are still pending, and no approved action happens twice."""
    home = tmp_path / "home"
    write_config(home)
    sink = Sink(delay=2.0)
    port = free_port()
    proc = ServerProc(home, port=port).start()
    try:
        with proc.client() as api:
            ids = [
                start(api, post_script(tmp_path / f"k{i}.json", f"{sink.url}/k{i}"), f"kill {i}")
                for i in range(3)
            ]
            approvals = [waiting(api, i)["id"] for i in ids]
        proc.kill()
        assert json.loads((home / "server.json").read_text())["pid"] == proc.proc.pid  # stale
        proc.start()
        with proc.client() as api:
            assert sorted(a["id"] for a in api.get("/api/approvals").json()) == sorted(approvals)
            assert api.post(f"/api/approvals/{approvals[0]}/approve", json={}).status_code == 200
            wait_for(lambda: sink.arrived.is_set())  # the approved POST is in flight
        proc.kill()
        assert len(sink.requests) == 1
        proc.start()
        with proc.client() as api:
            wait_for(lambda: state(api, ids[0]) == "done", timeout=60)
            pending = sorted(a["id"] for a in api.get("/api/approvals").json())
            assert pending == sorted(approvals[1:])
            for a in approvals[1:]:
                assert api.post(f"/api/approvals/{a}/approve", json={}).status_code == 200
            for i in ids[1:]:
                wait_for(lambda i=i: state(api, i) == "done", timeout=60)
        # the ledger: every approved action happened exactly once (a retry after the
        # crash carried the same Idempotency-Key, and the endpoint performed it once)
        assert sorted(e["path"] for e in sink.effects) == ["/k0", "/k1", "/k2"]
        k0 = [r for r in sink.requests if r["path"] == "/k0"]
        assert len({r["key"] for r in k0}) == 1
    finally:
        proc.kill()
        sink.close()


def test_graceful_shutdown_releases_and_restart_resumes(tmp_path: Path) -> None:
    """SIGINT while one errand waits for approval and another runs: a clean exit, the
    running one's lease released, nothing lost; the next start carries both on."""
    home = tmp_path / "home"
    write_config(home)
    sink = Sink()
    look = {"text": "looking", "tool_calls": [call("list_files", path=".")]}
    busy = write_script(
        tmp_path / "busy.json", *([look] * 15), {"text": "all looked"}, latency_ms=200
    )
    proc = ServerProc(home).start()
    try:
        with proc.client() as api:
            errand_id = start(api, post_script(tmp_path / "g.json", f"{sink.url}/g"))
            approval = waiting(api, errand_id)
            running = start(api, busy, "keep looking")
            wait_for(lambda: api.get(f"/api/errands/{running}").json()["steps"] >= 2)
        t0 = time.monotonic()
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(30) == 0
        assert time.monotonic() - t0 < 10
        assert not (home / "server.json").exists()
        with BlockingStore(make=lambda: SQLiteStore(load_settings(home).db_path)) as store:
            assert store.lease_holder(running) is None  # released, not left to expire
            assert store.view(running).state.value == "running"
            assert [p.id for p in store.pending_approvals()] == [approval["id"]]
        proc.start()
        with proc.client() as api:
            assert api.post(f"/api/approvals/{approval['id']}/approve", json={}).status_code == 200
            wait_for(lambda: state(api, errand_id) == "done")
            wait_for(lambda: state(api, running) == "done", timeout=60)
            assert api.get(f"/api/errands/{running}").json()["result"] == "all looked"
        assert [e["path"] for e in sink.effects] == ["/g"]
        assert proc.stop() == 0
    finally:
        proc.kill()
        sink.close()


def test_a_second_server_for_the_same_home_is_refused(server: ServerProc) -> None:
    other = ServerProc(server.home)
    with pytest.raises(RuntimeError, match="already up"):
        other.start()


def test_the_inbox_and_the_api_show_the_daily_budget(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, "[budget]\ndaily_usd = 2.5")
    proc = ServerProc(home).start()
    try:
        with proc.client() as client:
            budget = client.get("/api/budget").json()
            assert budget["daily_usd"] == 2.5 and budget["left_usd"] == 2.5
            inbox = client.get("/").text
            assert "daily budget $2.50" in inbox and "$2.5000 left" in inbox
    finally:
        proc.kill()
