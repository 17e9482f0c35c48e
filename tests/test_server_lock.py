"""One ``errands up`` per home, even when two start at the same instant.

Each round starts two real ``errands up`` processes on one fresh home, lets them import
everything, then releases both at once (a byte written to each one's stdin, back to
back) into the real CLI. Exactly one must run; the other must exit 2 with one line
saying the home is taken. Both listen on port 0 (a free port each), so nothing but the
home's lock can stop the second one. Some rounds end the winner with SIGKILL: the next
round's start shows that a dead server leaves no stale lock.

The negative control injects the old start check -- read ``server.json``'s pid, and
later write it -- in place of the lock (``serve._claim_home``, replaced in the child by
the test's code; nothing in errands reads a switch): both servers start.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.server import clean_env

# Runs in each child: import everything first, wait at the barrier, then the real CLI.
CHILD = """
import sys
from errands.cli.app import main
import errands.server.serve  # (imported before the barrier: what races is the start)
{control}
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.buffer.read(1)  # the barrier
sys.argv = ["errands", "up", "--host", "127.0.0.1", "--port", "0"]
main()
"""

# The old start check, injected by the test: look at server.json, go on if no live
# server is named there; server.json is written much later, once the server is up.
CHECK_THEN_ACT = """
from errands.server import serve
from errands.server.files import ServerRefused, live_server

class _NoLock:
    def release(self) -> None:
        pass

def _check_then_act(home):
    home.mkdir(parents=True, exist_ok=True)
    running = live_server(home)
    if running is not None:
        raise ServerRefused(f"errands is already up for {home} at {running['url']}")
    return _NoLock()

serve._claim_home = _check_then_act
"""


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    @property
    def announced(self) -> bool:
        return "errands is up" in self.stdout()


def _spawn(home: Path, tag: str, control: str) -> Child:
    out, err = home.parent / f"{tag}.out", home.parent / f"{tag}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(control=control)],
            stdin=subprocess.PIPE,
            stdout=o,
            stderr=e,
            env=clean_env(home),
            cwd=home.parent,
        )
    return Child(proc, out, err)


def _wait(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def race(home: Path, control: str = "", *, kill: bool = False) -> tuple[list[Child], list[Child]]:
    """Start two servers on *home* at the same instant; return (running, refused)."""
    children = [_spawn(home, f"{home.name}-{i}", control) for i in range(2)]
    try:
        _wait(lambda: all("ready" in c.stdout() for c in children), 90, "both children ready")
        for c in children:  # the barrier: release both, back to back
            assert c.proc.stdin is not None
            c.proc.stdin.write(b"x")
            c.proc.stdin.flush()
        for c in children:
            assert c.proc.stdin is not None
            c.proc.stdin.close()
        _wait(
            lambda: all(c.announced or c.proc.poll() is not None for c in children),
            90,
            "each server to start or exit",
        )
        time.sleep(0.3)  # (a loser that announced would be dying now, not running)
        running = [c for c in children if c.announced and c.proc.poll() is None]
        refused = [c for c in children if c not in running]
        return running, refused
    finally:
        for c in children:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        for c in children:
            c.proc.wait(30)


def test_two_servers_started_at_the_same_instant_exactly_one_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for round_ in range(10):
        running, refused = race(home, kill=round_ % 2 == 1)
        assert len(running) == 1, [c.stdout() + c.stderr() for c in running]
        [loser] = refused
        assert loser.proc.returncode == 2, loser.stderr()
        lines = loser.stderr().strip().splitlines()
        assert len(lines) == 1 and "already up for" in lines[0], lines
        assert "Traceback" not in loser.stderr()
        assert not loser.announced


def test_control_the_old_check_then_act_lets_both_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    both = 0
    for _ in range(2):
        running, _ = race(home, CHECK_THEN_ACT)
        both += len(running) == 2
    assert both >= 1, "the check-then-act control should let two servers run at once"
