"""Recipes (issue 20): ``errands recipe ls|add`` as a person types them, and the
listings monitor end to end -- a real page on 127.0.0.1, the real scheduler under a clock
the test drives, a scripted model that records what it is given.

Listings: a page that gains two listings on day 2 starts exactly one errand, given exactly
those two; an unchanged page never calls the model (control: the same recipe without
``--select`` wakes the model on a page whose ad rotates). Bad input is one line naming the
option, exit 2, and nothing is created."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from helpers.kit import harness_for
from helpers.site import Page, Site

from errands.clock import FakeClock
from errands.config import Settings
from errands.core.states import ErrandState
from errands.engine.scheduler import Scheduler
from errands.harness import Harness
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.models.scripted import Script, ScriptedModel
from errands.recipes import RecipeError, RecipeOptions, add_recipe
from errands.store.sqlite import SQLiteStore

DAY = 86400.0


class Recording(ScriptedModel):
    """A scripted model that keeps every request it was asked (the test reads them)."""

    def __init__(self, *turns: dict[str, Any]) -> None:
        super().__init__(Script.model_validate({"name": "rec", "turns": list(turns)}))
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self.requests.append(request)
        return await super().complete(request, on_text)


def page(*flats: str, ad: str = "cheap flights") -> Page:
    items = "".join(f'<li class="flat">{f}</li>' for f in flats)
    return Page(f"<html><body><p>Sponsored: {ad}</p><ul>{items}</ul></body></html>".encode())


class World:
    def __init__(self, settings: Settings, site: Site) -> None:
        self.settings, self.site = settings, site
        self.clock = FakeClock(wall=1_800_000_000.0)
        self.store = SQLiteStore(settings.db_path, clock=self.clock)
        self.model = Recording({"text": "New: see the list above."})
        self.harness: Harness = harness_for(self.store, settings, model=self.model)
        self.scheduler = Scheduler(self.store, settings, clock=self.clock)

    async def add(self, recipe: str, **options: Any) -> None:
        made = await add_recipe(
            self.store, self.settings, recipe, RecipeOptions(**options), clock=self.clock,
            known_tools=self.harness.tool_names(),
        )  # fmt: skip
        row = await self.store.schedule(made.name)
        assert row.due_at is not None and row.next_at is not None
        self.clock.advance(row.due_at - row.next_at)  # (ticks fall when checks are due)

    async def day(self, every: float = DAY) -> None:
        """A day passes: the scheduler's pass, then every errand it started is run."""
        self.clock.advance(every)
        await self.scheduler.tick()
        for view in await self.store.list_errands():
            if view.state is ErrandState.queued:
                await asyncio.wait_for(self.harness.runner().run_errand(view.id), 30)


@pytest.fixture
async def world(local: Settings, site: Site) -> AsyncIterator[World]:
    w = World(local, site)
    yield w
    await w.store.close()


async def test_listings_two_new_on_day_two_start_one_errand_given_exactly_those(
    world: World,
) -> None:
    url = world.site.url("/flats")
    world.site.pages["/flats"] = page("2 rooms, 1900", "studio, 900")
    await world.add("listings-monitor", name="flats", url=url, select="li.flat", every="1d")
    await world.day()  # day 1: the baseline
    assert world.model.calls == 0
    world.site.pages["/flats"] = page("loft, 2400", "2 rooms, 1900", "attic, 1200",
                                      "studio, 900", ad="another ad")  # fmt: skip
    await world.day()  # day 2: two new listings
    (view,) = await world.store.list_errands()
    assert view.schedule == "flats" and view.state is ErrandState.done
    assert world.model.calls == 1
    (request,) = world.model.requests
    given = "\n".join(m.text for m in request.messages)
    assert "loft, 2400" in given and "attic, 1200" in given
    assert "2 rooms" not in given and "studio" not in given and "another ad" not in given
    assert view.tools == []  # notify inbox: its answer is the notice; it may call nothing
    for _ in range(3):  # days 3-5: the page as on day 2
        await world.day()
    assert len(await world.store.list_errands()) == 1 and world.model.calls == 1


async def test_negative_control_without_a_selector_a_rotating_ad_wakes_the_model(
    world: World,
) -> None:
    """The guarantee rests on the selector: the same recipe watching the whole page
    (no --select) starts a run, and a model call, each day the ad changes."""
    url = world.site.url("/flats")
    await world.add("listings-monitor", name="flats", url=url, every="1d")
    for n in range(4):
        world.site.pages["/flats"] = page("2 rooms, 1900", ad=f"ad {n}")
        await world.day()
    assert world.model.calls == 3


async def test_a_refused_recipe_writes_nothing(world: World) -> None:
    with pytest.raises(RecipeError, match=r"^--select: "):
        await world.add("listings-monitor", name="f", url=world.site.url("/"), select="li[")
    with pytest.raises(RecipeError, match=r"^--board: does not take it|^--board: "):
        await world.add("listings-monitor", name="f", url=world.site.url("/"), board="x")
    assert await world.store.schedules() == []


# -- the CLI ----------------------------------------------------------------------------------


def test_recipe_ls_lists_the_four(cli: CLI) -> None:
    r = cli("recipe", "ls", "--json")
    assert r.returncode == 0, r.stderr
    assert [row["recipe"] for row in json.loads(r.stdout)] == [
        "listings-monitor", "board-summary", "overnight-drafts", "vendor-chase"]  # fmt: skip


