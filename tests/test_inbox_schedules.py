"""The inbox's Schedules page in a real browser (Debian's Chromium through Playwright)
against a real `errands up` (issue 15, item 5): one row per schedule and watch with its
next run in the person's time zone (``timezone = "America/New_York"``), its last
result (escaped: a model's HTML is shown as text), its cost per run and per day, and its
state (paused, erroring with the error); Pause, Resume, Run now and Remove work through
the API. A run's errand page links to its schedule; a sleeping errand's page says until
when and why. Screenshots go to ``tests/artifacts/inbox/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_api
import pytest
from helpers.browser import chromium, fresh_page, shot
from helpers.kit import call, write_script
from helpers.server import ServerProc, clean_env, wait_for
from helpers.static_site import StaticSite

from errands.core.localtime import local_time

expect = playwright_api.expect

ZONE = "America/New_York"
CONFIG = f'timezone = "{ZONE}"\n\n[network]\nallow_private = ["127.0.0.1"]\n'
# what a model answered, with markup in it: the page shows it as text, never as HTML
ANSWER = 'Board summary: <b>3 cards</b> moved <img src=x onerror="window.pwned=1">'


@dataclass
class Up:
    proc: ServerProc
    site: StaticSite
    scripts: Path

    @property
    def url(self) -> str:
        return self.proc.url

    def api(self) -> httpx.Client:
        return self.proc.client()

    def schedule(self, name: str) -> httpx.Response:
        with self.api() as api:
            return api.get(f"/api/schedules/{name}")

    def add(self, **body: Any) -> dict[str, Any]:
        with self.api() as api:
            r = api.post("/api/schedules", json=body)
            assert r.status_code == 201, r.text
            data: dict[str, Any] = r.json()
            return data

    def run(self, name: str) -> dict[str, Any]:
        with self.api() as api:
            data: dict[str, Any] = api.post(f"/api/schedules/{name}/run").json()
            return data

    def status(self, errand_id: str) -> str:
        with self.api() as api:
            return str(api.get(f"/api/errands/{errand_id}").json()["status"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with fresh_page(browser) as pg:
        yield pg


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    base = tmp_path_factory.mktemp("inbox-schedules")
    home = base / "home"
    home.mkdir()
    (home / "errands.toml").write_text(CONFIG)
    site = StaticSite(base / "site")
    scripts = base / "scripts"
    scripts.mkdir()
    proc = ServerProc(home, env=clean_env(home)).start()
    try:
        yield Up(proc, site, scripts)
    finally:
        proc.kill()
        site.close()


@pytest.fixture(scope="module")
def board(up: Up) -> dict[str, Any]:
    """A yearly schedule whose model answers with markup, run once by hand."""
    model = write_script(up.scripts / "board.json", {"text": ANSWER})
    up.add(
        name="board",
        kind="cron",
        cron="0 8 1 1 *",
        text="summarise my board",
        model=model,
        max_cost_usd=0.5,
        daily_usd=2,
    )
    errand_id = up.run("board")["errand_id"]
    wait_for(lambda: up.status(errand_id) == "done")
    shown: dict[str, Any] = up.schedule("board").json()
    assert shown["last_run"] == errand_id
    return shown


def test_the_page_shows_next_run_last_result_cost_and_state(
    page: Any, up: Up, board: dict[str, Any]
) -> None:
    up.add(name="gone", kind="watch", url=up.site.url("missing.html"), every="1h", text="x")
    assert up.run("gone")["outcome"] == "failed"  # a 404: the watch is erroring
    page.goto(up.url)
    page.click("header nav a.schedules-link")
    page.wait_for_url(f"{up.url}/schedules")
    expect(page.locator("h1")).to_have_text("Schedules and watches")
    expect(page.locator(".schedules-page .hint").first).to_contain_text(ZONE)

    row = page.locator("#schedule-board")
    expect(row.locator(".sched-state")).to_have_text("active")
    expect(row.locator(".when")).to_have_text("cron 0 8 1 1 * (America/New_York)")
    # the next run in the person's zone, as the CLI shows it: "Fri 1 Jan 2027 08:00 EST"
    expect(row.locator(".next")).to_have_text(local_time(board["next_at"], ZONE))
    assert "EST" in local_time(board["next_at"], ZONE)
    last = row.locator(".last")
    expect(last.locator("a")).to_have_text(board["last_run"])
    expect(last.locator(".state")).to_have_text("done")
    expect(last).to_contain_text("$0.0000")  # the run's cost
    expect(row.locator(".result")).to_have_text(ANSWER)  # the markup as text
    assert row.locator(".result img, .result b").count() == 0
    assert page.evaluate("window.pwned") is None
    expect(row.locator(".cost")).to_have_text(
        "$0.0000 today of $2.00 a day · at most $0.5000 a run"
    )
    expect(row.locator(".runs")).to_have_text("1")

    gone = page.locator("#schedule-gone")
    expect(gone.locator(".sched-state")).to_have_text("erroring")
    expect(gone.locator(".sched-error")).to_contain_text("1 failure in a row")
    expect(gone.locator(".sched-error")).to_contain_text("404")
    expect(gone.locator(".watch-url")).to_contain_text(up.site.url("missing.html"))
    expect(gone.locator("[data-action=run-schedule]")).to_have_text("Check now")
    shot(page, "schedules")
    with up.api() as api:
        api.delete("/api/schedules/gone")


def test_pause_resume_run_now_and_remove_work_from_the_page(
    page: Any, up: Up, board: dict[str, Any]
) -> None:
    up.add(name="hourly", kind="every", every="1h", text="look around", model="scripted:demo")
    page.goto(f"{up.url}/schedules")
    row = page.locator("#schedule-hourly")
    said = page.locator("#schedule-said")

    row.locator("[data-action=pause-schedule]").click()
    expect(said).to_have_text("hourly paused: no slot starts a run until you resume it.")
    expect(row.locator(".sched-state")).to_have_text("paused")
    expect(row.locator(".next")).to_have_text("paused")
    assert up.schedule("hourly").json()["paused"] is True

    row.locator("[data-action=resume-schedule]").click()
    expect(row.locator(".sched-state")).to_have_text("active")
    assert up.schedule("hourly").json()["paused"] is False

    row.locator("[data-action=run-schedule]").click()
    expect(said).to_contain_text("schedule hourly: run started: ")
    errand_id = said.inner_text().rsplit(" ", 1)[1]
    wait_for(lambda: up.status(errand_id) == "done")
    expect(row.locator(".last a")).to_have_text(errand_id)  # live: the run's changes refresh it
    expect(row.locator(".last .state")).to_have_text("done")
    shot(page, "schedules-after-run-now")

    row.locator("[data-action=remove-schedule]").click()  # (the confirm is accepted)
    expect(said).to_have_text("hourly removed; the errands it started stay.")
    expect(row).to_have_count(0)
    assert up.schedule("hourly").status_code == 404
    assert up.status(errand_id) == "done"  # its run stays
    expect(page.locator("#schedule-board")).to_have_count(1)


def test_a_refused_action_shows_its_reason_on_the_row(page: Any, up: Up) -> None:
    up.add(name="doomed", kind="every", every="2h", text="x", model="scripted:demo")
    page.goto(f"{up.url}/schedules")
    row = page.locator("#schedule-doomed")
    expect(row).to_have_count(1)
    with up.api() as api:
        api.delete("/api/schedules/doomed")  # removed elsewhere meanwhile
    row.locator("[data-action=pause-schedule]").click()
    expect(row.locator(".error")).to_contain_text("no schedule named 'doomed'")


def test_a_run_links_to_its_schedule(page: Any, up: Up, board: dict[str, Any]) -> None:
    page.goto(up.url)
    listed = page.locator(f".errand-row[data-errand-id='{board['last_run']}']")
    expect(listed.locator(".sched-mark")).to_have_text("◷ board")
    listed.locator("a.title").click()
    page.wait_for_url(f"{up.url}/errands/{board['last_run']}")
    link = page.locator(".from-schedule a")
    expect(link).to_have_text("◷ board")
    link.click()
    page.wait_for_url(f"{up.url}/schedules#schedule-board")
    expect(page.locator("#schedule-board")).to_be_visible()


def test_a_sleeping_errand_says_until_when_and_why(page: Any, up: Up) -> None:
    model = write_script(
        up.scripts / "sleeper.json",
        {"tool_calls": [call("wait", seconds=7200, reason="the vendor's answer")]},
        {"text": "followed up"},
    )
    with up.api() as api:
        errand_id = api.post("/api/errands", json={"text": "chase", "model": model}).json()["id"]
        wait_for(lambda: api.get(f"/api/errands/{errand_id}").json()["status"] == "sleeping")
        wake_at = api.get(f"/api/errands/{errand_id}").json()["wake_at"]
    page.goto(f"{up.url}/errands/{errand_id}")
    note = page.locator(".errand-head .sleeping-note")
    expect(note.locator(".wake-at")).to_have_text(local_time(wake_at, ZONE))
    expect(note.locator(".wait-reason")).to_have_text("the vendor's answer")
    expect(page.locator("#timeline .ev-sleeping")).to_contain_text("the vendor's answer")
    shot(page, "errand-sleeping")
    page.goto(up.url)
    headline = page.locator(f".errand-row[data-errand-id='{errand_id}'] .headline")
    expect(headline).to_contain_text("sleeping until")
    expect(headline).to_contain_text("the vendor's answer")
