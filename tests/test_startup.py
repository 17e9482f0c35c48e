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
change -- finds ``errands.harness``, the config and the store loaded, and the test over
the module list would fail on each of them. (The harness no longer imports the engine
and the tools: ``errands up`` answers first, :func:`test_up_answers_before_it_imports_the_engine_and_the_tools`.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from conftest import open_test_store
from fastapi import APIRouter, FastAPI

from errands.cli.common import EXIT, StateName
from errands.config import Settings
from errands.core.states import ErrandState
from errands.engine.runner import Runner
from errands.errors import ErrandsError
from errands.harness import Harness, build
from errands.server.worker import RunnerThread
from errands.tools.toolset import FunctionToolset, Toolset

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

# loads module NAME from its own source with the line *eager* appended (a probe's control)
LOAD_EAGER = """
def load_eager(name, eager):
    spec = importlib.util.find_spec(name)
    source = spec.loader.get_source(name) + "\\n" + eager + "\\n"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, spec.origin, "exec"), module.__dict__)
"""

# runs the CLI as `python -m errands` does and writes the modules loaded at exit;
# argv[3], when given, is a line run at the end of errands.cli.common's own source
PROBE = (
    """
import atexit, importlib.util, json, runpy, sys
"""
    + LOAD_EAGER
    + """
out, args, eager = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]


def record():
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)


atexit.register(record)
if eager:
    load_eager("errands.cli.common", eager)
sys.argv = ["errands", *args]
runpy.run_module("errands", run_name="__main__", alter_sys=True)
"""
)


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
    for module in ("errands.harness", "errands.config", "errands.store", "errands.store.sqlite"):
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


# what `errands up` imports once it answers -- for the errands, not for the first requests:
# the engine (with every tool's module), the policy's rules, the HTTP client, the inbox's
# templates, the shell parser, the OS keyring, the providers' and the MCP SDKs
AFTER_READY = [
    "errands.engine.loop",
    "errands.engine.runner",
    "errands.engine.dispatch",
    "errands.engine.scheduler",
    "errands.tools.builtin.shell",
    "errands.tools.builtin.web",
    "errands.tools.netguard",
    "errands.tools.sandbox",
    "errands.policy.rules",
    "httpx",
    "jinja2",
    "bashlex",
    "keyring",
    "openai",
    "anthropic",
    "google.genai",
    "mcp",
]

# runs `errands up` as the CLI does and writes the modules loaded once uvicorn has
# started (the HTTP side answers from then on), then stops it with SIGTERM; argv[3], when
# given, is a line run at the end of errands.server.context's own source
UP_PROBE = (
    """
import importlib.util, json, os, runpy, signal, sys
import uvicorn
"""
    + LOAD_EAGER
    + """
out, home, eager, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
startup = uvicorn.Server.startup


async def started(self, *a, **k):
    await startup(self, *a, **k)
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
    os.kill(os.getpid(), signal.SIGTERM)


uvicorn.Server.startup = started
if eager:
    load_eager("errands.server.context", eager)
sys.argv = ["errands", "--home", home, "up", "--port", "0", *args]
runpy.run_module("errands", run_name="__main__", alter_sys=True)
"""
)


def modules_when_answering(args: tuple[str, ...], eager: str = "") -> frozenset[str]:
    """The modules ``errands up ARGS`` had loaded when its HTTP side began to answer."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "modules.json"
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                UP_PROBE,
                str(out),
                str(Path(tmp) / "home"),
                eager,
                json.dumps(args),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")},
            cwd=tmp,
        )
        assert done.returncode == 0, done.stderr
        assert "errands is up" in done.stdout, done.stdout + done.stderr
        return frozenset(json.loads(out.read_text()))


@pytest.mark.parametrize(
    "args", [(), ("--workers", "0"), ("--workers", "2")], ids=["default", "0", "2"]
)
def test_up_answers_before_it_imports_the_engine_and_the_tools(args: tuple[str, ...]) -> None:
    """``errands up`` answers once the store is open and the routes are built; the engine,
    the tools, the policy and the SDKs are imported after (issue 17, item 5)."""
    loaded = modules_when_answering(args)
    assert [m for m in AFTER_READY if m in loaded] == []
    assert "errands.server.app" in loaded and "errands.store.sqlite" in loaded


def test_the_control_catches_the_engine_imported_before_answering() -> None:
    # what errands.server.context did before: import the harness with the engine
    loaded = modules_when_answering(("--workers", "0"), eager="import errands.engine.runner")
    found = [m for m in AFTER_READY if m in loaded]
    for module in ("errands.engine.runner", "errands.engine.loop", "httpx"):
        assert module in found, found


@pytest.mark.parametrize(
    ("config", "policy", "said"),
    [
        ('[tools]\nmodules = ["no_such_module_here"]\n', None, "no_such_module_here"),
        ("", "[[rules]]\nnot valid = \n", "policy.toml"),
    ],
    ids=["tools module", "policy.toml"],
)
def test_up_stops_on_a_bad_tools_module_or_policy_before_any_errand_runs(
    tmp_path: Path, config: str, policy: str | None, said: str
) -> None:
    """The tools and the policy are built once the HTTP side answers; one that cannot be
    is still one clear line and exit 2, and nothing is left behind."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "errands.toml").write_text(config)
    if policy is not None:
        (home / "policy.toml").write_text(policy)
    done = subprocess.run(
        [sys.executable, "-m", "errands", "--home", str(home), "up", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        # (wide: the error names the file's path, which a narrow terminal would wrap)
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")},
            "COLUMNS": "400",
        },
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "errands is up" not in done.stdout
    assert not (home / "server.json").exists()


class _Counting:
    """A toolset maker that takes a while and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Toolset:
        self.calls += 1
        time.sleep(0.2)
        return FunctionToolset()


def _ask_at_once(harness: Harness, threads: int = 4) -> list[Toolset]:
    got: list[Toolset] = []
    askers = [threading.Thread(target=lambda: got.append(harness.toolset)) for _ in range(threads)]
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    return got


async def test_a_later_toolset_is_built_once_whichever_thread_asks_first(
    settings: Settings,
) -> None:
    """``errands up`` builds the toolset on a thread while a request (or the runner's
    thread) may ask for it: the others wait for the one being built."""
    harness = build(settings, tools_later=True)
    try:
        maker = harness.make_toolset = _Counting()
        got = _ask_at_once(harness)
        assert maker.calls == 1 and len({id(t) for t in got}) == 1
    finally:
        await harness.close()


class _Unguarded(Harness):
    """The control: a harness whose toolset is built without the lock."""

    @property
    def toolset(self) -> Toolset:
        if self._toolset is None:
            self._toolset = self.make_toolset()
        return self._toolset

    @toolset.setter
    def toolset(self, toolset: Toolset) -> None:
        self._toolset = toolset


async def test_the_control_builds_twice_without_the_lock(settings: Settings) -> None:
    built = build(settings, tools_later=True)
    try:
        harness = _Unguarded(
            settings=built.settings,
            store=built.store,
            make_toolset=_Counting(),
            models=built.models,
        )
        _ask_at_once(harness)
        assert isinstance(harness.make_toolset, _Counting) and harness.make_toolset.calls > 1
    finally:
        await built.close()


async def test_build_makes_the_toolset_at_once_unless_asked_later(settings: Settings) -> None:
    """What the CLI and the workers build (``build`` as it was): a bad tools module
    stops ``build`` itself, before anything is done with the harness; asked later, it
    stops the first use of the toolset."""
    bad = settings.model_copy(
        update={"tools": settings.tools.model_copy(update={"modules": ["no_such_module_here"]})}
    )
    store = open_test_store("sqlite", settings)
    try:
        with pytest.raises(ErrandsError, match="no_such_module_here"):
            build(bad, store=store)
        later = build(bad, store=store, tools_later=True)
        with pytest.raises(ErrandsError, match="no_such_module_here"):
            later.toolset  # noqa: B018
    finally:
        await store.close()


def _fields_built_to_the_first_answer(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """How many response fields FastAPI builds for the app's routes (create_app), and then
    to answer the first ``GET /api/health``."""
    import fastapi.routing
    import httpx

    from errands.server.app import create_app
    from errands.server.auth import Security
    from errands.server.context import ServerContext

    made = 0
    real = fastapi.routing.create_model_field  # type: ignore[attr-defined]

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal made
        made += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fastapi.routing, "create_model_field", counting)
    security = Security(
        host="127.0.0.1", port=80, token=None, allowed_hosts=[], max_body_bytes=1 << 20
    )
    ctx = cast(ServerContext, SimpleNamespace(security=security, store=object()))
    app = create_app(ctx)
    at_start = made

    async def first() -> int:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return (await c.get("/api/health")).status_code

    assert asyncio.run(first()) == 200
    return at_start, made - at_start


def test_the_routes_are_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app serves the routes as their routers built them: FastAPI's include_router
    builds every route again (0.115 when including, later versions at the first request,
    which errands up's first answer then waited for)."""
    at_start, first_answer = _fields_built_to_the_first_answer(monkeypatch)
    assert at_start > 100 and first_answer == 0


def test_the_control_includes_the_routers_and_builds_them_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errands.server.app

    def include(app: FastAPI, router: APIRouter) -> None:  # what create_app did before
        app.include_router(router)

    once, _ = _fields_built_to_the_first_answer(monkeypatch)
    monkeypatch.setattr(errands.server.app, "_serve_routes", include)
    at_start, first_answer = _fields_built_to_the_first_answer(monkeypatch)
    assert at_start + first_answer >= 2 * once  # (each route's fields, twice)
