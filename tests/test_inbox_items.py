"""Issue 14 in a real browser (Debian's Chromium through Playwright) against one real
`errands up` for the module: the Start form refuses a model it cannot use in one plain
line (item 2); an email, a request and a file write are approved from fields, not
escaped JSON (item 5); the errand list shows outcomes, unread markers, filters and
archive, a long timeline folds, an errand has a files page and the costs a page that
says where no price is known (item 6); an errand stopped at its step limit is continued
from the inbox, its Reply box put away meanwhile (item 7).

The server: ``[limits] max_steps = 3``; a ``send_email`` tool from ``[tools] modules``
(tests/helpers/outbox_tools.py, which writes what it sends to a file); a provider
``sim`` (the OpenAI simulator, a model with no known price) and a provider ``board``
whose key is not set; a policy that asks before ``write_file``. Screenshots go to
``tests/artifacts/inbox/`` (ignored by git).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_api
import pytest
from helpers.browser import ARGS, CHROMIUM, TIMEOUT_MS
from helpers.kit import call, write_script
from helpers.server import (
    ServerProc,
    Sink,
    clean_env,
    free_port,
    post_script,
    wait_for,
    write_config,
)
from sim.openai_server import OpenAIChatSim

expect = playwright_api.expect

TESTS = Path(__file__).parent
SHOTS = TESTS / "artifacts" / "inbox"

POLICY = """
[[rules]]
name = "ask-before-writing"
tool = "write_file"
decision = "ask"
reason = "a person looks at file writes in these tests"
"""


@dataclass
class Up:
    proc: ServerProc
    outbox: Path
    sim: OpenAIChatSim
    sink: Sink
    scripts: Path

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def home(self) -> Path:
        return self.proc.home

    def api(self) -> httpx.Client:
        return self.proc.client()

    def start(self, text: str, model: str, **extra: Any) -> str:
        with self.api() as api:
            r = api.post("/api/errands", json={"text": text, "model": model, **extra})
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

    def errand(self, errand_id: str) -> dict[str, Any]:
        with self.api() as api:
            data: dict[str, Any] = api.get(f"/api/errands/{errand_id}").json()
        return data

    def status(self, errand_id: str) -> str:
        return str(self.errand(errand_id)["status"])

    def script(self, name: str, *turns: dict[str, Any]) -> str:
        return write_script(self.scripts / f"{name}.json", *turns)

    def sent(self) -> list[dict[str, Any]]:
        if not self.outbox.exists():
            return []
        return [json.loads(line) for line in self.outbox.read_text().splitlines()]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):  # a missing browser is a failure, never a skip
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    base = tmp_path_factory.mktemp("inbox-items")
    home = base / "home"
    sink = Sink()
    with OpenAIChatSim() as sim:
        write_config(
            home,
            "[limits]\nmax_steps = 3\n\n"
            '[tools]\nmodules = ["helpers.outbox_tools"]\n\n'
            f'[providers.sim]\nkind = "openai"\nbase_url = "{sim.base_url}"\n'
            'api_key_env = "INBOX_SIM_KEY"\n\n'
            '[providers.board]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
            'api_key_env = "BOARD_KEY"\n',
        )
        (home / "policy.toml").write_text(POLICY)
        outbox = base / "outbox.jsonl"
        env = clean_env(
            home,
            INBOX_SIM_KEY=sim.api_key,
            PYTHONPATH=str(TESTS),
            ERRANDS_TEST_OUTBOX=str(outbox),
        )
        proc = ServerProc(home, port=free_port(), env=env).start()
        scripts = base / "scripts"
        scripts.mkdir()
        try:
            yield Up(proc, outbox, sim, sink, scripts)
        finally:
            proc.kill()
            sink.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == []  # no script errors on any page


def shot(page: Any, name: str, *, full: bool = True, target: Any = None) -> Path:
    """Keep what the page looked like (tests/artifacts/inbox/NAME.png)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    if target is not None:  # (the sticky top bar would cover the element's top)
        page.evaluate("document.querySelector('header.top').style.position = 'static'")
        target.screenshot(path=str(path))
        page.evaluate("document.querySelector('header.top').style.position = ''")
    else:
        page.screenshot(path=str(path), full_page=full)
    return path


def count_errands(up: Up) -> int:
    with up.api() as api:
        return len(api.get("/api/errands", params={"limit": 1000}).json())


