"""Issue 14, the API and the inbox's server side: continue an errand at its limit
(``POST /api/errands/{id}/resume``), archive and list by activity, a model spec refused
in one plain line, suggestions that would be accepted, the approval card's edit form,
the files page's confinement, a long timeline folded, "no price known".

The app runs in-process (FastAPI over httpx's ASGI transport) on a test's store, with a
scripted model and the test's tools; the errands are run by ``runner().run_errand``.
Each guarantee has a control that shows the check failing with the guard taken out.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.inproc import in_process
from helpers.kit import Ledger, call, harness_for, ledger_registry, script

from errands.config import Price, Settings
from errands.core import events as ev
from errands.core.errand import ErrandSummary
from errands.core.states import ErrandState
from errands.engine import operations
from errands.engine.operations import create_errand
from errands.harness import Harness
from errands.policy.hook import AllowAll
from errands.server import inbox as inbox_module
from errands.server import marks as marks_module
from errands.server.context import ServerContext
from errands.server.editing import editor_for
from errands.server.inbox import dead_end, model_choices, timeline
from errands.server.marks import Marks
from errands.server.prices import price_hint
from errands.server.schemas import CreateErrand
from errands.server.workspace_files import list_workspace, read_workspace_file
from errands.store import Store
from errands.tools import builtin
from errands.tools.builtin import files as file_tools
from errands.tools.toolset import FunctionToolset

LOOKUPS = [{"tool_calls": [call("lookup", term=str(i))]} for i in range(4)] + [{"text": "found 4"}]


@dataclass
class Server:
    harness: Harness
    api: httpx.AsyncClient
    ctx: ServerContext

    async def events(self, errand_id: str) -> int:
        return len(await self.harness.store.read(errand_id))

    async def page(self, url: str, **params: Any) -> httpx.Response:
        """An inbox page, as a browser gets it (its cookies dropped after: the API calls
        of these tests are not a browser's, and need no CSRF token)."""
        r = await self.api.get(url, params=params)
        self.api.cookies.clear()
        return r

    async def run(self, errand_id: str) -> ErrandState:
        return (await self.harness.runner().run_errand(errand_id)).state


@pytest.fixture
async def server(store: Store, settings: Settings, tmp_path: Path) -> AsyncIterator[Server]:
    tools = ledger_registry(Ledger(tmp_path / "ledger"))
    harness = harness_for(store, settings, tools=tools, model=script(*LOOKUPS), policy=AllowAll())
    async with in_process(harness) as (api, ctx):
        yield Server(harness, api, ctx)


async def at_its_step_limit(s: Server, steps: int = 2) -> str:
    """An errand that stopped at its step limit (or, given 5 steps or more, is done)."""
    eid = await create_errand(
        s.harness.store,
        s.harness.settings,
        "look four things up",
        model="scripted:demo",
        limits=ev.Limits(max_steps=steps),
    )
    state = await s.run(eid)
    assert state is (ErrandState.failed if steps < 5 else ErrandState.done)
    return eid


# -- item 7: POST /api/errands/{id}/resume ---------------------------------------------------


async def test_resume_gives_more_steps_and_the_errand_goes_on(server: Server) -> None:
    eid = await at_its_step_limit(server)
    r = await server.api.post(
        f"/api/errands/{eid}/resume",
        json={"more_steps": 3},
        headers={"X-Errands-Channel": "inbox", "X-Errands-By": "ana"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["reason"] is None
    assert await server.run(eid) is ErrandState.done
    view = await server.harness.store.view(eid)
    assert view.result == "found 4" and view.steps == 5
    raised = [
        s.event for s in await server.harness.store.read(eid) if s.event.type == "limits_raised"
    ]
    assert [(e.more_steps, e.by, e.channel) for e in raised] == [(3, "ana", "inbox")]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"more_steps": 0},
        {"more_steps": -1},
        {"more_steps": 10_001},
        {"more_steps": "ten"},
        {"more_steps": 1.5},
        {"more_steps": 3, "also": 1},
    ],
)
async def test_resume_refuses_a_bad_number_of_steps(server: Server, body: dict[str, Any]) -> None:
    eid = await at_its_step_limit(server)
    before = await server.events(eid)
    r = await server.api.post(f"/api/errands/{eid}/resume", json=body)
    assert r.status_code == 422, r.text
    assert "more_steps" in r.json()["detail"] or "also" in r.json()["detail"]
    assert await server.events(eid) == before  # nothing written


