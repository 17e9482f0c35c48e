"""The errand log on disk: an old log replays, secrets never reach the file, big bodies go
to blobs, purge really removes private content, old schemas migrate, newer ones refuse,
and concurrent appends share commits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from errands.core import events as ev
from errands.core.labels import Confidentiality, Integrity, Provenance
from errands.core.states import ErrandState, ErrandView, fold
from errands.errors import SchemaTooNew, StoreError
from errands.store.base import BLOB_THRESHOLD
from errands.store.purge import PURGED
from errands.store.redact import Redactor
from errands.store.sqlite import SQLiteStore
from errands.store.sqlite.migrations import MIGRATIONS

LATEST = len(MIGRATIONS)

FROZEN = Path(__file__).parent / "data" / "frozen_log_v1.jsonl"


def _created(
    title: str = "watch listings", text: str = "two-bedroom under 2,000"
) -> ev.ErrandCreated:
    return ev.ErrandCreated(
        title=title,
        content=ev.Content(text=text, provenance=Provenance(kind="user", name="ana")),
        model="sim/m",
        workspace="/tmp/ws",
    )


def _tool_result(text: str, conf: Confidentiality = Confidentiality.private) -> ev.ToolResult:
    return ev.ToolResult(
        call_id="c1",
        tool="web.fetch",
        ok=True,
        content=ev.Content(
            text=text,
            provenance=Provenance(kind="tool", name="web.fetch", source="https://x.example/l"),
            integrity=Integrity.untrusted,
            confidentiality=conf,
        ),
    )


def _disk_bytes(path: Path) -> bytes:
    """Everything SQLite keeps on disk for *path*: the database, its WAL, its shm."""
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


# --- the frozen v1 log: must keep passing forever ----------------------------------------


def test_the_frozen_v1_log_replays_to_the_same_state() -> None:
    lines = FROZEN.read_text(encoding="utf-8").splitlines()
    raw = [json.loads(line) for line in lines]
    assert raw[0]["type"] == "errand_created" and raw[0]["v"] == 1 and "text" in raw[0]
    assert all(r["v"] == 1 for r in raw)

    log = [(seq, ev.load_event(line)) for seq, line in enumerate(lines, start=1)]
    view = fold("01JGX4T2N8", log)

    created = log[0][1]
    assert isinstance(created, ev.ErrandCreated)
    assert created.content.text.startswith("Watch these rental listings")
    assert created.content.provenance == Provenance(kind="user", name="ana")
    assert created.content.confidentiality is Confidentiality.private
    assert created.limits.max_cost_usd == 2.0

    assert view.state is ErrandState.done
    assert view.title == "Two-bedroom under 2,000"
    assert view.result == (
        "Emailed you Elm Street 4 (2 bed, 1,850/month); Avenida Nova 9 is a one-bedroom"
        " at 1,400/month."
    )
    assert view.model == "openai/gpt-5-mini"
    assert view.workspace == "/home/ana/.errands/workspaces/01JGX4T2N8"
    assert view.created_at == 1767261600.0
    assert view.updated_at == 1767265263.25
    assert view.last_seq == 16
    assert view.steps == 3
    assert view.usage.input_tokens == 4500
    assert view.usage.cached_input_tokens == 2560
    assert view.usage.output_tokens == 260
    assert view.usage.reasoning_tokens == 80
    assert view.usage.cost_usd == pytest.approx(0.00513)
    assert view.pending == {}
    assert not view.cancel_requested and not view.purged
    # the upgraded events are current-version events, and re-serialise as such
    for _, event in log:
        again = ev.load_event(event.model_dump_json())
        assert again == event and again.v == type(event).VERSION


def test_an_event_from_a_newer_errands_is_refused_clearly() -> None:
    newer = {"type": "user_message", "v": 99, "at": 1.0, "content": {}}
    with pytest.raises(ValueError, match="newer than this errands understands"):
        ev.load_event(json.dumps(newer))


# --- redaction ---------------------------------------------------------------------------

SECRET = "sk-test-9f8e7d6c5b4a39281706"
TRICKY = 'pa"ss\\word/2026-x'  # its JSON spelling differs from its raw one


async def test_secret_values_never_reach_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    store = SQLiteStore(path, redactor=Redactor({"OPENAI_API_KEY": SECRET, "DB_PASSWORD": TRICKY}))
    await store.create("e1", _created(title=f"use key {SECRET}", text=f"the key is {SECRET}"))
    await store.append(
        "e1",
        [
            _tool_result(f"env dump: OPENAI_API_KEY={SECRET} DB_PASSWORD={TRICKY}"),
            ev.ApprovalRequested(
                call_id="c2",
                tool="http.post",
                arguments={"headers": {"Authorization": f"Bearer {SECRET}"}, "pw": TRICKY},
                args_hash="sha256:00",
                effect=ev.EffectClass.external,
                reason=f"posts {TRICKY}",
                rule="sends",
                preview=f"POST with Bearer {SECRET}",
            ),
        ],
    )
    await store.append(
        "e1",
        [
            ev.StateChanged(
                state="done",
                reason=f"done with {SECRET}",
                result=ev.Content(text=f"result {TRICKY}", provenance=Provenance(kind="model")),
            )
        ],
    )
    # what readers see: markers, in the log and in the projection alike
    stored = await store.read("e1")
    assert "[REDACTED:OPENAI_API_KEY]" in stored[1].event.model_dump_json()
    view = await store.view("e1")
    assert view.title == "use key [REDACTED:OPENAI_API_KEY]"
    assert view.result == "result [REDACTED:DB_PASSWORD]"
    (pending,) = view.pending.values()
    assert pending.arguments["pw"] == "[REDACTED:DB_PASSWORD]"
    assert (await store.integrity_check()) == []  # the projection is the fold of the redacted log
    # and the raw bytes, while open (WAL) and after close (checkpointed)
    for when in ("open", "closed"):
        if when == "closed":
            await store.close()
        data = _disk_bytes(path)
        assert b"REDACTED:OPENAI_API_KEY" in data, when
        for spelling in (SECRET, TRICKY, json.dumps(TRICKY)[1:-1]):
            assert spelling.encode() not in data, (when, spelling)


# --- blobs ---------------------------------------------------------------------------------


async def test_a_100_kib_tool_result_goes_to_a_blob_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    store = SQLiteStore(path)
    try:
        await store.create("e1", _created())
        text = "".join(f"listing {i}: 2 bed, {1500 + i}/month; " for i in range(3500))
        assert len(text) > 100 * 1024
        big = _tool_result(text)
        (seq,) = await store.append("e1", [big])
        assert (await store.read("e1"))[-1].event == big
        conn = sqlite3.connect(path)
        try:
            body_len, blob = conn.execute(
                "SELECT length(body), blob FROM events WHERE errand_id = 'e1' AND seq = ?", (seq,)
            ).fetchone()
            (data,) = conn.execute("SELECT data FROM blobs WHERE hash = ?", (blob,)).fetchone()
            (row_bytes,) = conn.execute(
                "SELECT sum(length(errand_id) + length(type) + length(body) + length(blob) + 16)"
                " FROM events WHERE errand_id = 'e1' AND seq = ?",
                (seq,),
            ).fetchone()
        finally:
            conn.close()
        assert body_len == 0 and row_bytes < 200  # the events row stays small
        assert blob == "sha256:" + hashlib.sha256(data.encode()).hexdigest()  # content-addressed
        assert ev.load_event(data) == big
        # a small event stays inline
        await store.append("e1", [_tool_result("short")])
        assert (await store.integrity_check()) == []
        assert len(data) > BLOB_THRESHOLD
    finally:
        await store.close()


# --- purge -----------------------------------------------------------------------------------

PRIVATE = "MY-PRIVATE-ADDRESS-12-ELM"
PUBLIC = "PUBLIC-LISTING-AVENIDA-NOVA"
OTHER = "OTHER-ERRAND-PRIVATE-TEXT"


async def test_purge_removes_private_content_from_the_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    store = SQLiteStore(path)
    await store.create("e1", _created(title=f"move to {PRIVATE}", text=f"I live at {PRIVATE}"))
    await store.create("e2", _created(title="other", text=OTHER))
    await store.append(
        "e1",
        [
            ev.UserMessage(
                content=ev.Content(text=f"also {PRIVATE}", provenance=Provenance(kind="user"))
            ),
            _tool_result(f"found {PUBLIC}", Confidentiality.public),
            _tool_result(f"blob {PRIVATE} " + "x" * (BLOB_THRESHOLD + 100)),
            ev.ModelResponded(
                request_seq=2,
                model="sim/m",
                tool_calls=[
                    ev.ToolCall(
                        call_id="c9", name="mail.send", arguments={}, raw_arguments=f"{{{PRIVATE}"
                    )
                ],
                # the model's signed thinking is derived from the private context
                replay={"kind": "anthropic", "blocks": [{"thinking": f"ana at {PRIVATE}"}]},
            ),
            ev.ApprovalRequested(
                call_id="c2",
                tool="mail.send",
                arguments={"to": "ana@example.org", "body": PRIVATE},
                args_hash="sha256:00",
                effect=ev.EffectClass.external,
                reason="sends an email",
                rule="sends",
                preview=f"To ana: {PRIVATE}",
            ),
            ev.ErrorRaised(kind="tool_error", message=f"could not parse {PRIVATE}"),
            ev.StateChanged(
                state="done",
                result=ev.Content(text=f"done: {PRIVATE}", provenance=Provenance(kind="model")),
            ),
        ],
    )
    await store.close()  # checkpointed: the private text is in the db file itself
    assert PRIVATE.encode() in _disk_bytes(path)

    store = SQLiteStore(path)
    try:
        await store.append("e2", [ev.ErrorRaised(kind="k", message="keeps the WAL busy")])
        await store.purge("e1")
        data = _disk_bytes(path)
        assert PRIVATE.encode() not in data  # not in the db, not in the WAL
        assert PUBLIC.encode() in data  # public content stays
        assert OTHER.encode() in data  # other errands are untouched

        log = await store.read("e1")  # still a valid, contiguous log
        assert [s.seq for s in log] == list(range(1, 10))
        assert isinstance(log[-1].event, ev.ErrandPurged)
        assert not any(PRIVATE in s.event.model_dump_json() for s in log)
        view = await store.view("e1")
        assert view.purged and view.title == PURGED and view.result == PURGED
        assert all(p.arguments == {"purged": True} for p in view.pending.values())
        assert (await store.integrity_check()) == []  # the projection is the fold of the purged log
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT count(*) FROM blobs").fetchone() == (0,)
        finally:
            conn.close()
    finally:
        await store.close()
    assert PRIVATE.encode() not in _disk_bytes(path)


async def test_purge_removes_the_text_of_a_v1_errand_created(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _write_schema_1_db(path, FROZEN.read_text(encoding="utf-8").splitlines())
    store = SQLiteStore(path)
    try:
        await store.purge("01JGX4T2N8")
        assert b"Watch these rental listings" not in _disk_bytes(path)
        assert b"Thanks! Also tell me" not in _disk_bytes(path)
        assert (await store.integrity_check()) == []
    finally:
        await store.close()


# --- migrations ------------------------------------------------------------------------------


def _write_schema_1_db(path: Path, lines: list[str], errand_id: str = "01JGX4T2N8") -> ErrandView:
    """A database as errands with schema version 1 wrote it (whole view JSON, v1 events)."""
    log = [(seq, ev.load_event(line)) for seq, line in enumerate(lines, start=1)]
    view = fold(errand_id, log)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(MIGRATIONS[0].step)  # 0001_log, as the first errands wrote it
        conn.execute("PRAGMA user_version = 1")
        conn.executemany(
            "INSERT INTO events(errand_id, seq, type, at, body, blob) VALUES (?,?,?,?,?,NULL)",
            [
                (errand_id, seq, json.loads(line)["type"], json.loads(line)["at"], line)
                for seq, line in enumerate(lines, start=1)
            ],
        )
        conn.execute(
            "INSERT INTO errands VALUES (?,?,?,?,?,?,?,?,?)",
            (
                errand_id,
                view.state.value,
                view.title,
                view.created_at,
                view.updated_at,
                view.last_seq,
                view.parent,
                len(view.pending),
                view.model_dump_json(),
            ),
        )
    finally:
        conn.close()
    return view


async def test_a_schema_1_database_opens_migrates_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    expected = _write_schema_1_db(path, FROZEN.read_text(encoding="utf-8").splitlines())
    store = SQLiteStore(path)
    try:
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone() == (LATEST,)
            indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            assert "events_blob" in indexes
        finally:
            conn.close()
        assert (await store.view("01JGX4T2N8")) == expected  # the schema-1 projection reads
        assert (await store.integrity_check()) == []
        (listed,) = await store.list_errands()
        assert listed == expected
        seqs = await store.append(
            "01JGX4T2N8",
            [
                ev.UserMessage(
                    content=ev.Content(text="and 3 bedrooms?", provenance=Provenance(kind="user"))
                )
            ],
        )
        assert seqs == [17]
        assert (await store.view("01JGX4T2N8")).state is ErrandState.queued  # a follow-up reopens
        assert (await store.integrity_check()) == []
    finally:
        await store.close()
    again = SQLiteStore(path)  # and a re-open of the migrated file is a no-op
    try:
        assert (await again.view("01JGX4T2N8")).last_seq == 17
    finally:
        await again.close()


async def test_a_database_from_a_newer_errands_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = SQLiteStore(path)
    await store.create("e1", _created())
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match=r"newer errands .*upgrade errands") as info:
        SQLiteStore(path)
    assert isinstance(info.value, StoreError)
    assert f"schema version {LATEST + 1}" in str(info.value)


def _applied(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
    finally:
        conn.close()


async def test_migrations_are_named_and_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    await SQLiteStore(path).close()
    assert _applied(path) == [m.name for m in MIGRATIONS]
    await SQLiteStore(path).close()  # opening again applies nothing twice
    assert _applied(path) == [m.name for m in MIGRATIONS]
    # a store from before named migrations (only user_version): its names are recorded
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE migrations")
    conn.close()
    store = SQLiteStore(path)
    await store.create("e1", _created())
    await store.close()
    assert _applied(path) == [m.name for m in MIGRATIONS]


async def test_a_migration_this_errands_does_not_know_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    await SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO migrations(name, applied_at) VALUES ('0099_from_the_future', 0)")
    conn.close()
    with pytest.raises(SchemaTooNew, match="0099_from_the_future"):
        SQLiteStore(path)


# --- group commit ----------------------------------------------------------------------------


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "e.db")
    try:
        ids = [f"e{i}" for i in range(20)]
        await asyncio.gather(*(store.create(e, _created()) for e in ids))
        assert all(await asyncio.gather(*(store.acquire(e, f"w{e}", 60) for e in ids)))
        commits = store.stats.commits
        results = await asyncio.gather(
            *(
                store.append(e, [_tool_result(f"r{k}")], owner=f"w{e}")
                for k in range(10)
                for e in ids
            )
        )
        assert sorted(map(tuple, results)) == sorted((k + 2,) for k in range(10) for _ in ids)
        assert store.stats.commits - commits < 100  # 200 appends, far fewer fsyncs
        assert store.stats.max_batch > 1
        for e in ids:
            assert [s.seq for s in (await store.read(e))] == list(range(1, 12))
        assert (await store.integrity_check()) == []
    finally:
        await store.close()


async def test_a_failing_operation_fails_alone_in_its_batch(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    store = SQLiteStore(path)
    try:
        await store.create("e1", _created())
        await store.create("e2", _created())

        def broken(view: ErrandView) -> None:
            raise ValueError("a bug in a guard")

        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # hold the writer so the appends share a batch
        tasks = [
            asyncio.ensure_future(store.append("e1", [_tool_result("a")])),
            asyncio.ensure_future(store.append("e2", [_tool_result("b")], guard=broken)),
            asyncio.ensure_future(store.append("e1", [_tool_result("c")])),
        ]
        await asyncio.sleep(0.05)
        blocker.execute("ROLLBACK")
        blocker.close()
        a, b, c = await asyncio.gather(*tasks, return_exceptions=True)
        assert a == [2] and c == [3]
        assert isinstance(b, ValueError)
        assert [s.seq for s in (await store.read("e2"))] == [1]
        assert (await store.integrity_check()) == []
    finally:
        await store.close()


async def test_a_corrupted_projection_is_found_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    store = SQLiteStore(path)
    try:
        await store.create("e1", _created())
        await store.append("e1", [ev.StateChanged(state="done")])
        conn = sqlite3.connect(path)
        conn.execute("UPDATE errands SET state = 'running', view = '{}' WHERE id = 'e1'")
        conn.commit()
        conn.close()
        assert (await store.integrity_check()) == ["e1: projection differs from the fold"]
        assert (await store.rebuild_projections()) == 1
        assert (await store.integrity_check()) == []
        assert (await store.view("e1")).state is ErrandState.done
    finally:
        await store.close()
