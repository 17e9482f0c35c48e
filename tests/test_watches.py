"""Watches (issue 15): checks without the model against a real page on 127.0.0.1, under
a clock the test drives -- $0 while nothing changes, one errand with only the new items
when something does, a baseline first, no re-report after a restart, back-off on errors."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from typing import Any

import pytest
from helpers.site import Page, Site, serving

from errands.clock import FakeClock
from errands.config import NetworkSettings, SecretSettings, Settings
from errands.core import events as ev
from errands.core.schedules import ScheduleError
from errands.engine.scheduler import Scheduler
from errands.engine.schedules import ScheduleRequest, add_schedule, pause_schedule
from errands.store.protocol import RunRow
from errands.store.sqlite import SQLiteStore
from errands.tools import watchcheck

HOUR, DAY = 3600.0, 86400.0


def listings(*flats: str, ad: str = "cheap flights") -> bytes:
    items = "".join(f'<li class="flat">{f}</li>' for f in flats)
    return (
        f"<html><body><div class='ad'>Sponsored: {ad}</div><ul>{items}</ul>"
        f"<p>Page generated at {ad}</p></body></html>"
    ).encode()


class WholePage(Scheduler):
    """The control: a watch that compares the whole page, not the part it selects."""

    @staticmethod
    async def check(*args: Any, **kwargs: Any) -> watchcheck.Checked:
        kwargs["select"] = None
        return await watchcheck.check(*args, **kwargs)


class Watching:
    def __init__(self, settings: Settings, site: Site, scheduler: type[Scheduler]) -> None:
        self.settings = settings
        self.site = site
        self.clock = FakeClock(wall=1_800_000_000.0)
        self.scheduler_class = scheduler
        self.open()

    def open(self) -> None:
        self.store = SQLiteStore(self.settings.db_path, clock=self.clock)
        self.scheduler = self.scheduler_class(self.store, self.settings, clock=self.clock)

    async def restart(self) -> None:
        await self.store.close()
        self.open()

    async def add(self, **body: Any) -> None:
        body = {"name": "flats", "kind": "watch", "every": "1h", "select": "li.flat", **body}
        body.setdefault("url", self.site.url("/flats"))
        body.setdefault("text", "tell me about new flats")
        request = ScheduleRequest(**body)
        row = await add_schedule(self.store, self.settings, request, clock=self.clock)
        assert row.due_at is not None and row.next_at is not None
        self.clock.advance(row.due_at - row.next_at)  # (ticks fall when checks are due)

    async def checks(self, n: int, every: float = HOUR) -> None:
        for _ in range(n):
            self.clock.advance(every)
            await self.scheduler.tick()

    async def runs(self) -> list[RunRow]:
        return [r for r in await self.store.schedule_runs("flats", 1000) if r.outcome == "started"]

    def events(self) -> int:
        with closing(sqlite3.connect(self.settings.db_path)) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.fixture
def site() -> Iterator[Site]:
    with serving() as s:
        yield s


@pytest.fixture
def local(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"network": NetworkSettings(allow_private=["127.0.0.1"], timeout_seconds=5)}
    )


@pytest.fixture
async def w(local: Settings, site: Site) -> AsyncIterator[Watching]:
    world = Watching(local, site, Scheduler)
    yield world
    await world.store.close()


async def rotating_ads(w: Watching, hours: int) -> None:
    """*hours* hourly checks of a page whose listings stay and whose ad changes each time."""
    for hour in range(hours):
        w.site.pages["/flats"] = Page(listings("2 rooms, 1900", "studio, 900", ad=f"ad {hour}"))
        await w.checks(1)


async def test_two_days_of_an_unchanging_listings_page_cost_nothing(w: Watching) -> None:
    await w.add(overlap="allow")  # (as the control below: nothing runs to overlap with)
    await rotating_ads(w, 48)
    assert await w.runs() == [] and await w.store.list_errands() == []
    assert w.events() == 0  # not one event: a check that sees nothing new writes none
    row = await w.store.schedule("flats")
    assert row.status.checks == 48 and row.status.baseline and row.status.changes == 0


async def test_negative_control_comparing_the_whole_page_wakes_the_model_every_hour(
    local: Settings, site: Site
) -> None:
    w = Watching(local, site, WholePage)
    try:
        await w.add(overlap="allow")
        await rotating_ads(w, 6)
        assert len(await w.runs()) == 5  # every check after the baseline "changed"
    finally:
        await w.store.close()


async def test_a_new_listing_starts_one_errand_given_only_what_is_new(w: Watching) -> None:
    await w.add()
    w.site.pages["/flats"] = Page(listings("2 rooms, 1900", "studio, 900"))
    await w.checks(3)
    w.site.pages["/flats"] = Page(listings("loft, 2400", "2 rooms, 1900", "studio, 900"))
    await w.checks(3)
    (run,) = await w.runs()
    log = [e.event for e in await w.store.read(run.errand_id or "")]
    created, context, diff = log
    assert isinstance(created, ev.ErrandCreated) and created.schedule == "flats"
    assert created.content.text == "tell me about new flats"
    assert created.content.integrity == "trusted"
    assert isinstance(diff, ev.UserMessage) and diff.channel == "watch"
    assert diff.content.integrity == "untrusted"
    assert diff.content.provenance.source == w.site.url("/flats")
    assert "loft, 2400" in diff.content.text
    assert "studio" not in diff.content.text and "Sponsored" not in diff.content.text
    assert isinstance(context, ev.UserMessage) and context.content.integrity == "trusted"
    row = await w.store.schedule("flats")
    assert row.status.changes == 1 and row.status.last_run == run.errand_id


async def test_reordering_and_removal_start_nothing(w: Watching) -> None:
    await w.add()
    w.site.pages["/flats"] = Page(listings("a", "b", "c"))
    await w.checks(1)
    w.site.pages["/flats"] = Page(listings("c", "a"))
    await w.checks(1)
    w.site.pages["/flats"] = Page(listings("b", "c", "a"))  # b came back within 7 days
    await w.checks(1)
    assert await w.runs() == []


async def test_an_item_gone_for_more_than_seven_days_is_new_again(w: Watching) -> None:
    await w.add(every="1d")
    w.site.pages["/flats"] = Page(listings("a", "b"))
    await w.checks(1, every=DAY)
    w.site.pages["/flats"] = Page(listings("a"))
    await w.checks(8, every=DAY)
    w.site.pages["/flats"] = Page(listings("a", "b"))
    await w.checks(1, every=DAY)
    assert len(await w.runs()) == 1


async def test_a_restart_never_reports_an_old_change_again(w: Watching) -> None:
    await w.add()
    w.site.pages["/flats"] = Page(listings("a"))
    await w.checks(1)
    w.site.pages["/flats"] = Page(listings("a", "new"))
    await w.checks(1)
    assert len(await w.runs()) == 1
    await w.restart()
    await w.checks(5)
    assert len(await w.runs()) == 1


async def test_a_304_is_a_check_that_writes_no_event(w: Watching) -> None:
    await w.add()
    w.site.pages["/flats"] = Page(listings("a"), etag='"v1"')
    await w.checks(4)
    assert [h.get("if-none-match") for h in w.site.seen] == [None, '"v1"', '"v1"', '"v1"']
    assert (await w.store.schedule("flats")).status.checks == 4 and w.events() == 0


async def test_a_failing_page_backs_off_says_why_and_recovers(w: Watching) -> None:
    await w.add(every="1m")
    w.site.pages["/flats"] = Page(b"down for maintenance", "text/plain", 503)
    await w.checks(1, every=60)
    row = await w.store.schedule("flats")
    assert row.status.errors == 1 and "503" in row.status.last_error
    assert row.due_at == row.status.retry_at and row.due_at is not None
    assert row.due_at - w.clock.wall() == 120  # twice the interval
    fetched = len(w.site.seen)
    await w.checks(1, every=60)  # not due yet: not fetched
    assert len(w.site.seen) == fetched
    await w.checks(1, every=60)
    row = await w.store.schedule("flats")
    assert row.status.errors == 2 and row.due_at - w.clock.wall() == 240
    w.site.pages["/flats"] = Page(listings("a"))
    await w.checks(5, every=60)
    row = await w.store.schedule("flats")
    assert row.status.errors == 0 and row.status.last_error == "" and row.status.baseline


def declare(w: Watching, name: str, hosts: list[str], env: str | None = None) -> None:
    """``[secrets.NAME]`` in the watching process's errands.toml."""
    secrets = {**w.settings.secrets, name: SecretSettings(env=env, hosts=hosts)}
    w.settings = w.settings.model_copy(update={"secrets": secrets})
    w.scheduler.settings = w.settings


