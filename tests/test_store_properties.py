"""Property-based tests of the store, on every backend (tests/backends.py), on real files.

A hypothesis state machine drives one store (one machine per backend) with creates, appends by
lease owners and by outsiders, concurrent appends that share a group-commit batch,
lease acquire / renew / release / expiry under a fake clock, purges, re-opens and
crashes, and checks after every step that:

- every acknowledged append is in the log, exactly as appended, at the sequence number
  it was given; per-errand sequence numbers have no gaps and no duplicates;
- the projection (``view``) equals the fold of the model's log whatever the batching,
  and the projection seen after each step equals the fold of the log's prefix as it was
  then (replaying any prefix gives the state the store showed at that point);
- two owners never hold one errand's lease at once (the leases table is the model's);
- a refused append (LeaseLost, NotFound, ErrandExists) writes nothing;
- a purge rewrites the log as the purge rules say, applied to the model's log.

The model's logs are built from what was appended, never copied from the store, so the
checks compare the store with an independent expectation.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from backends import BACKENDS, backend
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from errands.clock import ReadingClock
from errands.core import events as ev
from errands.core.labels import Confidentiality, Integrity, Provenance
from errands.core.states import ErrandState, ErrandView, apply, fold
from errands.errors import ErrandExists, LeaseLost, NotFound, StoreError
from errands.store import Store, StoredEvent
from errands.store.purge import PURGED, purged

T = TypeVar("T")

ERRANDS = ("e0", "e1", "e2", "e3")
OWNERS = ("w1", "w2", "w3")

# --- strategies -----------------------------------------------------------------------

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)  # (no lone surrogates)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
provenances = st.sampled_from(
    [
        Provenance(kind="user", name="local"),
        Provenance(kind="tool", name="web.fetch", source="https://example.com/listing"),
        Provenance(kind="model", name="sim/model"),
    ]
)
contents = st.builds(
    ev.Content,
    text=texts,
    provenance=provenances,
    integrity=st.sampled_from(Integrity),
    confidentiality=st.sampled_from(Confidentiality),
)
usages = st.builds(
    ev.Usage,
    input_tokens=st.integers(0, 10_000),
    cached_input_tokens=st.integers(0, 100),
    output_tokens=st.integers(0, 5_000),
    cost_usd=st.floats(0, 1, allow_nan=False),
)
seqs = st.integers(1, 40)
call_ids = st.sampled_from(["c1", "c2", "c3"])
tools = st.sampled_from(["web.fetch", "files.write", "mail.send"])

events = st.one_of(
    st.builds(ev.UserMessage, content=contents),
    st.builds(ev.ModelRequested, model=st.just("sim/m"), tools_hash=st.just("h")),
    st.builds(
        ev.ModelResponded,
        request_seq=seqs,
        model=st.just("sim/m"),
        content=st.none() | contents,
        tool_calls=st.lists(
            st.builds(ev.ToolCall, call_id=call_ids, name=tools, arguments=arguments), max_size=2
        ),
        usage=usages,
    ),
    st.builds(
        ev.ToolIntent,
        call_id=call_ids,
        tool=tools,
        arguments=arguments,
        effect=st.sampled_from(ev.EffectClass),
        idempotent=st.booleans(),
        idempotency_key=st.just("key"),
    ),
    st.builds(ev.ToolResult, call_id=call_ids, tool=tools, ok=st.booleans(), content=contents),
    st.builds(
        ev.ApprovalRequested,
        call_id=call_ids,
        tool=tools,
        arguments=arguments,
        args_hash=st.just("sha256:00"),
        effect=st.sampled_from(ev.EffectClass),
        reason=texts,
        rule=st.just("sends"),
        preview=texts,
    ),
    st.builds(
        ev.ApprovalGranted,
        request_seq=seqs,
        args_hash=st.just("sha256:00"),
        edited_arguments=st.none() | arguments,
        always=st.booleans(),
        always_pattern=st.none() | st.dictionaries(st.text(max_size=4), texts, max_size=2),
        by=st.just("p"),
        channel=st.just("cli"),
    ),
    st.builds(
        ev.ApprovalDenied, request_seq=seqs, reason=texts, by=st.just("p"), channel=st.just("cli")
    ),
    st.builds(
        ev.StateChanged,
        state=st.sampled_from([s.value for s in ErrandState]),
        reason=texts,
        result=st.none() | contents,
    ),
    st.builds(ev.ErrorRaised, kind=st.just("tool_error"), message=texts, retryable=st.booleans()),
    st.builds(ev.CancelRequested, reason=texts),
)
event_lists = st.lists(events, min_size=1, max_size=4)
errand_ids = st.sampled_from(ERRANDS)
owners = st.sampled_from(OWNERS)
ttls = st.sampled_from([1.0, 5.0, 30.0])


def _created(title: str) -> ev.ErrandCreated:
    return ev.ErrandCreated(
        title=title,
        content=ev.Content(text=f"please {title}", provenance=Provenance(kind="user")),
        model="sim/m",
        workspace="/tmp/ws",
    )


def _dump(view: ErrandView) -> dict[str, Any]:
    return view.model_dump()


# --- the machine ------------------------------------------------------------------------


class _Machine(RuleBasedStateMachine):
    """The store against a model: expected logs, expected leases, expected wake-ups.
    One machine per backend (``BACKEND``, see the end of this section)."""

    BACKEND = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.backend = backend(self.BACKEND)
        self.tmp = Path(tempfile.mkdtemp(prefix="errands-props-"))
        self.dir = self.tmp / "store"
        self.now = 1_000.0
        self.loop = asyncio.new_event_loop()
        self.store = self.open()
        # the model
        self.logs: dict[str, list[dict[str, Any]]] = {}  # errand -> dumped events, seq = index+1
        self.leases: dict[str, tuple[str, float]] = {}  # errand -> (owner, expires_at)
        # projection dumps seen after each step: errand -> {last_seq: view dump}
        self.seen: dict[str, dict[int, dict[str, Any]]] = {}
        # outside appends not yet seen through wakeups(), and the wake-up cursor
        self.woken: list[str] = []
        self.wakeup_cursor = 0

    # -- helpers

    def open(self) -> Store:
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.backend.open(self.dir, ReadingClock(lambda: self.now))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def holds(self, errand_id: str, owner: str) -> bool:
        lease = self.leases.get(errand_id)
        return lease is not None and lease[0] == owner

    def expect_append(self, errand_id: str, owner: str | None) -> type[StoreError] | None:
        if errand_id not in self.logs:
            return NotFound
        if owner is not None and not self.holds(errand_id, owner):
            return LeaseLost
        return None

    def record(self, errand_id: str, events_: list[ev.Event], seqs_: list[int]) -> None:
        log = self.logs[errand_id]
        assert seqs_ == list(range(len(log) + 1, len(log) + 1 + len(events_)))
        log.extend(e.model_dump(mode="json") for e in events_)

    def snapshot(self) -> None:
        for errand_id in self.logs:
            view = self.run(self.store.view(errand_id))
            self.seen.setdefault(errand_id, {})[view.last_seq] = _dump(view)

    # -- rules: errands and appends

    @initialize(errand_id=errand_ids)
    def first_errand(self, errand_id: str) -> None:
        self.create(errand_id)

    @rule(errand_id=errand_ids)
    def create(self, errand_id: str) -> None:
        created = _created(f"errand {errand_id}")
        if errand_id in self.logs:
            before = self.run(self.store.read(errand_id))
            with pytest.raises(ErrandExists):
                self.run(self.store.create(errand_id, created))
            assert self.run(self.store.read(errand_id)) == before
        else:
            self.run(self.store.create(errand_id, created))
            self.logs[errand_id] = [created.model_dump(mode="json")]
        self.snapshot()

    def draw_writer(self, data: st.DataObject) -> tuple[str, str | None]:
        """An errand and who appends to it: often its lease holder, else anyone."""
        holder: bool = data.draw(st.booleans())
        if self.leases and holder:
            errand_id = data.draw(st.sampled_from(sorted(self.leases)))
            return errand_id, self.leases[errand_id][0]
        return data.draw(errand_ids), data.draw(st.none() | owners)

    @rule(data=st.data(), batch=event_lists)
    def append(self, data: st.DataObject, batch: list[ev.Event]) -> None:
        errand_id, owner = self.draw_writer(data)
        expected = self.expect_append(errand_id, owner)
        before = self.run(self.store.read(errand_id)) if errand_id in self.logs else []
        view_before = self.run(self.store.view(errand_id)) if errand_id in self.logs else None
        try:
            got = self.run(self.store.append(errand_id, batch, owner=owner))
        except StoreError as exc:
            assert expected is not None and isinstance(exc, expected), (exc, expected)
            # a refused append writes nothing
            if errand_id in self.logs:
                assert self.run(self.store.read(errand_id)) == before
                assert self.run(self.store.view(errand_id)) == view_before
        else:
            assert expected is None, f"append should have raised {expected}"
            self.record(errand_id, batch, got)
            if owner is None:
                self.woken.append(errand_id)
        self.snapshot()

    @rule(data=st.data(), owner=owners, ttl=ttls)
    def acquire(self, data: st.DataObject, owner: str, ttl: float) -> None:
        leased = sorted(self.leases)
        errand_id = data.draw(st.sampled_from(leased) | errand_ids if leased else errand_ids)
        lease = self.leases.get(errand_id)
        free = lease is None or lease[0] == owner or lease[1] <= self.now
        got = self.run(self.store.acquire(errand_id, owner, ttl))
        assert got == free, (errand_id, owner, lease, self.now)
        if got:
            self.leases[errand_id] = (owner, self.now + ttl)

    @rule(owner=owners, ttl=ttls)
    def renew(self, owner: str, ttl: float) -> None:
        held = self.run(self.store.renew(owner, ttl))
        expected = {e for e, (o, _) in self.leases.items() if o == owner}
        assert held == expected
        for errand_id in expected:
            self.leases[errand_id] = (owner, self.now + ttl)

    @rule(errand_id=errand_ids, owner=owners)
    def release(self, errand_id: str, owner: str) -> None:
        self.run(self.store.release(errand_id, owner))
        if self.holds(errand_id, owner):
            del self.leases[errand_id]

    @rule(seconds=st.sampled_from([0.5, 2.0, 10.0, 60.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: any(exp > self.now for _, exp in self.leases.values()))
    @rule(data=st.data())
    def advance_to_expiry(self, data: st.DataObject) -> None:
        """Exactly to the instant a lease expires: it is free from then on."""
        expiries = sorted({exp for _, exp in self.leases.values() if exp > self.now})
        self.now = data.draw(st.sampled_from(expiries))

    @rule(owner=owners, ttl=ttls)
    def claim_runnable(self, owner: str, ttl: float) -> None:
        claimable = set()
        for errand_id, log in self.logs.items():
            state = _fold_dumped(errand_id, log).state
            lease = self.leases.get(errand_id)
            free = lease is None or lease[1] <= self.now
            if state in (ErrandState.queued, ErrandState.running) and free:
                claimable.add(errand_id)
        got = self.run(self.store.claim_runnable(owner, ttl, limit=len(ERRANDS)))
        assert set(got) == claimable
        for errand_id in got:
            self.leases[errand_id] = (owner, self.now + ttl)

    @rule()
    def read_wakeups(self) -> None:
        top, ids = self.run(self.store.wakeups(self.wakeup_cursor))
        assert ids == list(dict.fromkeys(self.woken))
        assert top >= self.wakeup_cursor
        self.wakeup_cursor, self.woken = top, []

    # -- rules: purge, re-open, crash

    @invariant()
    def logs_are_what_was_acknowledged(self) -> None:
        for errand_id, expected in self.logs.items():
            stored = self.run(self.store.read(errand_id))
            assert [s.seq for s in stored] == list(range(1, len(expected) + 1))
            assert [s.event.model_dump(mode="json") for s in stored] == expected
        for errand_id in set(ERRANDS) - set(self.logs):
            assert self.run(self.store.read(errand_id)) == []
            with pytest.raises(NotFound):
                self.run(self.store.view(errand_id))

    @invariant()
    def the_leases_are_the_models(self) -> None:
        held = {e: self.run(self.store.lease_holder(e)) for e in ERRANDS}
        assert {e: h for e, h in held.items() if h is not None} == self.leases

    def teardown(self) -> None:
        try:
            assert self.run(self.store.integrity_check()) == []
            self.run(self.store.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class StoreMachine(_Machine):
    """All of it: batches, guards, wake-ups, purge, rebuilds, re-opens and crashes."""

    @precondition(lambda self: bool(self.logs))
    @rule(data=st.data(), batch=event_lists)
    def refused_by_guard(self, data: st.DataObject, batch: list[ev.Event]) -> None:
        """An outside append whose guard refuses writes nothing -- not even a wake-up."""
        errand_id = data.draw(st.sampled_from(sorted(self.logs)))
        before = self.run(self.store.read(errand_id))
        seen: list[ErrandView] = []

        def guard(view: ErrandView) -> None:
            seen.append(view.model_copy(deep=True))
            raise StoreError("refused by the guard")

        with pytest.raises(StoreError, match="refused by the guard"):
            self.run(self.store.append(errand_id, batch, guard=guard))
        assert self.run(self.store.read(errand_id)) == before
        # the guard saw the errand's current view
        assert [_dump(v) for v in seen] == [_dump(self.run(self.store.view(errand_id)))]

    @rule(data=st.data(), n=st.integers(3, 8))
    def concurrent_appends(self, data: st.DataObject, n: int) -> None:
        """Several appends submitted at once, held back so that they share one batch."""
        ops = [(*self.draw_writer(data), data.draw(event_lists)) for _ in range(n)]

        async def go() -> list[list[int] | BaseException]:
            with self.backend.hold_commits(self.dir):  # the writer waits: ops pile up
                tasks = [asyncio.ensure_future(self.store.append(e, b, owner=o)) for e, o, b in ops]
                await asyncio.sleep(0.02)
            return await asyncio.gather(*tasks, return_exceptions=True)

        commits = self.store.stats.commits  # type: ignore[attr-defined]
        outcomes = self.run(go())
        # queued in submission order, run in that order: the model follows it
        for (errand_id, owner, batch), outcome in zip(ops, outcomes, strict=True):
            # (an earlier op of the batch may not change a later one's lease: appends don't)
            expected = self.expect_append(errand_id, owner)
            if isinstance(outcome, BaseException):
                assert expected is not None and isinstance(outcome, expected), (outcome, expected)
            else:
                assert expected is None, f"append should have raised {expected}"
                self.record(errand_id, batch, outcome)
                if owner is None:
                    self.woken.append(errand_id)
        shared = self.store.stats.commits - commits < len(ops)  # type: ignore[attr-defined]
        assert shared, "the appends shared a commit"
        self.snapshot()

    # -- rules: leases under a fake clock

    @precondition(lambda self: bool(self.logs))
    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        errand_id = data.draw(st.sampled_from(sorted(self.logs)))
        self.run(self.store.purge(errand_id))
        stored = self.run(self.store.read(errand_id))
        # the model applies the purge rules to what it says was appended
        self.logs[errand_id] = _expect_purged(self.logs[errand_id], stored)
        self.seen.pop(errand_id, None)  # earlier prefixes were rewritten
        self.snapshot()

    @rule()
    def rebuild_projections(self) -> None:
        assert self.run(self.store.rebuild_projections()) == len(self.logs)

    @rule()
    def reopen(self) -> None:
        self.run(self.store.close())
        self.store = self.open()

    @rule()
    def crash(self) -> None:
        """The store as SIGKILL would leave it (for SQLite: the file and its WAL as they
        are, no clean close), opened again -- which recovers what was committed."""
        target = Path(tempfile.mkdtemp(dir=self.tmp))
        self.backend.crash_copy(self.dir, target)
        old = self.store
        self.dir = target
        self.store = self.open()
        self.run(old.close())

    # -- invariants

    @invariant()
    def projection_is_the_fold(self) -> None:
        """The store's projection is the fold of the log the model says was appended
        (not of what the store reads back: that could be wrong the same way)."""
        for errand_id, log in self.logs.items():
            view = self.run(self.store.view(errand_id))
            assert _dump(view) == _dump(_fold_dumped(errand_id, log)), errand_id
            # replaying any prefix gives the projection the store showed at that point
            replayed = ErrandView(id=errand_id)
            seen = self.seen.get(errand_id, {})
            for seq, event in enumerate(log, start=1):
                apply(replayed, seq, ev.load_event(event))
                if seq in seen:
                    assert _dump(replayed) == seen[seq], f"prefix {seq} of {errand_id}"


def _fold_dumped(errand_id: str, log: list[dict[str, Any]]) -> ErrandView:
    return fold(errand_id, [(i + 1, ev.load_event(e)) for i, e in enumerate(log)])


def _expect_purged(before: list[dict[str, Any]], stored: list[StoredEvent]) -> list[dict[str, Any]]:
    """Check the log *stored* after a purge against the log *before* it (as dumped
    events); return the log as the model now expects it."""
    assert len(stored) == len(before) + 1
    assert isinstance(stored[-1].event, ev.ErrandPurged)
    for old, s in zip(before, stored[:-1], strict=True):
        # the shape stays (type, time); public content is kept, the rest replaced
        assert (s.event.type, s.event.at) == (old["type"], old["at"]), s.seq
        was, now = _contents(ev.load_event(old)), _contents(s.event)
        assert [c.confidentiality for c in now] == [c.confidentiality for c in was], s.seq
        for a, b in zip(was, now, strict=True):
            public = a.confidentiality is Confidentiality.public
            assert (b == a) if public else (b.text == PURGED), s.seq
    # and every other field as the purge rules say (arguments, free text, replay)
    expected = [ev.load_event(purged(e)).model_dump(mode="json") for e in before]
    assert [s.event.model_dump(mode="json") for s in stored[:-1]] == expected
    return [*expected, stored[-1].event.model_dump(mode="json")]


def _contents(event: ev.Event) -> list[ev.Content]:
    items: list[ev.Content] = []
    for name in ("content", "result"):
        value = getattr(event, name, None)
        if isinstance(value, ev.Content):
            items.append(value)
    return items


# Every step fsyncs, so shrinking a failure can take many minutes: it is off unless
# ERRANDS_SHRINK=1 (then a failure is reported as its full, unshrunk sequence of steps).
_PHASES = (
    tuple(Phase)
    if os.environ.get("ERRANDS_SHRINK")
    else tuple(p for p in Phase if p is not Phase.shrink)
)


class LeaseMachine(_Machine):
    """Only creates, appends and leases: more steps among the lease rules and their edges."""


def _on_every_backend(machine: type[_Machine], examples: int, steps: int) -> None:
    """``Test<Machine>_<backend>``: the machine's test case for each backend."""
    for name in BACKENDS:
        variant = type(f"{machine.__name__}_{name}", (machine,), {"BACKEND": name})
        case = variant.TestCase
        case.settings = settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            phases=_PHASES,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        globals()[f"Test{machine.__name__}_{name}"] = case


