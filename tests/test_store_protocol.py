"""The store protocol, on every backend: what any caller may rely on.

Each test takes the ``store`` fixture (one run per backend, ``tests/conftest.py``) and uses
only :class:`errands.store.Store`; what is particular to SQLite (the file's bytes, WAL,
blobs, migrations) is in ``test_store_log.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from errands.config import Settings
from errands.core import events as ev
from errands.core.labels import Provenance
from errands.core.states import ErrandState, ErrandView
from errands.errors import ErrandExists, LeaseLost, NotFound, StoreError
from errands.store import Store, StoreReader
from errands.store.sync import BlockingStore


def _created(title: str = "watch listings", parent: str | None = None) -> ev.ErrandCreated:
    return ev.ErrandCreated(
        title=title,
        content=ev.Content(text=f"please {title}", provenance=Provenance(kind="user")),
        model="sim/m",
        workspace="/tmp/ws",
        parent=parent,
    )


def _note(text: str) -> ev.ToolResult:
    return ev.ToolResult(
        call_id="c",
        tool="t",
        ok=True,
        content=ev.Content(text=text, provenance=Provenance(kind="tool")),
    )


def _asked(call_id: str = "c1") -> ev.ApprovalRequested:
    return ev.ApprovalRequested(
        call_id=call_id,
        tool="send",
        arguments={"to": "bob"},
        args_hash="sha256:00",
        effect=ev.EffectClass.external,
        reason="it sends",
        rule="effects.external",
    )


def _responded(request_seq: int, cost: float) -> ev.ModelResponded:
    return ev.ModelResponded(
        request_seq=request_seq,
        model="sim:m",
        usage=ev.Usage(input_tokens=10, output_tokens=5, cost_usd=cost),
    )


async def test_the_fixture_store_is_a_store(store: Store) -> None:
    assert isinstance(store, Store) and isinstance(store, StoreReader)


async def test_created_appended_read_and_viewed(store: Store) -> None:
    await store.create("e1", _created())
    with pytest.raises(ErrandExists):
        await store.create("e1", _created())
    seqs = await store.append("e1", [_note("a"), _note("b")])
    assert seqs == [2, 3]
    log = await store.read("e1")
    assert [s.seq for s in log] == [1, 2, 3]
    assert [s.event.type for s in log] == ["errand_created", "tool_result", "tool_result"]
    assert [s.seq for s in await store.read("e1", after=2)] == [3]
    view = await store.view("e1")
    assert (view.id, view.title, view.last_seq) == ("e1", "watch listings", 3)
    with pytest.raises(NotFound):
        await store.view("nope")
    with pytest.raises(NotFound):
        await store.append("nope", [_note("x")])
    assert await store.read("nope") == []


async def test_find_takes_a_unique_prefix(store: Store) -> None:
    for errand_id in ("abc1", "abc2", "xyz"):
        await store.create(errand_id, _created())
    assert await store.find("xy") == "xyz"
    assert await store.find("abc1") == "abc1"
    with pytest.raises(NotFound, match="several"):
        await store.find("abc")
    with pytest.raises(NotFound):
        await store.find("q")


async def test_lists_and_pending_approvals(store: Store) -> None:
    await store.create("e1", _created("first"))
    await store.create("e2", _created("second"))
    (seq,) = await store.append("e2", [_asked()])
    listed = await store.list_errands()
    assert {v.id for v in listed} == {"e1", "e2"}
    waiting = await store.list_errands(states=[ErrandState.waiting_approval])
    assert [v.id for v in waiting] == ["e2"]
    assert [p.id for p in await store.pending_approvals()] == [f"e2.{seq}"]
    assert len(await store.list_errands(limit=1)) == 1


async def test_an_append_check_refuses_and_writes_nothing(store: Store) -> None:
    await store.create("e1", _created())

    def refuse(view: ErrandView) -> None:
        raise StoreError(f"not now: {view.last_seq}")

    with pytest.raises(StoreError, match="not now: 1"):
        await store.append("e1", [_note("x")], guard=refuse)
    assert [s.seq for s in await store.read("e1")] == [1]
    assert (await store.view("e1")).last_seq == 1


async def test_leases_fence_the_owners_appends(store: Store) -> None:
    await store.create("e1", _created())
    assert await store.acquire("e1", "a", 30.0)
    assert not await store.acquire("e1", "b", 30.0)
    assert (await store.lease_holder("e1") or ("",))[0] == "a"
    await store.append("e1", [_note("by a")], owner="a")
    with pytest.raises(LeaseLost):
        await store.append("e1", [_note("by b")], owner="b")
    assert await store.renew("a", 30.0) == {"e1"}
    await store.release("e1", "a")
    assert await store.lease_holder("e1") is None
    assert await store.acquire("e1", "b", 30.0)
    with pytest.raises(LeaseLost):
        await store.append("e1", [_note("by a, late")], owner="a")
    assert [s.seq for s in await store.read("e1")] == [1, 2]


async def test_runnable_errands_are_claimed_once(store: Store) -> None:
    for i in range(3):
        await store.create(f"e{i}", _created())
    first = await store.claim_runnable("a", 30.0, limit=10)
    assert sorted(first) == ["e0", "e1", "e2"]
    assert await store.claim_runnable("b", 30.0, limit=10) == []


async def test_outside_appends_wake_the_errand(store: Store) -> None:
    await store.create("e1", _created())
    await store.create("e2", _created())
    mark, _ = await store.wakeups(0)
    assert await store.acquire("e1", "a", 30.0)
    await store.append("e1", [_note("by the owner")], owner="a")  # not an outsider
    await store.append("e2", [_note("a person")])
    mark2, woken = await store.wakeups(mark)
    assert woken == ["e2"] and mark2 > mark
    assert await store.wakeups(mark2) == (mark2, [])


async def test_commits_reach_subscribers(store: Store) -> None:
    seen: list[tuple[str, int]] = []
    store.subscribe(lambda errand_id, seq: seen.append((errand_id, seq)))
    await store.create("e1", _created())
    await store.append("e1", [_note("a"), _note("b")])
    for _ in range(100):
        if ("e1", 3) in seen:
            break
        await asyncio.sleep(0.01)
    assert ("e1", 3) in seen


async def test_concurrent_appends_get_contiguous_sequence_numbers(store: Store) -> None:
    ids = [f"e{i}" for i in range(10)]
    await asyncio.gather(*(store.create(e, _created()) for e in ids))
    results = await asyncio.gather(
        *(store.append(e, [_note(f"{e}.{k}")]) for k in range(20) for e in ids)
    )
    assert sorted(s for (s,) in results) == sorted(k + 2 for k in range(20) for _ in ids)
    for e in ids:
        log = await store.read(e)
        assert [s.seq for s in log] == list(range(1, 22))
        texts = [s.event.content.text for s in log[1:]]  # type: ignore[union-attr]
        assert sorted(texts, key=lambda t: int(t.split(".")[1])) == [f"{e}.{k}" for k in range(20)]
    assert await store.integrity_check() == []


async def test_budgets_reserve_settle_and_report(store: Store) -> None:
    await store.create("p", _created())
    (request,) = await store.append("p", [ev.ModelRequested(model="sim:m", tools_hash="sha256:00")])
    held = await store.reserve("p", request, 0.4, daily_usd=1.0, ttl=60)
    assert held is None
    status = await store.budget(1.0)
    assert (status.reserved_usd, status.calls_in_flight) == (0.4, 1)
    refused = await store.reserve("p", request + 100, 0.7, daily_usd=1.0, ttl=60)
    assert refused is not None and refused.daily and "the daily budget" in refused.message()
    await store.append("p", [_responded(request, 0.25)])  # settles the hold at its cost
    status = await store.budget(1.0)
    assert (status.spent_usd, status.reserved_usd, status.left_usd) == (0.25, 0.0, 0.75)
    (row,) = await store.usage()
    assert (row.errand_id, row.model, row.usage.cost_usd) == ("p", "sim:m", 0.25)
    assert await store.usage(errand_id="other") == []
    assert await store.integrity_check() == []


async def test_purge_keeps_the_shape_and_drops_the_words(store: Store) -> None:
    await store.create("e1", _created("my secret plans"))
    await store.append("e1", [_note("private text")])
    await store.purge("e1")
    view = await store.view("e1")
    assert view.purged and "secret" not in view.title
    log = await store.read("e1")
    assert [s.event.type for s in log] == ["errand_created", "tool_result", "errand_purged"]
    assert "private text" not in log[1].event.model_dump_json()
    assert await store.integrity_check() == []


async def test_rebuild_refolds_every_log(store: Store) -> None:
    await store.create("e1", _created())
    await store.append("e1", [_note("a")])
    assert await store.rebuild_projections() == 1
    assert (await store.view("e1")).last_seq == 2
    assert await store.integrity_check() == []


async def test_a_closed_store_refuses_writes(store: Store, settings: Settings) -> None:
    await store.create("e1", _created())
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.append("e1", [_note("late")])


def test_the_sync_bridge_reads_and_closes(settings: Settings, tmp_path: Path) -> None:
    from conftest import BACKENDS, open_test_store

    for backend in BACKENDS:
        bridge = BlockingStore(make=lambda b=backend: open_test_store(b, settings))
        try:
            bridge.run(bridge.store.create(f"{backend}-e1", _created()))
            assert bridge.view(f"{backend}-e1").title == "watch listings"
            assert [s.seq for s in bridge.read(f"{backend}-e1")] == [1]
            assert bridge.find(f"{backend}-e") == f"{backend}-e1"
            assert bridge.integrity_check() == []
        finally:
            bridge.close()