async def test_resume_an_unknown_errand_is_404(server: Server) -> None:
    r = await server.api.post("/api/errands/e000nothing/resume", json={"more_steps": 3})
    assert r.status_code == 404 and r.json()["detail"] == "no errand e000nothing"
    assert await server.harness.store.list_errands() == []


@pytest.mark.parametrize("check", ["guard", "control"])
async def test_resume_a_done_errand_is_422_and_writes_nothing(
    server: Server, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    eid = await at_its_step_limit(server, steps=10)  # (10 steps: it finishes)
    before = await server.events(eid)
    if check == "control":  # the check taken out: the raise is written to a done errand

        async def unchecked(store: Store, errand_id: str, more: int, **kw: Any) -> None:
            await store.append(errand_id, [ev.LimitsRaised(more_steps=more)])

        monkeypatch.setattr(operations, "continue_errand", unchecked)
        r = await server.api.post(f"/api/errands/{eid}/resume", json={"more_steps": 3})
        assert r.status_code == 200 and await server.events(eid) == before + 1
        return
    r = await server.api.post(f"/api/errands/{eid}/resume", json={"more_steps": 3})
    assert r.status_code == 422
    assert r.json()["detail"].startswith(f"errand {eid} is done: nothing to continue")
    assert await server.events(eid) == before


async def test_the_resume_route_is_in_the_schema(server: Server) -> None:
    spec = (await server.api.get("/openapi.json")).json()
    op = spec["paths"]["/api/errands/{errand_id}/resume"]["post"]
    assert op["operationId"] == "resumeErrand"
    assert {"200", "404", "409", "422"} <= set(op["responses"])
    body = spec["components"]["schemas"]["ResumeBody"]["properties"]["more_steps"]
    assert body["minimum"] == 1 and body["maximum"] == 10_000


# -- item 7 in the inbox: the dead end is recognised ------------------------------------------


async def test_the_inbox_sees_a_dead_end_only_at_a_limit(server: Server) -> None:
    store = server.harness.store
    eid = await at_its_step_limit(server)
    found = dead_end(await store.view(eid), await store.read(eid))
    assert found is not None and found.steps and found.reason.startswith("step limit reached")
    page = (await server.page(f"/errands/{eid}")).text
    assert 'data-dead-end="1"' in page and 'id="reply-section" hidden' in page
    assert 'Continue with <span class="n">10</span> more steps' in page
    # given room, it is no longer at a dead end: the reply box is back
    await server.api.post(f"/api/errands/{eid}/resume", json={"more_steps": 5})
    assert await server.run(eid) is ErrandState.done
    assert dead_end(await store.view(eid), await store.read(eid)) is None
    page = (await server.page(f"/errands/{eid}")).text
    assert 'id="reply-section" hidden' not in page and "dead-end notice" not in page


async def test_a_wall_time_limit_is_a_dead_end_more_steps_cannot_open(server: Server) -> None:
    store = server.harness.store
    eid = await create_errand(
        store,
        server.harness.settings,
        "x",
        model="scripted:demo",
        limits=ev.Limits(max_wall_seconds=0.001),
    )
    assert await server.run(eid) is ErrandState.failed
    found = dead_end(await store.view(eid), await store.read(eid))
    assert found is not None and not found.steps and "wall-time" in found.reason
    page = (await server.page(f"/errands/{eid}")).text
    assert "More steps would not help here" in page and "continue-form" not in page


# -- item 6: archive, order by activity, unread ----------------------------------------------


async def ids(s: Server, **params: Any) -> list[str]:
    r = await s.api.get("/api/errands", params=params)
    assert r.status_code == 200, r.text
    return [e["id"] for e in r.json()]


async def test_archive_and_list_by_activity(server: Server, settings: Settings) -> None:
    store = server.harness.store
    first = await create_errand(store, settings, "first", model="scripted:demo")
    second = await create_errand(store, settings, "second", model="scripted:demo")
    assert await ids(server) == [second, first]  # newest first
    await operations.tell_errand(store, first, "and one more thing")  # first is active now
    assert await ids(server, order="activity") == [first, second]
    assert await ids(server) == [second, first]

    r = await server.api.post(f"/api/errands/{second}/archive", json={"archived": True})
    assert r.status_code == 200 and r.json() == {"errand_id": second, "archived": True}
    assert await ids(server, archived="false") == [first]
    assert await ids(server, archived="true") == [second]
    assert await ids(server) == [second, first]  # unset: both
    # durable: a fresh reader of server.sqlite sees it
    assert Marks(settings.home / "server.sqlite").archived() == {second}
    page = (await server.page("/")).text
    assert f'data-errand-id="{second}"' not in page  # out of the inbox's list
    archived = (await server.page("/", show="archived")).text
    assert f'data-errand-id="{second}"' in archived and "Unarchive" in archived

    r = await server.api.post(f"/api/errands/{second}/archive", json={"archived": False})
    assert r.json()["archived"] is False and await ids(server, archived="true") == []
    r = await server.api.post(f"/api/errands/{second}/archive", json={"archived": 0})
    assert r.status_code == 422  # a boolean, not something that might mean one
    r = await server.api.post("/api/errands/e000nothing/archive", json={})
    assert r.status_code == 404
    assert not Marks(settings.home / "server.sqlite").is_archived("e000nothing")


async def test_unread_until_the_errand_is_opened(server: Server, settings: Settings) -> None:
    store = server.harness.store
    eid = await create_errand(store, settings, "look it up", model="scripted:demo")

    def row(page: str) -> str:
        start = page.index(f'data-errand-id="{eid}"')
        return page[page.rindex("<li", 0, start) : page.index("</li>", start)]

    assert "errand-row unread" in row((await server.page("/")).text)  # never opened
    await server.page(f"/errands/{eid}")
    assert "errand-row unread" not in row((await server.page("/")).text)
    await server.run(eid)  # it goes on while the person looks elsewhere
    listed = row((await server.page("/")).text)
    assert "errand-row unread" in listed and "found 4" in listed  # and says how it ended


def test_headlines_say_where_an_errand_got_to() -> None:
    base: dict[str, Any] = {
        "id": "e1",
        "title": "t",
        "model": "m",
        "parent": None,
        "created_at": 0.0,
        "updated_at": 0.0,
        "steps": 3,
        "usage": ev.Usage(),
        "cost_usd": 0.0,
        "result": None,
        "reason": None,
        "pending_approvals": 0,
        "last_seq": 9,
    }

    def line(waiting: tuple[str, ...] = (), **kw: Any) -> str:
        return ErrandSummary.model_validate({**base, **kw}).headline(waiting)

    assert line(status="done", result="\n  Booked: Friday 7pm\nat Luigi's") == "Booked: Friday 7pm"
    assert line(
        status="waiting_approval", pending_approvals=1, result=None, waiting=("send_email",)
    ) == ("waits for your approval: send_email")
    assert (
        line(status="failed", reason="step limit reached (2 of 2)")
        == "failed: step limit reached (2 of 2)"
    )
    assert line(status="running") == "working (3 steps so far)"
    assert len(line(status="done", result="x" * 500)) == 200


# -- item 6: a long timeline folds ----------------------------------------------------------


async def test_a_long_timeline_keeps_its_latest_steps_open(
    server: Server, settings: Settings
) -> None:
    store = server.harness.store
    turns = [{"tool_calls": [call("lookup", term=str(i))]} for i in range(30)] + [
        {"text": "all 30"}
    ]
    server.harness.models = lambda spec: script(*turns)
    eid = await create_errand(store, settings, "thirty", model="scripted:demo")
    assert await server.run(eid) is ErrandState.done
    events = await store.read(eid)
    t = timeline(events)
    assert [s.event.type for s in t.first] == ["errand_created"]
    assert t.earlier_steps == 31 - inbox_module.KEEP_STEPS
    latest_steps = [s for s in t.latest if s.event.type == "model_responded"]
    assert len(latest_steps) == inbox_module.KEEP_STEPS
    assert t.latest[-1].event.type == "state_changed"  # the result is among the open ones
    assert len(t.first) + len(t.earlier) + len(t.latest) == len(events)  # nothing lost
    short = timeline(events[:8])
    assert short.earlier == [] and len(short.latest) == 7


# -- item 2: a model that cannot be used is refused in one plain line ------------------------


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("board:", "bad model 'board:': write PROVIDER:MODEL"),
        ("gpt4", "bad model 'gpt4': write PROVIDER:MODEL"),
        ("nobody:model-x", "unknown model provider 'nobody'"),
        ("anthropic:claude-x", "ANTHROPIC_API_KEY"),
        ("openai:gpt-4o-mini,gemini:gemini-2.5-flash", "API key"),
    ],
)
async def test_a_model_that_cannot_be_used_is_refused_plainly(
    server: Server, monkeypatch: pytest.MonkeyPatch, model: str, says: str
) -> None:
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GEMINI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ERRANDS_NO_KEYRING", "1")
    for key in (None, "k-1"):
        headers = {"Idempotency-Key": key} if key else {}
        r = await server.api.post(
            "/api/errands", json={"text": "hi", "model": model}, headers=headers
        )
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert says in detail and "\n" not in detail
        assert "pattern" not in detail and not detail.startswith("body.")
    assert await server.harness.store.list_errands() == []