_on_every_backend(StoreMachine, examples=25, steps=20)
_on_every_backend(LeaseMachine, examples=30, steps=30)


# --- plain properties -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(event=events)
def test_an_event_survives_its_round_trip(event: ev.Event) -> None:
    """What the store writes (``model_dump_json``) is what ``load_event`` reads back."""
    assert ev.load_event(event.model_dump_json()) == event
    assert ev.load_event(event.model_dump_json().encode()) == event
    assert ev.load_event(event.model_dump(mode="json")) == event


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(events, max_size=12), cut=st.integers(0, 12))
def test_folding_a_prefix_equals_applying_it_step_by_step(batch: list[ev.Event], cut: int) -> None:
    log: list[tuple[int, ev.Event]] = [(1, _created("t"))]
    log += [(i + 2, e) for i, e in enumerate(batch)]
    view = ErrandView(id="x")
    for seq, event in log[: cut + 1]:
        apply(view, seq, event)
    assert _dump(fold("x", log[: cut + 1])) == _dump(view)


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(events, max_size=12))
def test_folding_changes_neither_the_events_nor_a_value_read_from_the_view(
    batch: list[ev.Event],
) -> None:
    """What the store relies on: ``apply`` replaces nested values (usage, pending),
    never mutates them, so a value read from a view -- or kept as the last written
    projection -- stays as it was; and folding leaves the events as they were logged,
    so folding the events read back from JSON gives the same view."""
    log: list[tuple[int, ev.Event]] = [(1, _created("t"))]
    log += [(i + 2, e) for i, e in enumerate(batch)]
    logged = [e.model_dump(mode="json") for _, e in log]
    view = ErrandView(id="x")
    for seq, event in log:
        usage, pending = view.usage, view.pending
        usage_was, pending_was = usage.model_dump(), {k: p.model_dump() for k, p in pending.items()}
        apply(view, seq, event)
        assert usage.model_dump() == usage_was, f"apply changed the usage read before {seq}"
        assert {k: p.model_dump() for k, p in pending.items()} == pending_was, seq
    assert [e.model_dump(mode="json") for _, e in log] == logged, "folding changed an event"
    reread = [(seq, ev.load_event(e)) for (seq, _), e in zip(log, logged, strict=True)]
    assert _dump(fold("x", reread)) == _dump(view)


