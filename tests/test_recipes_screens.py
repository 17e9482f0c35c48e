"""The recipes in the inbox, in a real browser (Debian's Chromium through Playwright),
against a real ``errands up`` with the real mail servers and a model simulator speaking
OpenAI's wire protocol: board-summary's morning card (the summary to you, asked because
it is made from the board), vendor-chase's first mail to the vendor and overnight-drafts'
reply to a mail of the night, and listings-monitor's answer of a new listing, each added with
``errands recipe add`` and run now. Screenshots of each inbox go to ``$SCREENSHOTS_DIR``
(docs/img when making the docs' pictures, see docs/recipes/README.md), else the test's
temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api
import pytest
from helpers.browser import ARGS, CHROMIUM, TIMEOUT_MS
from helpers.mailkit import BOB, ERRANDS, ME, PASSWORD_ENV, a_mail, email_toml, mail
from helpers.mailserver import PASSWORD, MailServers
from helpers.server import ServerProc, clean_env, free_port, wait_for, write_config
from helpers.site import Page, Site
from sim.core import Turn, call
from sim.openai_server import OpenAIChatSim
from test_recipes_mail import board

__all__ = ["mail"]
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
expect = playwright_api.expect
FLATS = b'<ul><li class="flat">studio, 900</li>'


@pytest.fixture
def page() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):  # a missing browser is a failure, never a skip
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        yield pg
        browser.close()
    assert errors == []


def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def recipe(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "errands", "recipe", "add", *args, "-m", "sim:gpt-sim"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_recipe_cards_in_the_inbox(
    tmp_path: Path, page: Any, mail: MailServers, site: Site, openai_sim: OpenAIChatSim
) -> None:
    home = tmp_path / "home"
    write_config(
        home,
        email_toml(mail) + f'\n[providers.sim]\nkind = "openai"\nbase_url = '
        f'"{openai_sim.base_url}"\napi_key_env = "SCREENS_SIM_KEY"',
    )
    env = clean_env(home, SCREENS_SIM_KEY=openai_sim.api_key, **{PASSWORD_ENV: PASSWORD})
    site.pages["/issues"] = board(("Login fails", "closed"), ("Dark mode", "open"))
    summary = "Changed since the last run: Login fails (closed), Dark mode (open)."
    chase = "Hello, could you tell us when invoice 1042 will be paid? Thank you."
    openai_sim.script(
        Turn(tool_calls=(call("fetch_url", {"url": site.url("/issues")}),)),
        Turn(
            tool_calls=(
                call("send_email", {"to": [ME], "subject": "Board summary", "body": summary}),
            )
        ),
    )
    recipe(env, "board-summary", "--name", "board", "--board", site.url("/issues"),
           "--cron", "0 8 * * 1-5", "--tz", "UTC", "--to", ME)  # fmt: skip
    recipe(env, "vendor-chase", "--name", "acme", "--to", BOB, "--about", "invoice 1042")
    recipe(env, "overnight-drafts", "--name", "drafts")
    site.pages["/flats"] = Page(FLATS + b"</ul>")
    recipe(env, "listings-monitor", "--name", "flats", "--url", site.url("/flats"),
           "--select", "li.flat", "--every", "1h")  # fmt: skip
    where = shots(tmp_path)
    server = ServerProc(home, port=free_port(), env=env).start()
    try:
        with server.client() as api:
            run = api.post("/api/schedules/board/run").json()
            assert run["outcome"] == "started", run
            wait_for(lambda: api.get("/api/approvals").json(), timeout=30)
        page.goto(f"{server.url}/")
        card = page.locator("#queue article.approval")
        expect(card).to_have_count(1)
        expect(card).to_contain_text(f"to: {ME}")
        expect(card).to_contain_text("Board summary")
        expect(card).to_contain_text("flow control: P-T")  # made from the board: it asks
        page.screenshot(path=str(where / "recipe-board-summary-inbox.png"), full_page=True)
        openai_sim.script(
            Turn(
                tool_calls=(
                    call("send_email", {"to": [BOB], "subject": "Invoice 1042", "body": chase}),
                )
            ),
        )
        with server.client() as api:
            assert api.post("/api/schedules/acme/run").json()["outcome"] == "started"
        expect(card).to_have_count(2)  # (the inbox refreshes itself)
        expect(page.locator("#queue")).to_contain_text(f"to: {BOB}")
        expect(page.locator("#queue")).to_contain_text("invoice 1042 will be paid")
        page.screenshot(path=str(where / "recipe-vendor-chase-inbox.png"), full_page=True)
        # overnight drafts: a mail came in the night; the morning's card answers it
        mail.deliver(a_mail(BOB, "Lunch on Friday?", "Are you free at 1?"), [ERRANDS])
        with mail.imap(ERRANDS) as imap:
            uid = max(imap.search(["SUBJECT", "Lunch on Friday?"]))
        reply = {"to": [BOB], "subject": "Re: Lunch on Friday?", "body": "Yes -- 1pm is fine."}
        openai_sim.script(
            Turn(tool_calls=(call("search_email", {"since": "2020-01-01"}),)),
            Turn(tool_calls=(call("read_email", {"id": f"INBOX:{uid}"}),)),
            Turn(tool_calls=(call("draft_email", reply),)),
            Turn(tool_calls=(call("send_email", reply),)),
        )
        with server.client() as api:
            assert api.post("/api/schedules/drafts/run").json()["outcome"] == "started"
        expect(card).to_have_count(3)
        expect(page.locator("#queue")).to_contain_text("Yes -- 1pm is fine.")
        page.screenshot(path=str(where / "recipe-overnight-drafts-inbox.png"), full_page=True)
        # listings: the first check records the page; the next finds one new listing
        with server.client() as api:
            assert api.post("/api/schedules/flats/run").json()["outcome"] == "baseline"
            site.pages["/flats"] = Page(FLATS + b'<li class="flat">loft, 2400</li></ul>')
            openai_sim.script("New: loft, 2400")
            ran = api.post("/api/schedules/flats/run").json()
            assert ran["outcome"] == "started", ran
            wait_for(lambda: api.get(f"/api/errands/{ran['errand_id']}").json()["status"] == "done")
        expect(page.locator("#errands")).to_contain_text("New: loft, 2400")
        page.screenshot(path=str(where / "recipe-listings-monitor-inbox.png"), full_page=True)
    finally:
        server.kill()
    assert not any(b"Invoice 1042" in m for m in mail.messages(BOB))  # nothing left unasked