# -- item 2: the Start form --------------------------------------------------------------------


def test_the_start_form_says_in_one_line_why_a_model_cannot_be_used(page: Any, up: Up) -> None:
    page.goto(up.url)
    offered: list[str] = page.eval_on_selector_all("#models option", "os => os.map(o => o.value)")
    # only complete specs that would be accepted: no "board:" (its key is not set), no
    # "openai:gpt-4o-mini" (no OPENAI_API_KEY on this machine)
    assert offered == ["scripted:demo"], offered
    before = count_errands(up)
    error = page.locator("#start-form .error")
    page.fill("#start-form textarea[name=text]", "Post the weekly note")
    for model, says in [
        (
            "board:",
            "bad model 'board:': write PROVIDER:MODEL, e.g. openai:gpt-4o-mini or scripted:demo",
        ),
        ("board:notes", "provider 'board' reads its key from $BOARD_KEY, which is not set"),
        ("openai:gpt-4o-mini", "no API key for OpenAI: set OPENAI_API_KEY"),
    ]:
        page.fill("#start-form input[name=model]", model)
        page.click("#start-form button[type=submit]")
        expect(error).to_contain_text(says)
        text = error.inner_text()
        assert "\n" not in text and "pattern" not in text and not text.startswith("body.")
    shot(page, "start-form-missing-key", target=page.locator("section.composer"))
    assert page.url.rstrip("/") == up.url  # still here: nothing was started
    assert count_errands(up) == before


# -- item 5: an action is edited in fields its tool declares -----------------------------------

BLOCK_FIELDS = """
window.__block = (e) => { if (e.target.closest(".fields")) e.stopImmediatePropagation(); };
document.addEventListener("input", window.__block, true);
"""
UNBLOCK_FIELDS = 'document.removeEventListener("input", window.__block, true);'


def test_an_email_is_approved_from_its_fields(page: Any, up: Up) -> None:
    body = "Hi Ana,\n\nSee you on Friday at 7.\n\nBen"
    spec = up.script(
        "mail",
        {
            "text": "I drafted the note to Ana.",
            "tool_calls": [
                call("send_email", to=["ana@example.com"], cc=[], subject="Friday", body=body)
            ],
        },
        {"text": "Sent."},
    )
    errand_id = up.start("Tell Ana about Friday", spec)
    page.goto(f"{up.url}/errands/{errand_id}")
    card = page.locator("#errand-approvals article.approval")
    expect(card).to_have_count(1)
    card.locator("[data-action=edit]").click()
    to, cc = card.locator("input[data-arg=to]"), card.locator("input[data-arg=cc]")
    subject, text = card.locator("input[data-arg=subject]"), card.locator("textarea[data-arg=body]")
    raw = card.locator("textarea.edit-args")
    expect(to).to_have_value("ana@example.com")
    expect(subject).to_have_value("Friday")
    expect(text).to_have_value(body)  # plain text with its line breaks, no \n escapes

    # control: with the fields' edits kept from the page's script, the arguments it
    # would approve stay as they were -- the form is what carries an edit
    page.evaluate(BLOCK_FIELDS)
    text.fill("changed, but not carried")
    assert json.loads(raw.input_value())["body"] == body
    page.evaluate(UNBLOCK_FIELDS)

    edited = "Hi Ana,\n\nSaturday suits better: see you at 7.\n\nBen"
    text.fill(edited)
    subject.fill("Saturday instead")
    cc.fill("bo@example.com,  cy@example.com")
    assert json.loads(raw.input_value()) == {
        "to": ["ana@example.com"],
        "cc": ["bo@example.com", "cy@example.com"],
        "subject": "Saturday instead",
        "body": edited,
    }
    shot(page, "approval-email-fields", target=card)
    card.locator("[data-action=approve]").click()
    expect(card).to_have_count(0)
    expect(page.locator(".errand-head .state")).to_have_text("done")
    sent = [s for s in up.sent() if s["errand"] == errand_id]
    assert [(s["subject"], s["body"], s["cc"]) for s in sent] == [
        ("Saturday instead", edited, ["bo@example.com", "cy@example.com"])
    ]