@settings(max_examples=30, deadline=None)
@given(batch=st.lists(events, min_size=1, max_size=12))
def test_a_purge_keeps_the_shape_and_removes_the_private_content(batch: list[ev.Event]) -> None:
    """Random logs of every kind of event, purged. (The state machine purges only what
    its appends happened to leave, and may go several runs without purging one kind.)"""
    created = _created("private things")
    before = [e.model_dump(mode="json") for e in [created, *batch]]

    async def go(directory: Path, name: str) -> None:
        store = backend(name).open(directory, None)
        try:
            await store.create("p", created)
            await store.append("p", batch)
            assert [s.event.model_dump(mode="json") for s in await store.read("p")] == before
            await store.purge("p")
            expected = _expect_purged(before, await store.read("p"))
            assert _dump(await store.view("p")) == _dump(_fold_dumped("p", expected))
            assert await store.integrity_check() == []
        finally:
            await store.close()

    tmp = Path(tempfile.mkdtemp(prefix="errands-purge-"))
    try:
        for name in BACKENDS:
            asyncio.run(go(tmp / name, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_apply_refuses_a_gap_or_a_duplicate() -> None:
    view = fold("x", [(1, _created("t"))])
    with pytest.raises(AssertionError):
        apply(view, 3, ev.ErrorRaised(kind="k", message="m"))
    with pytest.raises(AssertionError):
        apply(view, 1, ev.ErrorRaised(kind="k", message="m"))
