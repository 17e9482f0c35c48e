"""Issue 17, item 4: a long errand is shown a page at a time, never read whole.

``GET /api/errands/{id}`` returns the view and the newest 200 events (``?before=SEQ``
pages back, ``?after=SEQ`` follows); the inbox's errand page shows the request and the
newest events, with a link to the page before. Both run on a store that refuses to read a
whole log -- the control asks the old way (``?after=0``) and is refused.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import CLI
from helpers.inproc import in_process
from helpers.kit import harness_for, script
from hypothesis import given, settings
from hypothesis import strategies as st

from errands.config import Settings
from errands.policy.hook import AllowAll
from errands.store.protocol import StoredEvent
from errands.store.sqlite import SQLiteStore

STEPS = 250  # four events each: a log of 1,001 events

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import long_log_bench  # noqa: E402  (bench/ is not a package)


class NoWholeReads(SQLiteStore):
    """A store that refuses to read an errand's whole log (``read`` from the start)."""

    async def read(self, errand_id: str, after: int = 0) -> list[StoredEvent]:
        if after == 0:
            raise AssertionError(f"the whole log of {errand_id} was read")
        return await super().read(errand_id, after)


async def long_errand(store: SQLiteStore, errand_id: str, steps: int = STEPS) -> int:
    """An errand of 1 + 4 x *steps* events (the benchmark's); returns its last seq."""
    await long_log_bench.long_errand(store, errand_id, 1 + 4 * steps)
    return 1 + 4 * steps


@pytest.fixture
async def api(settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = NoWholeReads(tmp_path / "e.db")
    harness = harness_for(store, settings, model=script({"text": "x"}), policy=AllowAll())
    await long_errand(store, "long1")
    async with in_process(harness) as (client, _):
        yield client
    await store.close()


async def test_get_returns_the_newest_page_and_pages_back_to_the_start(
    api: httpx.AsyncClient,
) -> None:
    r = await api.get("/api/errands/long1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["last_seq"] == 1001 and len(body["events"]) == 200
    assert [e["seq"] for e in body["events"]] == list(range(802, 1002))
    assert body["events_before"] == 801
    seqs = [e["seq"] for e in body["events"]]
    while body["events_before"]:
        r = await api.get("/api/errands/long1", params={"before": seqs[0], "limit": 333})
        body = r.json()
        seqs = [e["seq"] for e in body["events"]] + seqs
    assert seqs == list(range(1, 1002))  # every event once, in order
    follow = (await api.get("/api/errands/long1", params={"after": 990})).json()
    assert [e["seq"] for e in follow["events"]] == list(range(991, 1002))


async def test_control_asking_for_the_whole_log_is_refused_by_this_store(
    api: httpx.AsyncClient,
) -> None:
    """The control: the old request (every event after 0) reads the whole log, which the
    test's store refuses -- so the tests above would fail if a page read it whole."""
    with pytest.raises(AssertionError, match="the whole log of long1 was read"):
        await api.get("/api/errands/long1", params={"after": 0})


async def test_the_inbox_shows_the_request_the_newest_events_and_a_link_back(
    api: httpx.AsyncClient,
) -> None:
    r = await api.get("/errands/long1")
    assert r.status_code == 200, r.text
    assert "read every note" in r.text  # the request, always
    assert "800 earlier events" in r.text and "?before=802" in r.text
    assert "line 249 of" in r.text and "line 199 of" not in r.text
    back = await api.get("/errands/long1", params={"before": 802})
    assert back.status_code == 200 and "line 199 of" in back.text and "?before=602" in back.text


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(min_value=0, max_value=60),
    before=st.one_of(st.none(), st.integers(min_value=-3, max_value=60)),
)
def test_a_page_is_the_slice_of_the_whole_log_it_names(
    tmp_path_factory: pytest.TempPathFactory, limit: int, before: int | None
) -> None:
    import asyncio

    async def check() -> None:
        store = SQLiteStore(tmp_path_factory.mktemp("p") / "e.db")
        try:
            await long_errand(store, "e1", steps=10)
            whole = await store.read("e1")
            page = await store.read_latest("e1", limit, before)
            kept = [s for s in whole if before is None or s.seq < before]
            expected = kept[max(0, len(kept) - limit) :] if limit else []
            assert [(s.seq, s.event) for s in page] == [(s.seq, s.event) for s in expected]
        finally:
            await store.close()

    asyncio.run(check())


async def test_errands_show_prints_the_request_and_the_newest_events(
    cli: CLI, settings: Settings
) -> None:
    store = SQLiteStore(settings.db_path)
    await long_errand(store, "long1")
    await store.close()
    shown = cli("show", "long1", "--last", "100")
    assert shown.returncode == 0, shown.stderr
    assert "▶ long" in shown.stdout and "900 earlier events" in shown.stdout  # (the request)
    assert "line 249 of" in shown.stdout and "line 224 of" not in shown.stdout
    everything = cli("show", "long1", "--all")
    assert "line 0 of" in everything.stdout and "earlier events" not in everything.stdout