def test_a_request_is_approved_from_method_url_headers_and_body(page: Any, up: Up) -> None:
    spec = post_script(up.scripts / "post.json", f"{up.sink.url}/board", body="draft")
    errand_id = up.start("Post the note", spec)
    page.goto(f"{up.url}/errands/{errand_id}")
    card = page.locator("#errand-approvals article.approval")
    card.locator("[data-action=edit]").click()
    expect(card.locator("input[data-arg=method]")).to_have_value("POST")
    url = card.locator("input[data-arg=url]")
    expect(url).to_have_value(f"{up.sink.url}/board")
    card.locator("[data-action=add-pair]").click()
    card.locator(".pair .pair-name").fill("X-Note")
    card.locator(".pair .pair-value").fill("weekly")
    card.locator("textarea[data-arg=body]").fill("the edited note\nsecond line")

    url.fill("not a url")  # refused by the server: its reason is shown on the card
    card.locator("[data-action=approve]").click()
    expect(card.locator(".error")).to_be_visible()
    assert card.locator(".error").inner_text().strip()
    expect(card).to_have_count(1)
    shot(page, "approval-request-fields-refused", target=card)

    url.fill(f"{up.sink.url}/board")
    card.locator("[data-action=approve]").click()
    expect(card).to_have_count(0)
    expect(page.locator(".errand-head .state")).to_have_text("done")
    assert ("/board", "the edited note\nsecond line") in [
        (e["path"], e["body"]) for e in up.sink.effects
    ]
    grants = [e["event"] for e in up.errand(errand_id)["events"]]
    edited = [e["edited_arguments"] for e in grants if e["type"] == "approval_granted"]
    assert edited[0]["headers"] == {"X-Note": "weekly"}


def test_the_editor_shows_the_policys_decision_for_the_edit(page: Any, up: Up) -> None:
    """Issue 13, item 1: the card shows the new decision before the yes."""
    policy = up.home / "policy.toml"
    policy.write_text(
        policy.read_text()
        + '\n[[rules]]\nname = "never-prod"\ntool = "http_request"\n'
        + 'args = { url = "https://prod.example.com/*" }\ndecision = "deny"\n'
        + 'reason = "production is off limits"\n'
    )
    time.sleep(2.5)  # every running process re-reads a changed policy within 2 s
    spec = post_script(up.scripts / "post-prod.json", f"{up.sink.url}/board", body="x")
    errand_id = up.start("Post somewhere", spec)
    page.goto(f"{up.url}/errands/{errand_id}")
    card = page.locator("#errand-approvals article.approval")
    card.locator("[data-action=edit]").click()
    line = card.locator(".edit-decision")
    expect(line).to_contain_text("ask")
    card.locator("input[data-arg=url]").fill("HTTPS://PROD.example.com./admin")
    expect(line).to_contain_text("deny")
    expect(line).to_contain_text("never-prod")
    shot(page, "approval-edit-decision-deny", target=card)
    card.locator("[data-action=approve]").click()
    expect(card.locator(".error")).to_contain_text("never-prod")  # refused, nothing ran
    expect(card).to_have_count(1)


def test_a_file_write_shows_the_file_beside_the_new_content(page: Any, up: Up) -> None:
    ws = up.home / "workspaces" / "notes"
    ws.mkdir(parents=True)
    (ws / "notes.md").write_text("- milk\n- eggs\n")
    spec = up.script(
        "write",
        {
            "text": "Adding bread.",
            "tool_calls": [
                call("write_file", path="notes.md", content="- milk\n- eggs\n- bread\n")
            ],
        },
        {"text": "Updated the list."},
    )
    errand_id = up.start("Add bread to my list", spec, workspace=str(ws))
    page.goto(f"{up.url}/errands/{errand_id}")
    card = page.locator("#errand-approvals article.approval")
    expect(card.locator(".preview .diff-add")).to_contain_text("+- bread")
    card.locator("[data-action=edit]").click()
    expect(card.locator(".compare .disk-text")).to_have_text("- milk\n- eggs\n")
    content = card.locator("textarea[data-arg=content]")
    expect(content).to_have_value("- milk\n- eggs\n- bread\n")
    content.fill("- milk\n- bread\n- butter\n")
    shot(page, "approval-write-compare", target=card)
    card.locator("[data-action=approve]").click()
    expect(page.locator(".errand-head .state")).to_have_text("done")
    assert (ws / "notes.md").read_text() == "- milk\n- bread\n- butter\n"


