"""Fold snapshots (issue 17, item 4): an errand resumes from its snapshot and the tail of
its log, and that is exactly the fold of its whole log; a snapshot in doubt is never used.

On real SQLite files: a hypothesis test over random logs (turns with tool calls,
approvals granted and denied, sleeps, messages held during calls, errors, limits, a
reopen) with snapshots written at random places, incrementally; corrupted, stale,
foreign-format and purged snapshots each fall back to the whole fold -- each with its
negative control (a decoder that does not check, a resume without the anchor, a store
that keeps the snapshot through a purge), which the test shows would resume wrong.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from errands.core import events as ev
from errands.core.labels import Provenance
from errands.core.progress import Progress
from errands.core.snapshot import Chain, fmt
from errands.core.snapshot import decode as checked_decode
from errands.store.protocol import Snapshot
from errands.store.resume import maybe_save, resume, save
from errands.store.sqlite import SQLiteStore
from errands.store.writer import Tx

# ------------------------------------------------------------------ random logs

_STEPS = st.lists(
    st.sampled_from(
        [
            "tools",
            "tools",
            "tools",
            "approve",
            "deny",
            "sleep",
            "held",
            "say",
            "error",
            "limits",
            "reopen",
            "answer",
            "compact",
        ]
    ),
    min_size=1,
    max_size=25,
)


def _user(text: str) -> ev.Content:
    return ev.Content(text=text, provenance=Provenance(kind="user"))


def _log(steps: list[str]) -> list[ev.Event]:
    """A log as a loop and a person would write it, from a list of step kinds."""
    events: list[ev.Event] = [
        ev.ErrandCreated(title="t", content=_user("go"), model="scripted:m", workspace="/w")
    ]
    for i, kind in enumerate(steps):
        if kind == "say":
            events.append(ev.UserMessage(content=_user(f"also {i}")))
            continue
        if kind == "error":
            events.append(ev.ErrorRaised(kind="model", message=f"e{i}", retryable=True))
            continue
        if kind == "limits":
            events.append(ev.LimitsRaised(more_steps=i))
            continue
        if kind == "reopen":
            events.append(ev.StateChanged(state="running"))
            continue
        if kind == "compact":  # (errands.engine.context: a change that is not an append)
            messages = _whole(events, "x").messages
            tools = [j for j, m in enumerate(messages) if m.role == "tool"]
            masked = [ev.MaskedOutput(seq=1, index=tools[-1], stub=f"[out {i}]")] if tools else []
            summarised = 2 if len(messages) > 3 else 0
            summary = _user(f"summary {i}") if summarised else None
            events.append(
                ev.ContextCompacted(
                    window=1000,
                    tokens_before=900,
                    tokens_after=300,
                    masked=masked,
                    summarised=summarised,
                    summary=summary,
                )
            )
            continue
        request_seq = len(events) + 1
        events.append(ev.ModelRequested(model="scripted:m", tools_hash="sha256:x"))
        if kind == "answer":
            events.append(
                ev.ModelResponded(
                    request_seq=request_seq, model="scripted:m", content=_user(f"done {i}")
                )
            )
            continue
        calls = [
            ev.ToolCall(call_id=f"c{i}-{j}", name="note", arguments={"n": j})
            for j in range(1 + i % 2)
        ]
        events.append(
            ev.ModelResponded(request_seq=request_seq, model="scripted:m", tool_calls=calls)
        )
        for call in calls:
            if kind in ("approve", "deny"):
                asked = len(events) + 1
                events.append(
                    ev.ApprovalRequested(
                        call_id=call.call_id,
                        tool="note",
                        arguments=call.arguments,
                        args_hash="h",
                        effect=ev.EffectClass.write_local,
                        reason="r",
                        rule="ask",
                    )
                )
                if kind == "approve":
                    events.append(
                        ev.ApprovalGranted(
                            request_seq=asked,
                            args_hash="h",
                            by="me",
                            channel="cli",
                            always=True,
                            always_pattern={"n": "*"},
                        )
                    )
                else:
                    events.append(
                        ev.ApprovalDenied(request_seq=asked, reason="no", by="me", channel="cli")
                    )
            if kind == "sleep":
                events.append(ev.Sleeping(call_id=call.call_id, tool="wait", wake_at=1e9 + i))
            if kind == "held":
                events.append(ev.UserMessage(content=_user(f"meanwhile {i}")))
            events.append(
                ev.ToolIntent(
                    call_id=call.call_id,
                    tool="note",
                    arguments=call.arguments,
                    effect=ev.EffectClass.write_local,
                    idempotent=True,
                    idempotency_key=call.call_id,
                )
            )
            events.append(
                ev.ToolResult(
                    call_id=call.call_id,
                    tool="note",
                    ok=kind != "deny",
                    content=ev.Content(
                        text=f"noted {i} " * 5, provenance=Provenance(kind="tool", name="note")
                    ),
                )
            )
    return events


def _whole(events: list[ev.Event], errand_id: str) -> Progress:
    p = Progress.empty(errand_id)
    for seq, event in enumerate(events, start=1):
        p.apply(seq, event)
    return p


def _assert_same(resumed: Progress, whole: Progress) -> None:
    assert list(resumed.messages) == list(whole.messages)
    assert list(resumed.pieces) == list(whole.pieces)
    assert resumed == whole  # every field of the fold (the view, calls, labels, ...)


async def _loop_writes(
    store: SQLiteStore, eid: str, events: list[ev.Event], cuts: set[int]
) -> Progress:
    """Append *events* as a loop does, folding them into its Progress, and write a
    snapshot after the events whose seq is in *cuts* (incrementally: later ones write
    only their new parts)."""
    await store.create(eid, events[0])  # type: ignore[arg-type]
    p = Progress.empty(eid)
    p.apply(1, events[0])
    ends = sorted({*cuts, len(events)} - {1})
    start = 2
    for end in ends:  # one append up to each cut (as few commits as the test needs)
        batch = events[start - 1 : end]
        if batch:
            await store.append(eid, batch)
            for seq, event in enumerate(batch, start=start):
                p.apply(seq, event)
        if end in cuts:
            assert await save(store, p, events[end - 1])
        start = end + 1
    return p


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_STEPS, data=st.data())
def test_snapshot_and_tail_fold_to_the_whole_fold(steps: list[str], data: st.DataObject) -> None:
    events = _log(steps)
    cuts = set(data.draw(st.lists(st.integers(2, max(2, len(events))), max_size=4)))

    async def go() -> None:
        with tempfile.TemporaryDirectory() as d:
            store = SQLiteStore(Path(d) / "s.db")
            try:
                live = await _loop_writes(store, "e", events, cuts)
                resumed = await resume(store, "e", Progress)
                whole = _whole(events, "e")
                _assert_same(resumed, whole)
                _assert_same(live, whole)  # the loop's own fold, its lists Chains now
                assert resumed.snapshot_seq == (max(cuts) if cuts else 0)
                # the resumed errand goes on: appending does not decode its transcript,
                # and a later snapshot from it resumes the same again
                more = ev.UserMessage(content=_user("one more"))
                seqs = await store.append("e", [more])
                resumed.apply(seqs[0], more)
                assert len(resumed.messages) == len(whole.messages) + 1
                assert await save(store, resumed, more)
                again = await resume(store, "e", Progress)
                _assert_same(again, _whole([*events, more], "e"))
            finally:
                await store.close()

    asyncio.run(go())


# ------------------------------------------------------------------ in doubt: never used


def _long(n_steps: int) -> list[ev.Event]:
    return _log(["tools"] * n_steps)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


async def _with_snapshot(
    path: Path, eid: str = "e", n_steps: int = 40
) -> tuple[SQLiteStore, Progress]:
    store = SQLiteStore(path)
    events = _long(n_steps)
    await _loop_writes(store, eid, events, {len(events) - 7})
    return store, _whole(events, eid)


async def _falls_back(store: SQLiteStore, whole: Progress, eid: str = "e") -> None:
    """The errand resumes by its whole fold: its snapshot is not used."""
    resumed = await resume(store, eid, Progress)
    _assert_same(resumed, whole)
    assert resumed.snapshot_seq == 0


def _sql(path: Path, statement: str, *params: Any) -> None:
    conn = sqlite3.connect(path)
    conn.execute(statement, params)
    conn.commit()
    conn.close()


def _rewrite_part(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes inside a stored part, keeping its length (it still unpickles)."""
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT errand_id, name, body FROM snapshot_parts").fetchall()
    conn.close()
    hit = [(e, n, b) for e, n, b in rows if old in b]
    assert hit, "the part to corrupt is there"
    e, n, b = hit[0]
    body = b.replace(old, new, 1)
    _sql(path, "UPDATE snapshot_parts SET body = ? WHERE errand_id = ? AND name = ?", body, e, n)


