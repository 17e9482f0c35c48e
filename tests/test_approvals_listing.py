"""``GET /api/approvals`` without decoding the whole queue each time (issue 17, item 3).

The SQLite store keeps each pending row's approvals with the row it decoded them from and
decodes only rows that changed; the server keeps each approval's card JSON with the
approval object it encoded. Here: the listing is byte for byte what the plain encoding of
the store's answer makes, a second listing decodes nothing, and a decision, a new request
and a title are all seen at once. Control: a store that keeps approvals by errand id alone
(not by the row) goes on listing an approval that was decided -- the check that fails.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import errands.store.sqlite.store as sqlite_store
from errands.core import events as ev
from errands.core.errand import ApprovalOut
from errands.core.labels import Provenance
from errands.core.states import PendingApproval
from errands.server.context import ServerContext
from errands.server.handlers import approvals_json
from errands.server.schemas import APPROVALS
from errands.store.rows import pending_of
from errands.store.sqlite import SQLiteStore


class ByIdOnly(SQLiteStore):
    """The control: approvals kept by errand id, whatever the row says now (stale)."""

    def _pending(self) -> list[PendingApproval]:
        rows = (
            self._reader()
            .execute(
                "SELECT id, state, title, created_at, updated_at, last_seq, parent, view"
                " FROM errands WHERE pending_count > 0 ORDER BY updated_at"
            )
            .fetchall()
        )
        out: list[PendingApproval] = []
        for row in rows:
            kept = self._pending_memo.get(row[0])
            if kept is None:
                kept = self._pending_memo[row[0]] = (row, sqlite_store.pending_of((row,)))
            out.extend(kept[1])
        return out


def _created(title: str) -> ev.ErrandCreated:
    return ev.ErrandCreated(
        title=title,
        content=ev.Content(text="go", provenance=Provenance(kind="user")),
        model="scripted:m",
        workspace="/w",
    )


def _asked(call: str) -> ev.ApprovalRequested:
    return ev.ApprovalRequested(
        call_id=call,
        tool="http_request",
        arguments={"method": "POST", "url": f"https://example.com/{call}"},
        args_hash=f"sha256:{call}",
        effect=ev.EffectClass.external,
        reason="sends",
        rule="ask",
        preview=f"POST {call}",
    )


def _ctx(store: SQLiteStore) -> ServerContext:
    return cast(ServerContext, SimpleNamespace(store=store, titles={}, approval_cards={}))


async def _plain(store: SQLiteStore) -> bytes:
    return APPROVALS.dump_json(await ApprovalOut.waiting(store))


async def _scenario(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    decoded: list[int] = []

    def counting(rows: Any) -> list[PendingApproval]:
        found = pending_of(rows)
        decoded.append(1)
        return found

    monkeypatch.setattr(sqlite_store, "pending_of", counting)
    for i in range(5):
        await store.create(f"e{i}", _created(f"errand {i}"))
        await store.append(f"e{i}", [_asked(f"c{i}a"), _asked(f"c{i}b")])
    ctx = _ctx(store)
    seen = []
    first = await approvals_json(ctx)
    seen.append(first == await _plain(store) and len(decoded) >= 5)
    decoded.clear()
    again = await approvals_json(ctx)
    seen.append(again == first and not decoded)  # nothing decoded, nothing encoded anew
    # a decision on e2's first request; a new errand asking; e0's second one granted
    await store.append(
        "e2", [ev.ApprovalGranted(request_seq=2, args_hash="sha256:c2a", by="p", channel="api")]
    )
    await store.create("new", _created("the new one"))
    await store.append("new", [_asked("n1")])
    await store.append("e0", [ev.ApprovalDenied(request_seq=3, reason="no", by="p", channel="api")])
    now = await approvals_json(ctx)
    seen.append(now == await _plain(store))
    ids = [a.id for a in APPROVALS.validate_json(now)]
    seen.append("e2.2" not in ids and "e0.3" not in ids and "new.2" in ids and len(ids) == 9)
    return seen


async def test_the_listing_decodes_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        assert await _scenario(store, monkeypatch) == [True, True, True, True]
    finally:
        await store.close()


async def test_control_approvals_kept_by_id_alone_are_listed_after_their_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ByIdOnly(tmp_path / "s.db")
    try:
        seen = await _scenario(store, monkeypatch)
    finally:
        await store.close()
    assert seen[:2] == [True, True] and seen[3] is False
