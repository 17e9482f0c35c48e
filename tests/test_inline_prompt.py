"""The inline approval prompt, on a real terminal (a pty): its choices are readable
(issue 14, item 8: rich took ``[y]`` for markup and printed ``approve? es / o / dit``)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from conftest import CLI
from helpers.kit import call, write_script


def read_until(fd: int, pattern: str, timeout: float = 30.0) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
            if pattern in text:
                return text
    raise AssertionError(f"no {pattern!r} within {timeout} s; the terminal showed:\n{seen!r}")


def test_the_inline_prompt_shows_its_choices(cli: CLI, tmp_path: Path) -> None:
    spec = write_script(
        tmp_path / "s.json",
        {"tool_calls": [call("http_request", method="POST", url="http://127.0.0.1:9/x", body="hi")]},
        {"cases": [{"when_contains": "denied", "text": "ok, not sent"}, {"text": "sent"}]},
    )
    main, side = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "errands", "run", "post it", "-m", spec],
        stdin=side,
        stdout=side,
        stderr=side,
        env=cli.env(COLUMNS="120", TERM="xterm"),
        close_fds=True,
    )
    os.close(side)
    try:
        shown = read_until(main, "for this errand")
        assert "[y]es / [n]o / [e]dit / [a]lways for this errand" in shown, shown
        os.write(main, b"n\n")
        read_until(main, "reason")
        os.write(main, b"not today\n")
        read_until(main, "ok, not sent")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
