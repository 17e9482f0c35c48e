"""``errands --help`` imports only what the help needs (issue 17, item 5: start-up).

Typer builds every command's options to show the help, so the CLI imports every command
module; those modules import the typer and rich they need and nothing heavier. What a
command needs to run -- the harness, the store, the engine, the config (pydantic), the
HTTP client, the web stack -- is imported by the function that uses it. (The time it
saves is measured in bench/startup_bench.py, not here: a test asserts no timings.)

Each probe runs the real CLI (``python -m errands ARGS``) in a fresh interpreter and
records ``sys.modules`` when it exits; the test fails if a heavy module is there.

Negative control (:func:`test_the_control_catches_an_eager_import`): the same probe,
with ``errands.cli.common`` loaded from its own source plus one line at the end,
``from errands.harness import build`` -- the import it had at its top before this
change -- finds ``errands.harness``, the store, the engine and httpx loaded,
and the test over the module list would fail on each of them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest

from errands.cli.common import EXIT, StateName
from errands.core.states import ErrandState
from errands.engine.runner import Runner
from errands.server.worker import RunnerThread

# what a command imports when it runs, never to show the help
HEAVY = [
    "errands.harness",
    "errands.config",
    "errands.store",
    "errands.store.sqlite",
    "errands.engine.loop",
    "errands.engine.runner",
    "errands.core.events",
    "errands.policy.rules",
    "errands.server.app",
    "errands.server.serve",
    "errands.cli.live",
    "httpx",
    "fastapi",
    "starlette",
    "uvicorn",
]  # (not pydantic: this typer imports it to check the values a command is given)

# runs the CLI as `python -m errands` does and writes the modules loaded at exit;
# argv[3], when given, is a line run at the end of errands.cli.common's own source
PROBE = """
import atexit, importlib.util, json, runpy, sys

out, args, eager = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]


def record():
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)


atexit.register(record)
if eager:
    spec = importlib.util.find_spec("errands.cli.common")
    source = spec.loader.get_source("errands.cli.common") + "\\n" + eager + "\\n"
    module = importlib.util.module_from_spec(spec)
    sys.modules["errands.cli.common"] = module
    exec(compile(source, spec.origin, "exec"), module.__dict__)
sys.argv = ["errands", *args]
runpy.run_module("errands", run_name="__main__", alter_sys=True)
"""


@functools.cache
def modules_after(args: tuple[str, ...], eager: str = "") -> frozenset[str]:
    """The modules loaded when ``errands ARGS`` exits (its help printed, or its output)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "modules.json"
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(out), json.dumps(args), eager],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
            | {"COLUMNS": "120", "NO_COLOR": "1"},
            cwd=tmp,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip(), "the command printed nothing"
        if "--help" in args:
            assert "Usage" in done.stdout, done.stdout
        return frozenset(json.loads(out.read_text()))


@pytest.mark.parametrize("module", HEAVY)
def test_help_does_not_import(module: str) -> None:
    assert module not in modules_after(("--help",))


@pytest.mark.parametrize(
    "args",
    [("up", "--help"), ("schedule", "add", "--help"), ("ls", "--help"), ("version",)],
    ids=lambda args: " ".join(args),
)
def test_a_commands_help_and_version_import_nothing_heavy(args: tuple[str, ...]) -> None:
    loaded = modules_after(args)
    assert [m for m in HEAVY if m in loaded] == []


def test_the_control_catches_an_eager_import() -> None:
    loaded = modules_after(("--help",), eager="from errands.harness import build")
    found = [m for m in HEAVY if m in loaded]
    for module in ("errands.harness", "errands.store", "errands.engine.loop", "httpx"):
        assert module in found, found


def test_the_states_the_command_line_takes_are_the_errands_states() -> None:
    assert [s.value for s in StateName] == [s.value for s in ErrandState]
    for state in ErrandState:  # the exit codes are found by either
        assert EXIT.get(state) == EXIT.get(StateName(state.value))
    assert EXIT[ErrandState.waiting_approval] == 3


# builds the inbox's routes as `errands up` does, then lists what is loaded; argv[1],
# when given, is a line run after the routes are built
SERVER_PROBE = """
import json, sys
from errands.server.inbox import build_inbox
build_inbox(lambda request: None)
exec(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def modules_after_inbox_routes(then: str = "") -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SERVER_PROBE, then],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_the_inbox_routes_are_built_without_jinja2() -> None:
    """``errands up`` answers before it imports jinja2: the templates' environment is
    made at the first page rendered (inbox.Templates)."""
    assert "jinja2" not in modules_after_inbox_routes()


def test_the_control_finds_jinja2_once_the_environment_is_made() -> None:
    # what build_inbox did before: make the environment with the routes
    loaded = modules_after_inbox_routes(
        "from errands.server.inbox import environment; environment()"
    )
    assert "jinja2" in loaded


class _SlowStart(RunnerThread):
    """A runner thread whose runner takes BUILD seconds to build and then only waits to
    be stopped (no store: what is tested is the caller's loop while it is built)."""

    BUILD = 0.3

    def __init__(self) -> None:
        def make() -> Runner:
            time.sleep(self.BUILD)  # (on the runner's thread)
            return cast(Runner, object())

        super().__init__(make)

    async def _serve_through(self, runner: Runner, stop: asyncio.Event) -> None:
        await stop.wait()


async def _ticks_while_starting(start: Callable[[RunnerThread], Awaitable[None]]) -> int:
    """How many times the caller's loop ran a 10 ms timer while the runner was built."""
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    runner = _SlowStart()
    await start(runner)
    done.set()
    await ticker
    await runner.stop()
    return ticks


async def test_the_server_answers_while_the_runner_is_built() -> None:
    """``errands up`` awaits ``RunnerThread.started()``: its loop (the HTTP side) goes on
    while the runner's thread builds the runner."""

    async def started(runner: RunnerThread) -> None:
        await runner.started()

    assert await _ticks_while_starting(started) >= 5


async def test_the_control_start_holds_the_loop_while_the_runner_is_built() -> None:
    async def blocking(runner: RunnerThread) -> None:  # what errands up called before
        runner.start()

    assert await _ticks_while_starting(blocking) <= 1