def test_recipe_add_prints_what_it_made_and_how_to_see_it(cli: CLI, local: Settings) -> None:
    r = cli("recipe", "add", "listings-monitor", "--name", "flats",
            "--url", "http://127.0.0.1:9/list", "--select", "li.flat", "--every", "1h")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "recipe listings-monitor added as watch flats: checks every 1h" in r.stdout
    assert "see it: errands schedule show flats" in r.stdout
    shown = json.loads(cli("schedule", "show", "flats", "--json").stdout)
    assert shown["kind"] == "watch" and shown["select"] == "li.flat"
    assert shown["spec"]["tools"] == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nosuch", "--name", "x"], "error: no recipe named 'nosuch': choose one of"),
        (["overnight-drafts", "--name", "x", "--cron", "61 * * * *"],
         "error: overnight-drafts sends mail, and errands.toml has no [email] section"),
        (["board-summary", "--name", "x", "--board", "http://127.0.0.1:9/issues",
          "--cron", "61 * * * *", "--to", "me@example.com"],
         "error: board-summary sends mail, and errands.toml has no [email] section"),
        (["listings-monitor", "--name", "x", "--url", "ftp://example.com/list"],
         "error: --url: 'ftp://example.com/list': only http and https"),
        (["listings-monitor", "--name", "x", "--url", "http://127.0.0.1:9/", "--every", "0s"],
         "error: --every: "),
        (["listings-monitor", "--name", "x", "--url", "http://127.0.0.1:9/", "--notify", "sms"],
         "error: --notify: give inbox, email or webhook"),
        (["listings-monitor", "--name", "x", "--url", "http://127.0.0.1:9/", "--notify", "email",
          "--to", "me@example.com"],
         "error: listings-monitor sends mail, and errands.toml has no [email] section"),
        (["listings-monitor", "--name", "x", "--url", "http://127.0.0.1:9/", "--notify",
          "webhook"], "error: --notify webhook: errands.toml has no [notify] webhook_url"),
    ],
    ids=["unknown", "drafts-no-email", "board-no-email", "bad-url", "bad-every", "bad-notify",
         "email-notify-no-email", "webhook-none"],
)  # fmt: skip
def test_bad_input_is_one_line_and_creates_nothing(
    cli: CLI, local: Settings, args: list[str], error: str
) -> None:
    r = cli("recipe", "add", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    text = " ".join(r.stderr.split())
    assert text.startswith(error), text
    assert "Traceback" not in r.stderr
    assert json.loads(cli("schedule", "ls", "--json").stdout) == []


def test_always_for_a_mail_recipient_pins_exactly_who_receives_it() -> None:
    """send_email's to and cc are lists: "always" from its card pins both exactly (no cc
    stays no cc), never the body -- before, a list pinned nothing and the card could not
    offer "always" at all."""
    from errands.policy.rules import pattern_matches
    from errands.policy.standing import standing_pattern
    from errands.tools.tool import ArgRole

    roles = {"to": ArgRole.recipient, "cc": ArgRole.recipient, "body": ArgRole.body}
    me = ["me@test.example"]
    pattern = standing_pattern(roles, {"to": me, "cc": None, "body": "Monday's summary"})
    assert pattern_matches(pattern, {"to": me, "cc": None, "body": "Tuesday's summary"})
    for sneaked in ({"to": me, "cc": ["x@evil.example"]}, {"to": [*me, "x@evil.example"]}):
        assert not pattern_matches(pattern, {"cc": None, "body": "hi", **sneaked})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["overnight-drafts", "--name", "x", "--cron", "61 * * * *"],
         "error: --cron: '61 * * * *' is not valid"),
        (["board-summary", "--name", "x", "--board", "file:///etc/passwd", "--cron", "0 8 * * *",
          "--to", "me@example.com"], "error: --board: "),
        (["vendor-chase", "--name", "x", "--to", "not an address", "--about", "invoice"],
         "error: --to: 'not an address' is not an email address"),
        (["vendor-chase", "--name", "x", "--to", "v@example.com", "--about", "invoice",
          "--cron", "0 8 * * *"], "error: --cron: vendor-chase does not take it"),
        (["board-summary", "--name", "x", "--board", "http://127.0.0.1:9/", "--cron", "0 8 * * *",
          "--tz", "Mars/Olympus", "--to", "me@example.com"], "error: --tz: "),
        (["board-summary", "--name", "x", "--board", "http://127.0.0.1:9/", "--token", "NOPE",
          "--cron", "0 8 * * *", "--to", "me@example.com"],
         "error: --token: no secret named NOPE in errands.toml"),
        (["board-summary", "--name", "x", "--board", "http://127.0.0.1:9/", "--token", "ELSEWHERE",
          "--cron", "0 8 * * *", "--to", "me@example.com"],
         "error: --token: the secret ELSEWHERE may be sent only to board.example.com, not to 127.0.0.1"),
    ],
    ids=["bad-cron", "bad-board-url", "bad-address", "foreign-option", "bad-zone",
         "undeclared-token", "token-for-another-host"],
)  # fmt: skip
def test_bad_input_with_email_configured_is_one_line_and_creates_nothing(
    cli: CLI, home: Path, args: list[str], error: str
) -> None:
    (home / "errands.toml").write_text(
        '[network]\nallow_private = ["127.0.0.1"]\n[email]\nsmtp_url = "smtp://127.0.0.1:9"\n'
        'from = "errands@example.com"\n[secrets.ELSEWHERE]\nhosts = ["board.example.com"]\n'
    )
    r = cli("recipe", "add", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    text = " ".join(r.stderr.split())
    assert text.startswith(error), text
    assert json.loads(cli("schedule", "ls", "--json").stdout) == []
