"""A long errand's page in a real browser (Chromium) against a real ``errands up``: it
shows the request and the newest events, and scrolling up to "N earlier events" loads the
pages before, one at a time, until the whole log is there once, in order (issue 17,
item 4). Control: the same page with JavaScript off keeps its link and loads nothing.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.server import ServerProc, free_port, write_config
from test_inbox_browser import browser, expect, page  # noqa: F401  (the fixtures)
from test_long_logs import long_errand

from errands.store.sqlite import SQLiteStore

STEPS = 250  # a log of 1,001 events: the page shows 200 and links to 800 more


@pytest.fixture
def long_server(tmp_path: Path) -> Iterator[ServerProc]:
    home = tmp_path / "home"
    write_config(home)

    async def seed() -> None:
        store = SQLiteStore(home / "errands.sqlite")
        await long_errand(store, "long1", STEPS)
        await store.close()

    seeding = threading.Thread(target=asyncio.run, args=(seed(),))  # (a loop runs here)
    seeding.start()
    seeding.join()
    # in the server's process: its runner takes the seeded errand up (one event more)
    # before server.json is written, so the page shows a count fixed before it opens
    proc = ServerProc(home, port=free_port(), args=["--workers", "0"]).start()
    yield proc
    proc.kill()


def _tool_lines(pg: Any) -> list[int]:
    """The step numbers of the tool results the timeline shows, in page order."""
    text = pg.locator("#timeline").text_content() or ""  # (with collapsed steps)
    found = [int(n) for n in re.findall(r"line (\d+) of the notes", text)]
    times = Counter(found)  # (a result's text repeats its line: as often for each step)
    assert len(set(times.values())) <= 1, f"a step shown more often than another: {times}"
    return list(dict.fromkeys(found))


def test_scrolling_up_loads_the_pages_before(page: Any, long_server: ServerProc) -> None:  # noqa: F811
    page.goto(f"{long_server.url}/errands/long1")
    expect(page.locator("#timeline")).to_contain_text(f"line {STEPS - 1} of the notes")
    for _ in range(10):  # four pages before: scroll to the top until none is left
        if page.locator("#older").count() == 0:
            break
        # (in the page, at once: the marker is replaced as each page loads, so a locator's
        # element found a moment ago may be gone by the time it is scrolled to)
        page.evaluate("document.querySelector('#older')?.scrollIntoView()")
        page.wait_for_timeout(300)
    expect(page.locator("#older")).to_have_count(0)
    assert _tool_lines(page) == list(range(STEPS))  # every step once, in order
    expect(page.locator("#timeline")).to_contain_text("read every note")  # the request


def test_control_without_the_script_nothing_loads(browser: Any, long_server: ServerProc) -> None:  # noqa: F811
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1100, "height": 900}
    )
    try:
        pg = context.new_page()
        pg.goto(f"{long_server.url}/errands/long1")
        expect(pg.locator("#older")).to_contain_text("801 earlier events")
        before = _tool_lines(pg)
        assert before[0] > 150 and before[-1] == STEPS - 1  # the newest page only
        pg.locator("#older").scroll_into_view_if_needed()
        pg.wait_for_timeout(1000)
        assert _tool_lines(pg) == before
        assert pg.locator("#older").count() == 1
    finally:
        context.close()