def _trusting(seq: int, state: bytes, parts: Any, data: Any, cls: type[Progress]) -> Any:
    """The control: a decoder that checks no CRC (it renames each part to its bytes' CRC)."""
    import zlib

    renamed = {}
    names = []
    for name in parts:
        body = data[name]
        fixed = f"{name.rsplit('.', 1)[0]}.{zlib.crc32(body):08x}"
        renamed[fixed] = body
        names.append(fixed)
    return checked_decode(seq, state, names, renamed, cls)


async def test_a_corrupted_part_falls_back_to_the_whole_fold(store_path: Path) -> None:
    store, whole = await _with_snapshot(store_path)
    try:
        _rewrite_part(store_path, b"noted 3 ", b"noted 8 ")
        await _falls_back(store, whole)
        # control: trusted without its CRCs, the same snapshot resumes a different transcript
        trusted = await resume(store, "e", Progress, decoder=_trusting)
        assert trusted.snapshot_seq > 0
        assert list(trusted.messages) != list(whole.messages)
    finally:
        await store.close()


async def test_a_corrupted_state_or_a_missing_part_falls_back(store_path: Path) -> None:
    store, whole = await _with_snapshot(store_path)
    try:
        kept = await store.snapshot("e")
        assert kept is not None
        flipped = bytearray(kept.state)
        flipped[-10] ^= 0x01
        _sql(store_path, "UPDATE snapshots SET state = ?", bytes(flipped))
        await _falls_back(store, whole)
        _sql(store_path, "UPDATE snapshots SET state = ?", kept.state)
        assert (await resume(store, "e", Progress)).snapshot_seq > 0  # sound again
        _sql(store_path, "DELETE FROM snapshot_parts WHERE name = ?", kept.parts[0])
        await _falls_back(store, whole)
    finally:
        await store.close()