# -- item 6: the errand list ----------------------------------------------------------------


def row(page: Any, errand_id: str) -> Any:
    return page.locator(f".errand-row[data-errand-id='{errand_id}']")


def test_the_list_shows_outcomes_unread_filters_and_archive(page: Any, up: Up) -> None:
    booked = up.start(
        "Book a table for Friday",
        up.script(
            "booked",
            {"text": "Booked: Friday 7pm at Luigi's, table for four.\nThey hold it 15 minutes."},
            {"text": "You're welcome: enjoy Friday."},
        ),
    )
    waiting = up.start("Post it", post_script(up.scripts / "wait.json", f"{up.sink.url}/w"))
    stuck = up.start(
        "Look around",
        up.script("stuck", *[{"tool_calls": [call("list_files")]} for _ in range(5)]),
    )
    wait_for(lambda: up.status(booked) == "done" and up.status(stuck) == "failed")
    wait_for(lambda: up.status(waiting) == "waiting_approval")
    with up.api() as api:  # the booked errand is the most recently active one now
        assert (
            api.post(f"/api/errands/{booked}/messages", json={"text": "thanks"}).status_code == 201
        )
    wait_for(lambda: up.errand(booked)["result"] == "You're welcome: enjoy Friday.")

    page.goto(up.url)
    ours = {booked, waiting, stuck}
    listed = [
        i
        for i in page.eval_on_selector_all(".errand-row", "rs => rs.map(r => r.dataset.errandId)")
        if i in ours
    ]
    assert listed[0] == booked  # by last activity, not by creation
    expect(row(page, booked).locator(".headline")).to_have_text("You're welcome: enjoy Friday.")
    expect(row(page, waiting).locator(".headline")).to_have_text(
        "waits for your approval: http_request"
    )
    expect(row(page, stuck).locator(".headline")).to_have_text(
        "failed: step limit reached (3 of 3 model turns) · open it to continue with more steps"
    )
    for errand_id in ours:  # never opened
        expect(row(page, errand_id)).to_have_class("errand-row unread")
    shot(page, "list-outcomes-unread", target=page.locator("#errands"))

    row(page, booked).locator("a.title").click()
    page.wait_for_url(f"{up.url}/errands/{booked}")
    page.go_back()
    expect(row(page, booked)).to_have_class("errand-row")  # read now
    expect(row(page, stuck)).to_have_class("errand-row unread")

    page.click("nav.filters a[data-show=waiting]")
    expect(row(page, waiting)).to_have_count(1)
    expect(row(page, booked)).to_have_count(0)
    expect(row(page, stuck)).to_have_count(0)
    page.click("nav.filters a[data-show=failed]")
    expect(row(page, stuck)).to_have_count(1)
    expect(row(page, waiting)).to_have_count(0)

    row(page, stuck).locator("[data-action=archive]").click()
    expect(row(page, stuck)).to_have_count(0)
    page.click("nav.filters a[data-show=all]")
    expect(row(page, booked)).to_have_count(1)
    expect(row(page, stuck)).to_have_count(0)
    page.click("nav.filters a[data-show=archived]")
    expect(row(page, stuck)).to_have_count(1)
    expect(row(page, stuck).locator("[data-action=unarchive]")).to_be_visible()
    shot(page, "list-archived", target=page.locator("#errands"))
    with up.api() as api:
        archived = [e["id"] for e in api.get("/api/errands", params={"archived": "true"}).json()]
    assert archived == [stuck]


# -- items 7 and 6: continue at the step limit; a long timeline folds --------------------------


