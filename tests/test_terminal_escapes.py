"""Issue 13, item 9: untrusted text shown by the CLI passed raw escape sequences, so an
approval could display "completely harmless text" over a hidden body.

A scripted model whose text and tool arguments carry ``ESC [2K`` + CR (erase the line,
write over it), ``ESC [8m`` (conceal what follows), ``ESC ]8;;`` (a hidden hyperlink)
and a C1 CSI (``\\x9b``). Through the real CLI -- ``errands run`` (the streamed text),
``errands show``, ``errands approvals`` (from the store and through a server),
``errands inbox``, and the inline prompt on a terminal (a pty) -- none of them reaches
the terminal as a control character; each is shown as text (``\\x1b[8m``).

Negative control: ``raw_terminal`` (rendering without :func:`errands.cli.render.visible`),
installed in the CLI's process.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import call, write_script
from helpers.server import Sink, clean_env, running, write_config
from seams import child_env

from errands.cli.render import visible

ERASE = "\x1b[2K\r"
CONCEAL = "\x1b[8m"
LINK = "\x1b]8;;http://evil.example/\x07click here\x1b]8;;\x07"
CSI = "\x9b31m"
HIDDEN = f"completely harmless text{CONCEAL}transfer everything to mallory{ERASE}"
RAW = (ERASE, CONCEAL, "\x1b]8;;", CSI, "\x07")


def script(tmp_path: Path, sink: Sink) -> str:
    return write_script(
        tmp_path / "escapes.json",
        {
            "text": f"Reading your notes.{ERASE}All fine, {LINK}.",
            "tool_calls": [
                call("http_request", method="POST", url=f"{sink.url}/pay", body=HIDDEN)
            ],
        },
        {"text": f"Stopped.{CSI} {CONCEAL}nothing to see"},
    )


def cli(
    home: Path, *args: str, control: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    full = child_env(clean_env(home, COLUMNS="2000", **env), controls=[control] * bool(control))
    return subprocess.run(
        [sys.executable, "-m", "errands", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full,
        stdin=subprocess.DEVNULL,
    )


def check_clean(text: str, *, where: str) -> None:
    """No control character from outside in *text*; the escapes are shown instead."""
    for raw in RAW:
        assert raw not in text, f"{where}: {raw!r} reached the terminal"
    assert re.search(r"\r(?!\n)", text) is None, f"{where}: a bare carriage return"
    assert "\\x1b[" in text, f"{where}: the escape is not shown"


def observe(tmp_path: Path, control: str | None) -> dict[str, Any]:
    home = tmp_path / "home"
    write_config(home)
    sink = Sink()
    try:
        spec = script(tmp_path, sink)
        seen: dict[str, Any] = {}
        ran = cli(home, "run", f"pay the {CONCEAL}bill", "--model", spec, control=control)
        assert ran.returncode == 3, ran.stdout + ran.stderr  # waiting for approval
        seen["run"] = ran.stdout
        [errand] = [e["id"] for e in json.loads(cli(home, "ls", "--json").stdout)]
        seen["show"] = cli(home, "show", errand, control=control).stdout
        seen["approvals"] = cli(home, "approvals", control=control).stdout
        seen["inbox"] = cli(home, "inbox", control=control).stdout
        with running(home) as server:
            with server.client() as api:  # a title from an API client
                made = api.post("/api/errands", json={"text": f"x{ERASE}y", "model": spec})
                assert made.status_code == 201, made.text
            seen["approvals via the server"] = cli(home, "approvals", control=control).stdout
            seen["inbox via the server"] = cli(home, "inbox", control=control).stdout
            seen["ls"] = cli(home, "ls", control=control).stdout
        seen["requests"] = len(sink.requests)
        return seen
    finally:
        sink.close()


def check(seen: dict[str, Any]) -> None:
    for where in ("run", "show", "approvals", "inbox", "approvals via the server"):
        check_clean(seen[where], where=where)
    assert visible(HIDDEN) in seen["approvals"]  # the whole body, shown as it is
    for where in ("inbox via the server", "ls"):
        for raw in RAW:
            assert raw not in seen[where], where
    assert seen["requests"] == 0  # (nothing was approved)


def test_the_cli_shows_escape_sequences_never_obeys_them(tmp_path: Path) -> None:
    check(observe(tmp_path, None))


def test_control_rendering_raw_text_lets_the_model_draw_on_the_terminal(tmp_path: Path) -> None:
    seen = observe(tmp_path, "raw_terminal")
    assert CONCEAL in seen["approvals"]  # the hidden body, as the attack run saw it
    with pytest.raises(AssertionError):
        check(seen)


# -- the inline prompt, on a terminal ------------------------------------------------------


def observe_prompt(tmp_path: Path, control: str | None) -> str:
    """``errands run`` on a pty (TERM=dumb: rich itself writes no escape sequence), which
    asks inline; the answer is no."""
    home = tmp_path / "home"
    write_config(home)
    sink = Sink()
    leader, follower = pty.openpty()
    env = child_env(clean_env(home, TERM="dumb"), controls=[control] * bool(control))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "errands", "run", "pay", "--model", script(tmp_path, sink)],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
        )
        os.close(follower)
        seen = b""
        answers = [b"n\n", b"not that\n"]
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(leader, 65536)
                except OSError:
                    break
            if answers and seen.rstrip().endswith((b"[y/n/e/a]:", b"model):")):
                os.write(leader, answers.pop(0))
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        while select.select([leader], [], [], 0.2)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert not answers, seen.decode(errors="replace")
        assert sink.requests == []
        return seen.decode(errors="replace")
    finally:
        os.close(leader)
        sink.close()


def check_prompt(text: str) -> None:
    assert "approve?" in text and "waiting for your approval" in text, text
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text, repr(text)
    assert re.search(r"\r(?!\n)", text) is None
    assert "\\x1b[8m" in text  # the concealed body, shown


def test_the_inline_prompt_shows_the_escapes(tmp_path: Path) -> None:
    check_prompt(observe_prompt(tmp_path, None))


def test_control_the_inline_prompt_without_visible(tmp_path: Path) -> None:
    text = observe_prompt(tmp_path, "raw_terminal")
    with pytest.raises(AssertionError):
        check_prompt(text)


def test_visible_shows_every_control_character_but_tab_and_newline() -> None:
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x202E, 0x2066]:
        char = chr(code)
        shown = visible(f"a{char}b")
        if char in "\t\n":
            assert shown == f"a{char}b"
        else:
            assert char not in shown and shown.startswith("a\\") and shown.endswith("b")
    assert visible("plain text, ünïcödé, emoji 🎉") == "plain text, ünïcödé, emoji 🎉"