async def test_a_stale_snapshot_is_caught_by_its_anchor(store_path: Path) -> None:
    """A snapshot whose log changed under it (here: another errand's snapshot, of a log
    as long, put in its place) is not used: the event at its place is not its anchor."""
    store = SQLiteStore(store_path)
    try:
        events = _long(30)
        await _loop_writes(store, "a", events, {len(events) - 3})
        other = _log(["approve"] * 12)[: len(events)]
        while len(other) < len(events):
            other.append(ev.ErrorRaised(kind="model", message="pad"))
        await _loop_writes(store, "b", other, set())
        snap = await store.snapshot("a")
        assert snap is not None
        assert await store.put_snapshot("b", snap)  # (the store keeps bytes; it cannot tell)
        whole_b = _whole(other, "b")
        resumed = await resume(store, "b", Progress)
        _assert_same(resumed, whole_b)
        assert resumed.snapshot_seq == 0
        # control: without the anchor, "b" would resume as "a"'s fold
        unanchored = await resume(store, "b", Progress, anchored=False)
        assert unanchored.snapshot_seq > 0 and unanchored != whole_b
    finally:
        await store.close()


async def test_a_snapshot_of_other_fold_code_is_not_read(store_path: Path) -> None:
    store, whole = await _with_snapshot(store_path)
    try:
        snap = await store.snapshot("e")
        assert snap is not None and snap.format == fmt()
        _sql(store_path, "UPDATE snapshots SET format = 'fold1:older'")
        await _falls_back(store, whole)
    finally:
        await store.close()


class KeepsSnapshots(SQLiteStore):
    """The control: a store that does not drop the snapshot when a purge rewrites the log."""

    def _rewrite_body(self, tx: Tx, errand_id: str, seq: int, body: str) -> None:
        tx.conn.execute(
            "UPDATE events SET body = ?, blob = NULL WHERE errand_id = ? AND seq = ?",
            (body, errand_id, seq),
        )