def test_continue_at_the_step_limit_then_the_long_timeline_folds(page: Any, up: Up) -> None:
    turns = [{"tool_calls": [call("list_files")]} for _ in range(49)] + [
        {"text": "Listed 49 times."}
    ]
    errand_id = up.start("List the files, many times", up.script("fifty", *turns))
    wait_for(lambda: up.status(errand_id) == "failed")
    page.goto(f"{up.url}/errands/{errand_id}")
    dead_end = page.locator("#dead-end")
    expect(dead_end).to_contain_text("step limit reached (3 of 3 model turns)")
    expect(dead_end).to_contain_text("A reply cannot continue it")
    expect(page.locator("#reply-section")).to_be_hidden()  # no Reply box that fails at once
    page.fill("#dead-end input[name=more_steps]", "60")
    expect(dead_end.locator("button[data-action=continue]")).to_have_text(
        "Continue with 60 more steps"
    )
    shot(page, "dead-end-continue")
    dead_end.locator("button[data-action=continue]").click()
    expect(page.locator(".errand-head .state")).to_have_text("done", timeout=60_000)
    expect(page.locator("#dead-end")).to_have_count(0)
    expect(page.locator("#reply-section")).to_be_visible()
    raised = [e["event"] for e in up.errand(errand_id)["events"]]
    assert [(e["more_steps"], e["channel"]) for e in raised if e["type"] == "limits_raised"] == [
        (60, "inbox")
    ]

    page.reload()
    expect(page.locator("#earlier > summary")).to_have_text("44 earlier steps (show them)")
    expect(page.locator(".final .text")).to_have_text("Listed 49 times.")
    expect(page.locator("#timeline > li.ev-model")).to_have_count(6)  # the latest steps
    folded = page.evaluate("document.documentElement.scrollHeight")
    shot(page, "long-timeline-folded")
    page.click("#earlier > summary")  # control: every step open, as the page used to be
    unfolded = page.evaluate("document.documentElement.scrollHeight")
    print(f"\n50-step errand page: {folded} px folded, {unfolded} px unfolded")
    assert folded < 4000 < unfolded


# -- item 6: the files page, the costs page ----------------------------------------------------


def test_the_files_page_shows_the_workspace_and_nothing_outside(page: Any, up: Up) -> None:
    ws = up.home / "workspaces" / "report"
    (ws / "out").mkdir(parents=True)
    (ws / "out" / "report.md").write_text("# Weekly report\n\n<script>alert(1)</script>\n")
    outside = up.home.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("the neighbour's wifi password")
    (ws / "escape").symlink_to(outside)
    errand_id = up.start(
        "Write the report",
        up.script("report", {"text": "The report is in out/."}),
        workspace=str(ws),
    )
    page.goto(f"{up.url}/errands/{errand_id}")
    page.click(".errand-head a.files-link")
    page.wait_for_url(f"{up.url}/errands/{errand_id}/files")
    expect(page.locator("tr.entry-link")).to_contain_text(
        f"escape → {outside} (a link, not followed)"
    )
    shot(page, "files-list")
    page.click("text=out/report.md")
    expect(page.locator("pre.file-text")).to_have_text(
        "# Weekly report\n\n<script>alert(1)</script>\n"  # shown as text, never run
    )
    for path in ("escape/secret.txt", "../../outside/secret.txt"):
        r = httpx.get(f"{up.url}/errands/{errand_id}/files", params={"path": path})
        assert r.status_code == 403 and "wifi password" not in r.text, path
    page.goto(f"{up.url}/errands/{errand_id}/files?path=escape/secret.txt")
    expect(page.locator(".files .error")).to_contain_text("refused")
    shot(page, "files-refused")


def test_the_costs_page_and_no_price_known(page: Any, up: Up) -> None:
    up.sim.script("The answer is 42.")
    errand_id = up.start("What is the answer?", "sim:gpt-sim")
    free = up.start("Say hello", up.script("free", {"text": "Hello."}))  # free, not unknown
    wait_for(lambda: up.status(errand_id) == "done" and up.status(free) == "done")
    hint = 'no price known for sim:gpt-sim: set [prices."sim:gpt-sim"] in errands.toml'
    page.goto(f"{up.url}/errands/{errand_id}")
    expect(page.locator(".errand-head .cost")).to_have_text(hint)  # not $0.0000
    page.goto(up.url)
    expect(row(page, errand_id).locator(".meta")).to_contain_text(hint)
    page.click("a.costs-link")
    page.wait_for_url(f"{up.url}/costs")
    by_model = page.locator("table[data-table='by model']")
    expect(by_model.locator("tr", has_text="gpt-sim").locator(".usd")).to_contain_text(
        "no price known for"
    )
    expect(by_model.locator("tr", has_text="scripted:").first.locator(".usd")).to_have_text(
        "$0.0000"
    )
    by_errand = page.locator("table[data-table='by errand'] tr", has_text="What is the answer?")
    expect(by_errand.locator(".usd")).to_have_text(hint)
    expect(page.locator("#cost-total .no-price")).to_be_visible()
    shot(page, "costs")
