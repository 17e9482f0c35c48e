"""The shell's output, live: streamed while the command runs, redacted like the result.

In real bubblewrap, a command that prints over time reaches ``ToolContext.on_output``
before it ends. A declared secret the command prints -- whole, or in two writes split
mid-value with a pause between -- never reaches the live view; the controls: a live view
that redacts each read on its own (the split secret's second half gets through) and one
without redaction (the whole secret gets through). Through a real ``errands up``, a
real SSE client reads the ``output`` events before the call's result, redacted; the hub
gives a stream opened mid-call the latest output and drops what a slow one cannot hold;
in Debian's Chromium the errand page shows the output while the command runs and puts
it away when the result arrives; ``errands resume`` prints it in the terminal.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api
import pytest
from conftest import CLI
from helpers.browser import ARGS, CHROMIUM, TIMEOUT_MS
from helpers.kit import call as kit_call
from helpers.kit import write_script
from helpers.server import ServerProc, clean_env, free_port, write_config
from seams import child_env
from seams.shell_controls import no_redaction
from sim.core import Turn, call
from sim.openai_server import OpenAIChatSim
from test_text_reset import sse

from errands.config import load_settings
from errands.server.hub import MAX_BUFFERED_OUTPUT, Hub
from errands.tools.builtin.shell import make_shell_tool
from errands.tools.sandbox.egress import RedactorFactory
from errands.tools.sandbox.live import LiveOutput, LiveStream
from errands.tools.sandbox.secrets import secret_redactor
from errands.tools.tool import ToolContext

SECRET = "Live+9c2e/7a41=S3cr3t!q"
ENV = "LIVE_CANARY_VALUE"  # not *_KEY/_TOKEN: only the shell's redaction stands in the way
TICKS = "for i in 1 2 3; do echo tick $i; sleep 0.4; done; echo done >&2"
# the secret in two writes, cut mid-value, with a pause: two reads of the pipe
SPLIT = 'printf "%s" "${DEPLOY:0:11}"; sleep 0.3; printf "%s\\n" "${DEPLOY:11}"; echo whole $DEPLOY'


class CutAnywhere(LiveStream):
    """The control: hands on each read as it comes, redacted on its own."""

    def safe_cut(self, text: str) -> int:
        return len(text)


class EachReadAlone(LiveOutput):
    stream_class = CutAnywhere


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[float, str, str]] = []

    def __call__(self, stream: str, text: str) -> None:
        self.got.append((time.monotonic(), stream, text))

    def text(self, stream: str) -> str:
        return "".join(t for _, s, t in self.got if s == stream)


def pieces(secret: str, size: int = 6) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.fixture
def configured(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (home / "errands.toml").write_text(f'[secrets.DEPLOY]\nenv = "{ENV}"\nhosts = ["localhost"]\n')
    monkeypatch.setenv(ENV, SECRET)
    (home / "ws").mkdir()
    return home


async def run_live(
    home: Path,
    command: str,
    live: type[LiveOutput] = LiveOutput,
    redactor: RedactorFactory = secret_redactor,
    secrets: list[str] | None = None,
) -> tuple[Recorder, str, float]:
    tool = make_shell_tool(live=live, redactor=redactor)
    seen = Recorder()
    ctx = ToolContext("e1", 1, "k", home / "ws", settings=load_settings(home), on_output=seen)
    args = tool.validate({"command": command, "secrets": secrets or [], "timeout_s": 30})
    out = await tool.invoke(args, ctx)
    return seen, out.text, time.monotonic()


async def test_the_output_arrives_while_the_command_runs(configured: Path) -> None:
    seen, result, ended = await run_live(configured, TICKS)
    assert seen.text("stdout") == "tick 1\ntick 2\ntick 3\n"
    assert seen.text("stderr") == "done\n"
    first = next(at for at, s, t in seen.got if "tick 1" in t)
    assert ended - first > 0.4  # shown while it ran (two more ticks of 0.4 s followed)
    assert len([1 for _, s, _ in seen.got if s == "stdout"]) >= 3  # not only at the end
    (_, last, status) = seen.got[-1]
    assert last == "exit" and status.startswith("exit code 0") and status in result
    assert "tick 3" in result  # the result is still the whole record


@pytest.mark.parametrize(
    ("live", "redactor"),
    [(LiveOutput, secret_redactor), (EachReadAlone, secret_redactor), (LiveOutput, no_redaction)],
    ids=["redacted", "CONTROL-each-read-alone", "CONTROL-no-redaction"],
)
async def test_a_secret_never_reaches_the_live_view(
    configured: Path, live: type[LiveOutput], redactor: RedactorFactory
) -> None:
    seen, result, _ = await run_live(configured, SPLIT, live, redactor, ["DEPLOY"])
    shown = seen.text("stdout")
    leaked = [p for p in pieces(SECRET) if p in shown]
    if redactor is no_redaction:  # control: the whole secret is shown
        assert SECRET in shown
        return
    if live is EachReadAlone:  # control: the half after the pause gets through
        assert SECRET[11:] in shown and leaked, shown
        return
    assert leaked == [], shown
    assert shown.count("[REDACTED:DEPLOY]") == 2, shown  # the split one and the whole one
    assert [p for p in pieces(SECRET) if p in result] == []


def test_a_line_without_a_newline_is_cut_only_where_no_secret_spans() -> None:
    got: list[str] = []
    redact = secret_redactor({"DEPLOY": SECRET})
    stream = LiveStream("stdout", lambda _, t: got.append(t), redact, [SECRET])
    filler = "x" * 5000  # past LONG_LINE: cut up without a newline
    for part in (filler, SECRET[:9], SECRET[9:], filler):
        stream.feed(part.encode())
    assert got  # some went out before the end
    stream.close()
    shown = "".join(got)
    assert [p for p in pieces(SECRET) if p in shown] == []
    assert shown == filler + "[REDACTED:DEPLOY]" + filler


async def test_the_hub_replays_a_running_call_and_caps_a_slow_viewer() -> None:
    class NoStore:
        def subscribe(self, fn: Any) -> None:
            return None

    hub = Hub(NoStore())  # type: ignore[arg-type]
    hub.output("e1", 5, "stdout", "early\n")
    with hub.subscribe("e1") as sub:
        assert [p.text for p in hub.recent_output("e1")] == ["early\n"]  # a late viewer
        for _ in range(3):
            hub.output("e1", 5, "stdout", "y" * (MAX_BUFFERED_OUTPUT // 2))
        hub.output("e1", 5, "exit", "exit code 0 (1.0 s)")
        taken = sub.take_outputs()
    assert [p.stream for p in taken] == ["stdout", "exit", "dropped"]  # merged, capped
    assert len(taken[0].text) == MAX_BUFFERED_OUTPUT
    assert taken[2].text == f"[{MAX_BUFFERED_OUTPUT // 2} characters not shown]"
    assert hub.recent_output("e1") == []  # the call ended: nothing to replay


def start(
    home: Path,
    sim: OpenAIChatSim,
    command: str,
    args: tuple[str, ...] = (),
    controls: tuple[str, ...] = (),
) -> ServerProc:
    """``errands up`` (with *args*: ``--workers N``) where the sim runs *command* in the
    shell, then says "It ran."; *controls*: negative controls its processes install."""
    write_config(
        home,
        f'[providers.sim]\nkind = "openai"\nbase_url = "{sim.base_url}"\n'
        f'api_key_env = "LIVE_SIM_KEY"\n[secrets.DEPLOY]\nenv = "{ENV}"\nhosts = ["localhost"]',
    )
    sim.script(
        Turn(tool_calls=(call("shell", {"command": command, "secrets": ["DEPLOY"]}),)),
        "It ran.",
    )
    env = clean_env(home, LIVE_SIM_KEY=sim.api_key, **{ENV: SECRET})
    if controls:
        env = child_env(env, controls=controls)
    return ServerProc(home, port=free_port(), env=env, args=list(args)).start()


def first_output(server: ServerProc, errand_id: str) -> dict[str, Any]:
    """The first ``output`` event a stream opened now is sent."""
    with server.client() as api, api.stream("GET", f"/api/errands/{errand_id}/stream") as s:
        return next(data for kind, data in sse(s) if kind == "output")


def follow(server: ServerProc) -> list[tuple[float, str, Any]]:
    """Start the errand, follow its stream (approving its call) until it is done: every
    SSE event with when it came; a stream opened mid-call's first output, as "late"."""
    seen: list[tuple[float, str, Any]] = []
    late: list[dict[str, Any]] = []
    with server.client() as api:
        r = api.post("/api/errands", json={"text": "run it", "model": "sim:gpt-sim"})
        assert r.status_code == 201, r.text
        errand_id = r.json()["id"]
        with api.stream("GET", f"/api/errands/{errand_id}/stream") as stream:
            for kind, data in sse(stream):
                seen.append((time.monotonic(), kind, data))
                if kind == "output" and "tick 2" in data["text"] and not late:
                    late.append(first_output(server, errand_id))  # a page opened now
                if kind == "event" and data["event"]["type"] == "approval_requested":
                    [approval] = api.get(f"/api/errands/{errand_id}").json()["approvals"]
                    r = api.post(
                        f"/api/approvals/{approval['id']}/approve",
                        json={"args_hash": approval["args_hash"]},
                    )
                    assert r.status_code == 200, r.text
                if kind == "view" and data["status"] == "done":
                    break
    seen.extend((0.0, "late", d) for d in late)
    return seen


