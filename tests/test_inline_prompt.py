"""The inline approval prompt, on a real terminal (a pty): its choices are readable
(issue 14, item 8: rich took ``[y]`` for markup and printed ``approve? es / o / dit``)."""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import CLI
from helpers.kit import call, write_script
from test_store_faults import child_site


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
        {
            "tool_calls": [
                call("http_request", method="POST", url="http://127.0.0.1:9/x", body="hi")
            ]
        },
        {"cases": [{"when_contains": "denied", "text": "ok, not sent"}, {"text": "sent"}]},
    )
    with errands_run("post it", spec, cli) as (proc, main):
        shown = read_until(main, "for this errand")
        assert "[y]es / [n]o / [e]dit / [a]lways for this errand" in shown, shown
        os.write(main, b"n\n")
        read_until(main, "reason")
        os.write(main, b"not today\n")
        read_until(main, "ok, not sent")
        assert proc.wait(30) == 0


# -- a sub-errand's approval, asked inline by the errands run of its parent -------------------

# the control: errands run asking only for the errand's own approvals (as it did before):
# the child's approval is left for the inbox and the parent stops, sleeping for it
OWN_APPROVALS_ONLY = """
    import errands.cli.live as live
    from errands.core.states import ErrandState

    async def own_only(store, view):
        if view.state is ErrandState.waiting_approval:
            return [(a, view.title) for a in view.pending.values()]
        return []

    live.waiting_for_you = own_only
"""


def _delegating_script(tmp_path: Path) -> str:
    """A parent that delegates one task; the child posts (the policy asks) and answers
    whether it was told no; the parent's answer says what its child said."""
    return write_script(
        tmp_path / "s.json",
        {
            "cases": [
                {
                    "when_seen": "CHILD",
                    "tool_calls": [
                        call("http_request", method="POST", url="http://127.0.0.1:9/x", body="hi")
                    ],
                },
                {"tool_calls": [call("delegate", tasks=[{"task": "CHILD post the note"}])]},
            ]
        },
        {
            "cases": [
                {"when_seen": "CHILD", "when_contains": "denied", "text": "told no, not sent"},
                {"when_seen": "CHILD", "text": "sent"},
                {"when_contains": "told no, not sent", "text": "parent: my sub-errand was told no"},
                {"text": "parent: no word from my sub-errand"},
            ]
        },
    )


@contextlib.contextmanager
def errands_run(
    text: str, spec: str, cli: CLI, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``errands run TEXT -m SPEC`` on a terminal (a pty): the process and the terminal."""
    main, side = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "errands", "run", text, "-m", spec],
        stdin=side,
        stdout=side,
        stderr=side,
        env=cli.env(COLUMNS="160", TERM="xterm", **env),
        close_fds=True,
    )
    os.close(side)
    try:
        yield proc, main
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)


def test_a_sub_errands_approval_is_asked_inline(cli: CLI, tmp_path: Path) -> None:
    with errands_run("fan out", _delegating_script(tmp_path), cli) as (proc, main):
        shown = read_until(main, "for this errand")
        assert "fan out › CHILD post the note" in shown, shown  # PARENT › CHILD, on the card
        assert "http_request" in shown and "127.0.0.1:9/x" in shown, shown
        os.write(main, b"n\n")
        read_until(main, "reason")
        os.write(main, b"not today\n")
        read_until(main, "parent: my sub-errand was told no")
        assert proc.wait(30) == 0


def test_control_asking_only_its_own_approvals_leaves_the_child_waiting(
    cli: CLI, tmp_path: Path
) -> None:
    site = child_site(tmp_path / "site", OWN_APPROVALS_ONLY)
    with errands_run("fan out", _delegating_script(tmp_path), cli, **site) as (proc, main):
        shown = read_until(main, "waits for its sub-errands")
        assert "for this errand" not in shown, shown  # nobody was asked
        assert proc.wait(30) != 0