@pytest.mark.parametrize("cls", [SQLiteStore, KeepsSnapshots])
async def test_a_purge_drops_the_snapshot(store_path: Path, cls: type[SQLiteStore]) -> None:
    store = cls(store_path)
    try:
        events = _long(20)
        await _loop_writes(store, "e", events, {len(events)})
        await store.purge("e")
        whole = _whole([s.event for s in await store.read("e")], "e")
        resumed = await resume(store, "e", Progress)
        if cls is SQLiteStore:
            assert await store.snapshot("e") is None
            _assert_same(resumed, whole)
            assert b"noted 3" not in store_path.read_bytes()
        else:  # kept, it resumes the text the purge took out
            assert resumed.snapshot_seq > 0
            assert any("noted 3" in m.text for m in resumed.messages)
            assert not any("noted 3" in m.text for m in whole.messages)
    finally:
        await store.close()


async def test_a_stale_put_is_refused_and_a_snapshot_with_a_secret_is_not_kept(
    tmp_path: Path,
) -> None:
    from errands.store.redact import Redactor

    store = SQLiteStore(tmp_path / "s.db", redactor=Redactor({"API_KEY": "sk-very-secret-123"}))
    try:
        events = _long(10)
        await _loop_writes(store, "e", events, {len(events)})
        kept = await store.snapshot("e")
        assert kept is not None
        older = Snapshot(kept.seq - 1, kept.format, kept.state, kept.parts, {})
        assert not await store.put_snapshot("e", older)
        assert (await store.snapshot("e")) == kept
        secret = Snapshot(kept.seq + 1, kept.format, b"x sk-very-secret-123 x", (), {})
        assert not await store.put_snapshot("e", secret)
        assert b"sk-very-secret-123" not in (tmp_path / "s.db").read_bytes()
    finally:
        await store.close()


# ------------------------------------------------------------------ when they are written


async def test_the_loop_writes_one_every_thousand_events_and_resumes_from_it(
    store_path: Path,
) -> None:
    store = SQLiteStore(store_path)
    try:
        events = _long(300)  # 1 + 300 x 4 events
        await store.create("e", events[0])  # type: ignore[arg-type]
        p = Progress.empty("e")
        p.apply(1, events[0])
        written = []
        for i in range(1, len(events), 2):  # two events an append, as the loop appends
            batch = events[i : i + 2]
            seqs = await store.append("e", batch)
            for seq, event in zip(seqs, batch, strict=True):
                p.apply(seq, event)
            before = p.snapshot_seq
            await maybe_save(store, p, seqs, batch)
            if p.snapshot_seq != before:
                written.append(p.snapshot_seq)
        assert written == [1001]
        assert isinstance(p.messages, Chain)
        resumed = await resume(store, "e", Progress)
        assert resumed.snapshot_seq == 1001
        assert resumed.last_seq == len(events)
        # the resumed transcript stays encoded until it is read; its length is known
        whole = _whole(events, "e")
        assert isinstance(resumed.messages, Chain)
        assert list.__len__(resumed.messages) < len(resumed.messages) == len(whole.messages)
        _assert_same(resumed, whole)
    finally:
        await store.close()


def test_a_chain_decodes_once_and_keeps_its_parts_only_while_appended_to() -> None:
    chain: Chain[int] = Chain(range(5))
    parts, stored = chain.encode("m")
    assert len(parts) == 1 and stored == 0
    chain.stored(parts)
    chain.append(5)
    parts, stored = chain.encode("m")
    assert [n.split(".")[0] for n, _ in parts] == ["m0-5", "m5-6"] and stored == 1
    resumed: Chain[int] = Chain.of_parts(parts)
    resumed.append(6)
    assert len(resumed) == 7 and list.__len__(resumed) == 1  # not decoded by an append
    assert list(resumed) == [0, 1, 2, 3, 4, 5, 6] and next(reversed(resumed)) == 6
    resumed[0] = 9  # a change other than an append: the parts are forgotten
    parts, stored = resumed.encode("m")
    assert stored == 0 and [n.split(".")[0] for n, _ in parts] == ["m0-7"]