@pytest.mark.parametrize(
    "args", [("--workers", "0"), ("--workers", "2")], ids=["in-process", "workers"]
)
def test_a_real_sse_client_reads_the_output_before_the_result(
    tmp_path: Path, openai_sim: OpenAIChatSim, args: tuple[str, ...]
) -> None:
    """In the server's process, and from a worker through its relay (the same frames)."""
    server = start(tmp_path / "home", openai_sim, TICKS + "; " + SPLIT, args)
    try:
        seen = follow(server)
    finally:
        server.kill()
    late = [d for _, k, d in seen if k == "late"]
    outputs = [(at, d) for at, k, d in seen if k == "output"]
    [(result_at, result)] = [
        (at, d["event"])
        for at, k, d in seen
        if k == "event" and d["event"]["type"] == "tool_result"
    ]
    stdout = "".join(d["text"] for _, d in outputs if d["stream"] == "stdout")
    assert stdout.startswith("tick 1\ntick 2\ntick 3\n"), stdout
    first = next(at for at, d in outputs if "tick 1" in d["text"])
    assert result_at - first > 0.4  # live: well before the result was logged
    assert {d["seq"] for _, d in outputs} == {result["intent_seq"]}
    assert outputs[-1][1]["stream"] == "exit"
    assert stdout.count("[REDACTED:DEPLOY]") == 2
    everything = json.dumps([d for _, _, d in seen])
    assert [p for p in pieces(SECRET) if p in everything] == []
    assert late[0]["replay"] and late[0]["text"].startswith("tick 1\ntick 2")  # caught up
    assert "tick 3" in result["content"]["text"]  # the record: the result, no event a line
    kinds = [d["event"]["type"] for _, k, d in seen if k == "event"]
    assert kinds.count("tool_result") == 1 and len(kinds) < 12, kinds
    # the model's reply streamed as it came, before its event was logged
    text_at = [at for at, k, _ in seen if k == "text"]
    [(reply_at, _)] = [
        (at, d)
        for at, k, d in seen
        if k == "event" and d["event"]["type"] == "model_responded" and at > result_at
    ]
    assert "".join(d["delta"] for _, k, d in seen if k == "text") == "It ran."
    assert text_at and text_at[0] <= reply_at