@pytest.mark.parametrize("check", ["guard", "control"])
def test_the_schema_leaves_the_spec_to_the_one_check(check: str) -> None:
    schema: type[CreateErrand] = CreateErrand
    if check == "control":  # the pattern the schema had: its raw message, not the check's
        from pydantic import Field, ValidationError

        class Patterned(CreateErrand):
            model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+:\S")

        with pytest.raises(ValidationError, match="String should match pattern"):
            Patterned.model_validate({"text": "x", "model": "board:"})
        return
    assert schema.model_validate({"text": "x", "model": "board:"}).model is not None


@pytest.mark.parametrize("check", ["guard", "control"])
def test_the_start_form_suggests_only_specs_that_would_be_accepted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ERRANDS_NO_KEYRING", "1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789")
    from errands.config import ProviderSettings

    s = settings.model_copy(
        update={
            "default_model": "openai:gpt-4o-mini",
            "providers": {
                "board": ProviderSettings(base_url="http://127.0.0.1:9/v1", api_key_env="BOARD_KEY")
            },
        }
    )
    if check == "control":  # every candidate offered, as if each would be accepted
        monkeypatch.setattr(inbox_module, "_problem", lambda spec, settings: None)
        choices, _ = model_choices(s)
        assert "openai:gpt-4o-mini" in choices
        return
    choices, default_problem = model_choices(s)
    assert choices == ["scripted:demo", "anthropic:claude-sonnet-4-5"]
    assert not any(c.endswith(":") for c in choices)
    assert default_problem is not None and "OPENAI_API_KEY" in default_problem


