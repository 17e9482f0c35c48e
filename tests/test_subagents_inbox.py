"""The inbox's tree of sub-errands (issue 22, item 3) in a real browser (Debian's Chromium
through Playwright): a parent that delegates 20 children shows them on its page, each
with its state, cost, steps and time, live; two children wait for approval and their
cards are grouped under them in the tree, where the person approves one. The server is
errands' app under uvicorn on 127.0.0.1, with its runner, in a thread of this process
(the children's model is a scripted one). Negative control: the page without the tree's
script (blocked) stays as it was loaded."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_api
import pytest
import uvicorn
from helpers.browser import chromium, fresh_page, shot
from helpers.fanout import CHILD, FanModel, with_subagents
from helpers.kit import harness_for

from errands.config import Settings
from errands.core.errand import ApprovalOut
from errands.core.events import ToolCall
from errands.engine.operations import create_errand
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.policy.hook import Decision
from errands.policy.rules import Policy, Rule
from errands.server.app import create_app
from errands.server.auth import Security
from errands.server.context import ServerContext
from errands.server.hub import Hub
from errands.server.idempotency import IdempotencyStore
from errands.server.inbox_tree import grouped
from errands.store.sqlite import SQLiteStore

expect = playwright_api.expect
expect.set_options(timeout=15_000)
N = 20
ASKING = {3, 11}  # these children write a file first: the policy asks


class TreeModel(FanModel):
    """FanModel's parent and children (six calls each, 0.5 s apiece); children 3 and
    11 call write_file first, which waits for a person."""

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        reply = await super().complete(request, on_text)
        first = next(m.text for m in request.messages if m.role == "user")
        k = sum(1 for m in request.messages if m.role == "assistant")
        if CHILD in first and k == 0 and int(first.split()[-1]) in ASKING:
            args = {"path": "note.txt", "content": "a note"}
            reply.tool_calls = [ToolCall(call_id="w0", name="write_file", arguments=args)]
        return reply


class TreeServer(threading.Thread):
    """errands' app and runner on a free port of 127.0.0.1, until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready = threading.Event()
        self.server: uvicorn.Server | None = None
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.main())
        except BaseException as exc:  # (reported by the test)
            self.failed = exc
            self.ready.set()

    async def main(self) -> None:
        store = SQLiteStore(self.settings.db_path)
        ask = Policy(rules=[Rule(name="ask-writes", tool="write_file", decision=Decision.ask)])
        model = TreeModel(N, child_calls=6, latency=0.5)
        h = harness_for(store, self.settings, model=model, policy=ask)
        ctx = ServerContext(
            harness=h,
            hub=Hub(store),
            security=Security(host="127.0.0.1", port=self.port),
            idempotency=IdempotencyStore(self.settings.home / "server.sqlite"),
            base_url=self.url,
        )
        config = uvicorn.Config(
            create_app(ctx), host="127.0.0.1", port=self.port, lifespan="off",
            log_level="warning", access_log=False, ws="none",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        stop = asyncio.Event()
        runner = asyncio.create_task(h.runner().serve(stop, poll=0.05))
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():
            await asyncio.sleep(0.01)
        self.ready.set()
        try:
            await serving
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)
            ctx.idempotency.close()
            await store.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.join(30)


@pytest.fixture
def tree_server(settings: Settings) -> Iterator[TreeServer]:
    server = TreeServer(with_subagents(settings, max_parallel=N))
    server.start()
    assert server.ready.wait(20) and server.failed is None, server.failed
    yield server
    server.stop()


def _api(server: TreeServer, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, server.url + path, timeout=10, **kw)
    assert r.status_code < 300, r.text
    return r.json()


def _children(server: TreeServer, eid: str) -> list[dict[str, Any]]:
    children: list[dict[str, Any]] = _api(server, "GET", f"/api/errands/{eid}")["children"]
    return children


