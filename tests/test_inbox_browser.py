"""The inbox in a real browser (Debian's Chromium through Playwright) against a real
`errands up`: start an errand from the composer, watch it live, approve an edited
action, deny one, and approve one that survived a server crash.

The errands call ``http_request`` (POST, so it needs approval) against a local HTTP
endpoint started by the test; ``[network] allow_private = ["127.0.0.1"]`` lets them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_api
import pytest
from helpers.browser import ARGS, CHROMIUM, TIMEOUT_MS
from helpers.server import (
    ServerProc,
    Sink,
    clean_env,
    free_port,
    post_script,
    wait_for,
    write_config,
)
from sim.core import Turn, call
from sim.openai_server import OpenAIChatSim

expect = playwright_api.expect


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):  # a missing browser is a failure, never a skip
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == []  # no script errors on any page


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    home = tmp_path / "home"
    write_config(home)
    proc = ServerProc(home, port=free_port()).start()
    yield proc
    proc.kill()


def errand(server: ServerProc, errand_id: str) -> dict[str, Any]:
    with server.client() as api:
        data: dict[str, Any] = api.get(f"/api/errands/{errand_id}").json()
    return data


def test_start_from_the_composer_watch_live_and_approve_an_edit(
    page: Any, server: ServerProc, sink: Sink, tmp_path: Path
) -> None:
    spec = post_script(tmp_path / "s.json", f"{sink.url}/board", body="draft", latency_ms=1500)
    page.goto(server.url)
    expect(page.locator("#badge")).to_have_text("0")
    page.fill("#start-form textarea[name=text]", "Post the weekly note to the board")
    page.fill("#start-form input[name=model]", spec)
    page.click("#start-form button[type=submit]")
    page.wait_for_url(f"{server.url}/errands/*")
    errand_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("h1")).to_have_text("Post the weekly note to the board")

    # live: the model's reply, the call and the approval arrive without a reload
    expect(page.locator("#timeline .ev-model .text")).to_have_text("I will post the note now.")
    expect(page.locator("#timeline .ev-ask")).to_contain_text("http_request")
    expect(page.locator(".errand-head .state")).to_have_text("waiting for you")
    expect(page.locator("#badge")).to_have_text("1")
    card = page.locator("#errand-approvals article.approval")
    expect(card.locator(".preview")).to_contain_text(f"POST {sink.url}/board")
    expect(card.locator(".why")).to_contain_text("rule effects.external")

    card.locator("[data-action=edit]").click()
    edited = f'{{"method": "POST", "url": "{sink.url}/board", "body": "edited by a person"}}'
    card.locator("textarea.edit-args").fill(edited)
    card.locator("[data-action=approve]").click()
    expect(card).to_have_count(0)
    expect(page.locator("#timeline .ev-granted")).to_contain_text("with edited arguments")
    expect(page.locator(".errand-head .state")).to_have_text("done")
    expect(page.locator(".final .text")).to_have_text("Sent: the note is posted.")
    expect(page.locator("#badge")).to_have_text("0")
    assert [(e["path"], e["body"]) for e in sink.effects] == [("/board", "edited by a person")]
    grant = [e["event"] for e in errand(server, errand_id)["events"]]
    assert [e["channel"] for e in grant if e["type"] == "approval_granted"] == ["inbox"]


def test_deny_with_a_reason_from_the_inbox(
    page: Any, server: ServerProc, sink: Sink, tmp_path: Path
) -> None:
    page.goto(server.url)
    expect(page.locator("#queue .empty-note")).to_be_visible()
    spec = post_script(tmp_path / "s.json", f"{sink.url}/deny-me")
    with server.client() as api:
        errand_id = api.post("/api/errands", json={"text": "post it", "model": spec}).json()["id"]
    card = page.locator("#queue article.approval")  # arrives live in the open inbox
    expect(card).to_have_count(1)
    expect(page.locator("#badge")).to_have_text("1")
    expect(page.locator(f".errand-row[data-errand-id='{errand_id}'] .state")).to_have_text(
        "waiting for you"
    )
    card.locator("[data-action=deny]").click()
    card.locator("[data-action=deny]").click()  # no reason yet: refused on the page
    expect(card.locator(".error")).to_contain_text("Say why")
    card.locator("input.deny-reason").fill("not to that board")
    card.locator("[data-action=deny]").click()
    expect(card).to_have_count(0)
    expect(page.locator("#badge")).to_have_text("0")
    wait_for(lambda: errand(server, errand_id)["status"] == "done")
    page.goto(f"{server.url}/errands/{errand_id}")
    expect(page.locator("#timeline .ev-denied")).to_contain_text("not to that board")
    expect(page.locator(".final .text")).to_have_text("Understood: I did not send it.")
    assert sink.effects == []


def test_a_pending_approval_survives_a_server_crash(
    page: Any, server: ServerProc, sink: Sink, tmp_path: Path
) -> None:
    spec = post_script(tmp_path / "s.json", f"{sink.url}/after-crash")
    with server.client() as api:
        errand_id = api.post("/api/errands", json={"text": "survive", "model": spec}).json()["id"]
    page.goto(f"{server.url}/errands/{errand_id}")
    card = page.locator("#errand-approvals article.approval")
    expect(card).to_have_count(1)

    server.kill()  # SIGKILL the real `errands up`
    server.start()  # same home, same port
    page.reload()
    expect(card).to_have_count(1)
    expect(card.locator(".preview")).to_contain_text(f"POST {sink.url}/after-crash")
    card.locator(".always-box").check()
    card.locator("[data-action=approve]").click()
    expect(card).to_have_count(0)
    expect(page.locator(".errand-head .state")).to_have_text("done")
    assert [e["path"] for e in sink.effects] == ["/after-crash"]
    grants = [e["event"] for e in errand(server, errand_id)["events"]]
    assert [e["always"] for e in grants if e["type"] == "approval_granted"] == [True]
    with httpx.Client(base_url=server.url) as api:
        assert api.get("/api/approvals").json() == []


# every value the live text of the errand's page shows, in order
RECORD_LIVE_TEXT = """
window.liveTexts = [];
new MutationObserver(() => {
  const node = document.querySelector("#live-text .text");
  const now = node ? node.textContent : "";
  if (window.liveTexts[window.liveTexts.length - 1] !== now) window.liveTexts.push(now);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def test_a_retried_reply_streams_once(
    page: Any, sink: Sink, tmp_path: Path, openai_sim: OpenAIChatSim
) -> None:
    answer = "The note is posted; the board shows it at the top of this week's column."
    home = tmp_path / "home"
    write_config(
        home,
        f'[providers.sim]\nkind = "openai"\nbase_url = "{openai_sim.base_url}"\n'
        'api_key_env = "INBOX_SIM_KEY"',
    )
    openai_sim.script(
        Turn(tool_calls=(call("http_request", {"method": "POST", "url": sink.url, "body": "hi"}),)),
        answer,
    )
    env = clean_env(home, INBOX_SIM_KEY=openai_sim.api_key)
    proc = ServerProc(home, port=free_port(), env=env).start()
    try:
        with proc.client() as api:
            r = api.post("/api/errands", json={"text": "post it", "model": "sim:gpt-sim"})
            errand_id = r.json()["id"]
        page.add_init_script(RECORD_LIVE_TEXT)
        page.goto(f"{proc.url}/errands/{errand_id}")
        card = page.locator("#errand-approvals article.approval")
        expect(card).to_have_count(1)
        expect(page.locator("#live.on")).to_have_count(1)  # the stream is open
        openai_sim.fault("stream_error")  # the reply breaks half-way; the retry answers
        card.locator("[data-action=approve]").click()
        expect(page.locator(".final .text")).to_have_text(answer)
        shown: list[str] = page.evaluate("window.liveTexts")
    finally:
        proc.kill()
    assert answer in shown  # it streamed live, and the broken attempt's fragment was
    assert all(answer.startswith(t) for t in shown)  # cleared, never shown before it
    assert [r.fault for r in openai_sim.requests] == [None, "stream_error", None]


def test_off_loopback_the_inbox_asks_for_the_token_first(page: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = ServerProc(home, host="0.0.0.0").start()
    try:
        page.goto(proc.url)
        expect(page.locator("h1")).to_have_text("Log in")
        page.fill("input[name=token]", "not the token")
        page.click("button[type=submit]")
        expect(page.locator(".login .error")).to_have_text("That is not the token.")
        page.fill("input[name=token]", (home / "server-token").read_text().strip())
        page.click("button[type=submit]")
        page.wait_for_url(f"{proc.url}/")
        page.fill("#start-form textarea[name=text]", "a list, please")
        page.fill("#start-form input[name=model]", "scripted:demo")
        page.click("#start-form button[type=submit]")
        page.wait_for_url(f"{proc.url}/errands/*")
        expect(page.locator(".errand-head .state")).to_have_text("done")  # live, with the session
        page.click("[data-action=logout]")
        page.wait_for_url(f"{proc.url}/login")
        page.goto(f"{proc.url}/")
        expect(page.locator("h1")).to_have_text("Log in")
    finally:
        proc.kill()