# -- item 5: the edit form comes from the tool's argument roles ------------------------------


def email_tools() -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(
        effect=ev.EffectClass.external,
        roles={"to": "recipient", "cc": "recipient", "subject": "subject", "body": "body"},
    )
    def send_email(to: list[str], cc: list[str], subject: str, body: str) -> str:
        """Send an email.

        Args:
            to: Who it goes to.
            cc: Who gets a copy.
            subject: The subject line.
            body: The message.
        """
        return "sent"

    return reg


def test_an_email_is_edited_as_fields() -> None:
    tool = email_tools().get("send_email")
    args = {"to": ["ana@example.com"], "cc": [], "subject": "Friday", "body": "Hi Ana,\n\nSee you."}
    editor = editor_for(tool, args, None, "e1")
    fields = [(f.name, f.kind, f.label, f.value) for f in editor.fields]
    assert fields == [
        ("to", "list", "To", "ana@example.com"),
        ("cc", "list", "Cc", ""),
        ("subject", "line", "Subject", "Friday"),
        ("body", "text", "Body", "Hi Ana,\n\nSee you."),  # the text itself, not escaped JSON
    ]
    assert editor.disk is None


def test_a_request_is_edited_as_method_url_headers_and_body() -> None:
    tool = builtin.builtin_toolset().get("http_request")
    args = {"method": "POST", "url": "https://x.example/a", "headers": {"X-A": "1"}, "body": None}
    editor = editor_for(tool, args, None, "e1")
    by_name = {f.name: f for f in editor.fields}
    assert [f.name for f in editor.fields] == ["method", "url", "headers", "body"]
    assert by_name["headers"].kind == "pairs" and by_name["headers"].pairs == [("X-A", "1")]
    assert by_name["body"].kind == "text" and by_name["body"].nullable
    assert editor_for(None, args, None, "e1").fields == []  # an unknown tool: JSON only