def _until(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


@pytest.mark.parametrize("control", [False, True], ids=["live", "control-no-script"])
def test_the_parents_page_shows_its_tree_live(tree_server: TreeServer, control: bool) -> None:
    server = tree_server
    with chromium() as browser, fresh_page(browser) as page:
        if control:
            page.route("**/static/subtasks.js", lambda route: route.abort())
        page.goto(server.url)  # (the browser up before the children start)
        made = _api(
            server, "POST", "/api/errands", json={"text": "fan out", "model": "scripted:demo"}
        )
        eid = made["id"]
        _until(lambda: len(_children(server, eid)) == N)  # delegated; the children run
        page.goto(f"{server.url}/errands/{eid}")
        rows = page.locator("#subtasks tr.sub-row")
        expect(rows).to_have_count(N)
        done_at_load = page.locator('#subtasks tr.sub-row[data-state="done"]').count()
        assert done_at_load < N - len(ASKING)  # loaded while they ran
        # every child that asks nothing ends; the two that asked wait
        _until(
            lambda: sum(c["status"] == "done" for c in _children(server, eid)) == N - len(ASKING)
        )
        done = page.locator('#subtasks tr.sub-row[data-state="done"]')
        if control:  # nothing moves without the script
            time.sleep(2)
            assert done.count() == done_at_load
            return
        expect(done).to_have_count(N - len(ASKING))
        waiting = page.locator('#subtasks tr.sub-row[data-state="waiting_approval"]')
        expect(waiting).to_have_count(len(ASKING))
        # each waiting child's card, under it in the tree
        cards = page.locator("#subtasks tr.sub-approvals article.approval")
        expect(cards).to_have_count(len(ASKING))
        expect(page.locator("#subtasks .sub-summary")).to_contain_text("2 wait for you")
        first = _children(server, eid)[min(ASKING)]["id"]
        group = page.locator(f'#subtasks tr.sub-approvals[data-for="{first}"]')
        expect(group.locator("article.approval .tool")).to_have_text("write_file")
        row = page.locator(f'#subtasks tr.sub-row[data-id="{first}"]')
        expect(row.locator("td").nth(3)).not_to_have_text("0")  # steps
        expect(row.locator("td").nth(4)).to_contain_text(" s")  # time
        path = shot(page, "subagents_tree")
        assert path.stat().st_size > 0
        # approve it from the tree: the child goes on and ends
        group.locator("[data-action=approve]").click()
        expect(row).to_have_attribute("data-state", "done", timeout=20_000)  # (5 calls on)
        expect(cards).to_have_count(len(ASKING) - 1)
        assert (
            Path(_api(server, "GET", f"/api/errands/{first}")["workspace"]) / "note.txt"
        ).exists()
        # the inbox's queue names the other one's parent
        page.goto(server.url)
        expect(page.locator("#queue article.approval .for")).to_have_text(
            f"for fan out › {CHILD} {max(ASKING)}"
        )


def _card(errand_id: str, title: str, at: float) -> ApprovalOut:
    return ApprovalOut(
        id=f"{errand_id}.9", errand_id=errand_id, errand_title=title, seq=9, call_id="c",
        tool="write_file", arguments={}, args_hash="h", effect="write_local", reason="r",
        rule="x", preview="", at=at,
    )  # fmt: skip


async def test_the_queue_groups_a_childs_cards_under_its_parent(
    settings: Settings, tmp_path: Path
) -> None:
    """Two children's cards, asked at 1 and 3, and an unrelated errand's at 2: the queue
    (oldest first) would put the unrelated one between them; grouped, the tree's cards
    come together, each naming its parent."""
    store = SQLiteStore(tmp_path / "g.sqlite")
    try:
        parent = await create_errand(store, settings, "fan out", model="scripted:demo")
        other = await create_errand(store, settings, "something else", model="scripted:demo")
        kids = [
            await create_errand(
                store,
                settings,
                f"{CHILD} {k}",
                model="scripted:demo",
                parent=parent,
                errand_id=f"{parent}.2.0.{k}",
            )
            for k in range(2)
        ]
        queue = [
            _card(kids[0], f"{CHILD} 0", 1.0),
            _card(other, "something else", 2.0),
            _card(kids[1], f"{CHILD} 1", 3.0),
        ]
        shown = await grouped(store, queue)
        assert [a.errand_id for a in shown] == [kids[0], kids[1], other]
        assert [a.errand_title for a in shown] == [
            f"fan out › {CHILD} 0",
            f"fan out › {CHILD} 1",
            "something else",
        ]
    finally:
        await store.close()