expect = playwright_api.expect


def test_the_errand_page_shows_the_output_while_it_runs(
    tmp_path: Path, openai_sim: OpenAIChatSim
) -> None:
    if not os.path.exists(CHROMIUM):  # a missing browser is a failure, never a skip
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    slow = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.5; done"
    server = start(tmp_path / "home", openai_sim, slow)
    try:
        with server.client() as api:
            r = api.post("/api/errands", json={"text": "run it", "model": "sim:gpt-sim"})
            errand_id = r.json()["id"]
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server.url}/errands/{errand_id}")
            card = page.locator("#errand-approvals article.approval")
            expect(card).to_have_count(1)
            expect(page.locator("#live.on")).to_have_count(1)
            card.locator("[data-action=approve]").click()
            box = page.locator("#live-output")
            expect(box.locator(".out")).to_contain_text("line 2")
            expect(box).to_be_visible()
            assert "line 6" not in box.locator(".out").inner_text()  # still running
            shots = os.environ.get("SCREENSHOTS_DIR")  # (docs/img: docs/server.md's picture)
            if shots:
                page.screenshot(path=str(Path(shots) / "shell-live-output.png"), full_page=True)
            expect(page.locator("li.ev-result")).to_contain_text("line 6")
            expect(box).to_be_hidden()  # the result holds it now
            browser.close()
    finally:
        server.kill()
    assert errors == []


def test_errands_resume_prints_the_output_as_it_comes(cli: CLI, tmp_path: Path) -> None:
    """In the terminal (errands run/resume in the foreground): each line under a rule, as
    the command prints it, an escape sequence shown and not obeyed."""
    spec = write_script(
        tmp_path / "ticks.json",
        {"tool_calls": [kit_call("shell", command=TICKS + "; printf 'esc \\033[2J end\\n'")]},
        {"text": "ticked"},
    )
    assert cli("run", "tick", "--model", spec).returncode == 3  # no terminal: it waits
    (pending,) = json.loads(cli("approvals", "--json").stdout)
    assert cli("approve", pending["id"]).returncode == 0
    r = cli("resume", pending["errand_id"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    ticks = [i for i, line in enumerate(lines) if line.strip().startswith("│ tick")]
    assert [lines[i].split("│ ")[1] for i in ticks] == ["tick 1", "tick 2", "tick 3"], r.stdout
    assert any("│ esc \\x1b[2J end" in line for line in lines), r.stdout  # shown, not obeyed
    assert "\x1b[2J" not in r.stdout