def test_a_file_write_shows_what_the_file_holds_now(tmp_path: Path) -> None:
    tool = builtin.builtin_toolset().get("write_file")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.md").write_text("old line\n")
    editor = editor_for(tool, {"path": "notes.md", "content": "new line\n"}, ws, "e1")
    assert editor.disk == "old line\n" and editor.disk_note == "notes.md now"
    assert [(f.name, f.kind) for f in editor.fields] == [("path", "line"), ("content", "text")]
    fresh = editor_for(tool, {"path": "new.md", "content": "x"}, ws, "e1")
    assert fresh.disk == "" and "a new file" in fresh.disk_note


# -- item 6: the files page is confined to the workspace --------------------------------------


def naive_locate(workspace: Path, path: str, **kw: Any) -> Any:
    """The confinement taken out: the path opened as given, links followed."""
    from contextlib import contextmanager

    from errands.tools.workspace import Located

    @contextmanager
    def opened() -> Any:
        target = Path(os.path.abspath(workspace / path))
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            yield Located(dir_fd=fd, name=target.name, path=target, relative=path)
        finally:
            os.close(fd)

    return opened()


@pytest.mark.parametrize("check", ["guard", "control"])
def test_the_files_page_never_leaves_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    ws = tmp_path / "ws"
    (ws / "out").mkdir(parents=True)
    (ws / "out" / "report.md").write_text("# Report\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("the neighbour's password")
    (ws / "escape").symlink_to(tmp_path)
    (ws / "link.txt").symlink_to(secret)
    if check == "control":
        monkeypatch.setattr(file_tools, "locate_inside", naive_locate)
        assert read_workspace_file(ws, "e1", "escape/secret.txt").text == secret.read_text()
        assert read_workspace_file(ws, "e1", "../secret.txt").text == secret.read_text()
        return
    listing = list_workspace(ws)
    shown = {e.path: (e.kind, e.size, e.target) for e in listing.entries}
    assert shown == {
        "escape": ("link", None, str(tmp_path)),  # shown with its target, never walked into
        "link.txt": ("link", None, str(secret)),
        "out": ("dir", None, None),
        "out/report.md": ("file", 9, None),
    }
    assert read_workspace_file(ws, "e1", "out/report.md").text == "# Report\n"
    for path in ("escape/secret.txt", "../secret.txt", "link.txt", str(secret)):
        got = read_workspace_file(ws, "e1", path)
        assert got.text is None and got.status == 403 and "refused" in (got.problem or ""), path
    assert read_workspace_file(ws, "e1", "nothing.md").status == 404


async def test_the_files_page_lists_and_shows(
    server: Server, settings: Settings, tmp_path: Path
) -> None:
    ws = settings.home / "workspaces" / "mine"
    ws.mkdir(parents=True)
    (ws / "plan.md").write_text("1. <b>ask</b>\n")
    eid = await create_errand(
        server.harness.store, settings, "plan", model="scripted:demo", workspace=str(ws)
    )
    listed = await server.page(f"/errands/{eid}/files")
    assert listed.status_code == 200 and f"/errands/{eid}/files?path=plan.md" in listed.text
    shown = await server.page(f"/errands/{eid}/files", path="plan.md")
    assert "1. &lt;b&gt;ask&lt;/b&gt;" in shown.text  # escaped, never markup
    refused = await server.page(f"/errands/{eid}/files", path="../../etc/passwd")
    assert refused.status_code == 403 and "root:" not in refused.text
    assert (await server.page("/errands/e000nothing/files")).status_code == 404


# -- item 6: no price known is said, not shown as $0.0000 -------------------------------------


def test_no_price_known_is_said(settings: Settings) -> None:
    used = ev.Usage(input_tokens=1200, output_tokens=300)
    hint = price_hint("sim:gpt-sim", used, settings)
    assert hint == 'no price known for sim:gpt-sim: set [prices."sim:gpt-sim"] in errands.toml'
    assert price_hint("scripted:demo", used, settings) is None  # free, not unknown
    assert price_hint("sim:gpt-sim", ev.Usage(), settings) is None  # nothing used yet
    priced = used.model_copy(update={"cost_usd": 0.01})
    assert price_hint("sim:gpt-sim", priced, settings) is None
    configured = settings.model_copy(update={"prices": {"sim:gpt-sim": Price(input=0, output=0)}})
    assert price_hint("sim:gpt-sim", used, configured) is None  # priced (free, on purpose)
    assert price_hint("openai:gpt-4o-mini", used, settings) is None  # the database knows it
    chained = settings.model_copy(update={"chains": {"main": ["sim:a", "openai:gpt-4o-mini"]}})
    assert "sim:a" in (price_hint("chain:main", used, chained) or "")


async def test_the_costs_page(server: Server, settings: Settings) -> None:
    eid = await create_errand(server.harness.store, settings, "costly", model="scripted:demo")
    await server.run(eid)
    page = await server.page("/costs")
    assert page.status_code == 200
    assert (
        "by model" in page.text and "scripted:test" in page.text and f"/errands/{eid}" in page.text
    )
    assert "no price known" not in page.text  # the scripted model is free, not unknown
    assert (await server.page("/costs", days=7)).status_code == 200


# -- the marks never take a page down -------------------------------------------------------


def full_disk(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("check", ["guard", "control"])
async def test_pages_stand_while_the_marks_cannot_be_written(
    server: Server, settings: Settings, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    eid = await create_errand(server.harness.store, settings, "look", model="scripted:demo")
    path = settings.home / "server.sqlite"
    monkeypatch.setattr(marks_module, "_connect", full_disk)
    monkeypatch.setattr(marks_module, "_OPEN", {})  # (opened first on the full disk)
    if check == "control":  # the marks must open for a page to stand: it does not
        monkeypatch.setattr(Marks, "_try_open", lambda self: self._open())
        assert (await server.page(f"/errands/{eid}")).status_code == 503
        return
    for url in ("/", f"/errands/{eid}", "/?show=archived"):
        assert (await server.page(url)).status_code == 200, url  # read as none
    r = await server.api.post(f"/api/errands/{eid}/archive", json={})
    assert r.status_code == 503 and r.json()["condition"] == "disk_full"
    monkeypatch.undo()  # the disk has room again: the marks open, and work
    monkeypatch.setattr(marks_module, "_OPEN", {})
    r = await server.api.post(f"/api/errands/{eid}/archive", json={})
    assert r.status_code == 200 and Marks(path).archived() == {eid}