async def test_headers_come_from_secrets_and_are_never_written(
    w: Watching, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLATS_SESSION", "session=s3cr3t-value")
    declare(w, "FLATS_COOKIE", ["127.0.0.1"], env="FLATS_SESSION")
    await w.add(headers={"Cookie": "secret:FLATS_COOKIE"})
    w.site.pages["/flats"] = Page(listings("a"))
    await w.checks(1)
    w.site.pages["/flats"] = Page(listings("a", "b"))
    await w.checks(1)
    assert w.site.seen[-1]["cookie"] == "session=s3cr3t-value"
    with closing(sqlite3.connect(w.settings.db_path)) as db:
        dump = "\n".join(db.iterdump())
    assert "s3cr3t" not in dump and "FLATS_COOKIE" in dump  # the name, never the value


async def test_a_missing_secret_fails_the_check_naming_it(w: Watching) -> None:
    declare(w, "NOT_SET_ANYWHERE", ["127.0.0.1"])
    await w.add(headers={"Cookie": "secret:NOT_SET_ANYWHERE"})
    w.site.pages["/flats"] = Page(listings("a"))
    await w.checks(1)
    row = await w.store.schedule("flats")
    assert "NOT_SET_ANYWHERE" in row.status.last_error and w.site.seen == []


@pytest.mark.parametrize("declared", [None, ["flats.example"]], ids=["undeclared", "elsewhere"])
async def test_a_secret_goes_only_where_errands_toml_says(
    w: Watching, monkeypatch: pytest.MonkeyPatch, declared: list[str] | None
) -> None:
    """A watch cannot send an environment variable (a provider's key) to any page: the
    secret must be declared in [secrets], with the page's host among its hosts."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-pages")
    if declared is not None:
        declare(w, "OPENAI_API_KEY", declared)
    with pytest.raises(ScheduleError, match=r"^headers: Authorization: ") as caught:
        await w.add(headers={"Authorization": "secret:OPENAI_API_KEY"})
    assert ("no secret named" if declared is None else "may be sent only to") in str(caught.value)
    assert await w.store.schedules() == []


async def test_a_secret_whose_hosts_changed_is_not_sent(w: Watching) -> None:
    """errands.toml changed after the watch was added: each check asks again."""
    declare(w, "TOKEN", ["127.0.0.1"])
    await w.add(headers={"Authorization": "secret:TOKEN"})
    declare(w, "TOKEN", ["board.example"])
    w.site.pages["/flats"] = Page(listings("a"))
    await w.checks(1)
    row = await w.store.schedule("flats")
    assert "may be sent only to board.example" in row.status.last_error and w.site.seen == []


async def test_a_paused_watch_fetches_nothing(w: Watching) -> None:
    await w.add()
    await pause_schedule(w.store, "flats")
    w.site.pages["/flats"] = Page(listings("a"))
    await w.checks(5)
    assert w.site.seen == []


async def test_run_now_checks_at_once_and_reports_only_new_items(w: Watching) -> None:
    await w.add()
    w.site.pages["/flats"] = Page(listings("a"))
    assert await w.scheduler.run_now("flats") == ""  # the baseline
    w.site.pages["/flats"] = Page(listings("a", "b"))
    started = await w.scheduler.run_now("flats")
    assert started and [r.errand_id for r in await w.runs()] == [started]


async def test_new_items_wait_while_the_daily_budget_is_spent_and_start_the_next_day(
    w: Watching,
) -> None:
    await w.add(daily_usd=0.5, overlap="allow")
    w.site.pages["/flats"] = Page(listings("a"))
    await w.checks(1)
    w.site.pages["/flats"] = Page(listings("a", "b"))
    await w.checks(1)
    (run,) = await w.runs()
    errand_id = run.errand_id or ""
    now = w.clock.wall()  # (spend is booked on the date of the response)
    asked = ev.ModelRequested(model="m", tools_hash="x", at=now)
    (req,) = await w.store.append(errand_id, [asked])
    usage = ev.Usage(cost_usd=0.5)
    answered = ev.ModelResponded(request_seq=req, model="m", usage=usage, at=now)
    await w.store.append(errand_id, [answered])
    w.site.pages["/flats"] = Page(listings("a", "b", "c"))
    await w.checks(3)
    row = await w.store.schedule("flats")
    assert len(await w.runs()) == 1 and "daily budget" in row.status.note
    assert row.status.changes == 1  # (the waiting item is not counted again and again)
    await w.checks(24)  # a new day: c is still new, and starts its run
    runs = await w.runs()
    assert len(runs) == 2
    diff = [e.event for e in await w.store.read(runs[0].errand_id or "")][-1]
    assert isinstance(diff, ev.UserMessage) and "- c" in diff.content.text
    assert (await w.store.schedule("flats")).status.note == ""


async def test_a_host_that_does_not_resolve_now_is_kept_and_its_check_says_why(
    w: Watching,
) -> None:
    """Offline, or a DNS hiccup: the watch is added; each check tries again and its
    status says what failed (an address the guard refuses is still refused at once)."""
    await w.add(url="https://listings.invalid/flats")
    await w.checks(1)
    row = await w.store.schedule("flats")
    assert row.status.errors == 1 and "cannot resolve listings.invalid" in row.status.last_error


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "control"])
async def test_a_secret_header_is_not_carried_to_another_origin_on_a_redirect(
    w: Watching, monkeypatch: pytest.MonkeyPatch, guard: bool
) -> None:
    """The watched page redirects to another origin: the secret (here in X-Api-Key, no
    credential header by name) stays with the host it was declared for."""
    from errands.tools import netguard

    if not guard:  # the control: every caller header follows the redirect
        monkeypatch.setattr(netguard, "_PORTABLE_HEADERS", frozenset({"x-api-key", "accept"}))
    monkeypatch.setenv("BOARD_KEY", "k-s3cr3t")
    declare(w, "BOARD_KEY", ["127.0.0.1"])
    with serving() as other:
        other.pages["/flats"] = Page(listings("a"))
        w.site.pages["/flats"] = Page(b"", status=302, location=other.url("/flats"))
        await w.add(headers={"X-Api-Key": "secret:BOARD_KEY"})
        await w.checks(1)
        assert w.site.seen[-1].get("x-api-key") == "k-s3cr3t"  # the declared host got it
        carried = other.seen[-1].get("x-api-key")
    assert (carried is None) if guard else carried == "k-s3cr3t"
