"""Memory from the outside (docs/memory.md): ``errands memory ls/search/rm`` as a person
types them, ``GET/DELETE /api/memory`` on a real ``errands up``, and the inbox's Memory
page in Debian's Chromium -- read, search, delete."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_api
import pytest
from helpers.browser import ARGS, CHROMIUM, TIMEOUT_MS
from helpers.server import ServerProc, free_port, write_config

from errands.config import load_settings
from errands.core.labels import Confidentiality, Integrity, Label
from errands.store.sqlite import SQLiteStore

expect = playwright_api.expect
TRUSTED = Label.of(Integrity.trusted, Confidentiality.private)
UNTRUSTED = Label.of(Integrity.untrusted, Confidentiality.private)


def seed(home: Path) -> None:
    """Three memories, kept through the store as the tools keep them."""

    async def go() -> None:
        store = SQLiteStore(load_settings(home).db_path)
        try:
            await store.remember("person", "Ana's birthday is on 3 May", ["family"], TRUSTED)
            await store.remember("person", "Widgets are cheaper at shop.example", [], UNTRUSTED)
            await store.remember("schedule:digest", "the digest goes out on Mondays", [], TRUSTED)
        finally:
            await store.close()

    asyncio.run(go())


# -- the CLI ----------------------------------------------------------------------------------


def test_the_cli_lists_searches_and_deletes(cli: Any, home: Path) -> None:
    write_config(home)
    seed(home)
    listed = json.loads(cli("memory", "ls", "--json").stdout)
    assert [m["id"] for m in listed] == [3, 2, 1]
    assert listed[1]["integrity"] == "untrusted" and listed[0]["scope"] == "schedule:digest"
    person = json.loads(cli("memory", "ls", "--scope", "person", "--json").stdout)
    assert [m["id"] for m in person] == [2, 1]
    text = cli("memory", "ls").stdout
    assert "Ana's birthday" in text and "untrusted" in text and "schedule:digest" in text
    found = json.loads(cli("memory", "search", "birthday Ana", "--json").stdout)
    assert [m["id"] for m in found] == [1]
    assert "no memory matches 'zeppelin'" in cli("memory", "search", "zeppelin").stdout
    gone = cli("memory", "rm", "1")
    assert gone.returncode == 0 and "deleted memory 1 (person)" in gone.stdout
    assert json.loads(cli("memory", "search", "birthday", "--json").stdout) == []
    # bad input: one clear line, exit 2, no traceback, nothing written
    for args, message in [
        (("memory", "rm", "1"), "no memory 1"),
        (("memory", "ls", "--scope", "friends"), "bad memory scope 'friends'"),
        (("memory", "search", "?!"), "needs at least one word"),
    ]:
        r = cli(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(json.loads(cli("memory", "ls", "--json").stdout)) == 2
    # the tools are listed with the other built-ins
    tools = {t["name"]: t for t in json.loads(cli("tools", "--json").stdout)}
    assert tools["remember"]["source"] == "builtin"
    assert tools["remember"]["effect"] == "write_local"
    assert tools["search_memory"]["effect"] == "read"


# -- the API and the inbox, on a real server --------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    home = tmp_path_factory.mktemp("memory") / "home"
    write_config(home)
    seed(home)
    proc = ServerProc(home, port=free_port()).start()
    yield proc
    proc.kill()
    assert "Traceback" not in proc.output(), proc.output()[-5000:]


def test_the_api_lists_searches_and_deletes_with_the_apis_auth(server: ServerProc) -> None:
    with server.client() as api:
        listed = api.get("/api/memory").json()
        assert {m["text"] for m in listed} >= {"Widgets are cheaper at shop.example"}
        found = api.get("/api/memory", params={"q": "widgets", "scope": "person"}).json()
        assert [(m["text"], m["integrity"]) for m in found] == [
            ("Widgets are cheaper at shop.example", "untrusted")
        ]
        assert (
            api.get("/api/memory", params={"q": "widgets", "scope": "schedule:digest"}).json() == []
        )
        bad = api.get("/api/memory", params={"scope": "nobody"})
        assert bad.status_code == 422 and "scope" in bad.json()["detail"]
        assert api.get("/api/memory", params={"q": " "}).status_code == 422
        assert api.delete("/api/memory/999").status_code == 404
        before = len(api.get("/api/memory").json())
        mid = found[0]["id"]
        assert api.delete(f"/api/memory/{mid}").json() == {"deleted": mid}
        assert api.get("/api/memory", params={"q": "widgets"}).json() == []
        assert len(api.get("/api/memory").json()) == before - 1
    # the same auth as the rest of the API: without credentials, as /api/errands answers
    with httpx.Client(base_url=server.url) as anonymous:
        expected = anonymous.get("/api/errands").status_code
        assert anonymous.get("/api/memory").status_code == expected
        gone = anonymous.delete("/api/memory/999").status_code
        assert gone == (404 if expected == 200 else expected)


def test_with_a_token_the_memory_api_refuses_a_caller_without_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, "[server]\nrequire_token = true")
    seed(home)
    proc = ServerProc(home, port=free_port()).start()
    try:
        assert proc.token
        with httpx.Client(base_url=proc.url) as anonymous:
            assert anonymous.get("/api/memory").status_code == 401
            assert anonymous.delete("/api/memory/1").status_code == 401
        with proc.client() as api:  # (the token) -- nothing was deleted
            assert [m["id"] for m in api.get("/api/memory").json()] == [3, 2, 1]
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):  # a missing browser is a failure, never a skip
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_the_memory_page_reads_searches_and_deletes(server: ServerProc, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    if server.token:
        context.set_extra_http_headers({"Authorization": f"Bearer {server.token}"})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url)
        page.click("a.memory-link")
        expect(page.locator("h1")).to_have_text("Memory")
        rows = page.locator("tr.memory-row")
        expect(rows.filter(has_text="the digest goes out on Mondays")).to_have_count(1)
        page.fill("#memory-search input[name=q]", "birthday")
        page.click("#memory-search button[type=submit]")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("Ana's birthday is on 3 May")
        page.on("dialog", lambda dialog: dialog.accept())
        rows.first.locator("button[data-action=delete-memory]").click()
        expect(rows).to_have_count(0)
        page.reload()
        expect(page.locator(".empty-note")).to_contain_text("No memory matches")
        page.goto(f"{server.url}/memory?scope=nobody")
        expect(page.locator(".error")).to_contain_text("bad memory scope")
    finally:
        context.close()
    assert errors == []
    with server.client() as api:  # the delete reached the store
        assert api.get("/api/memory", params={"q": "birthday"}).json() == []
