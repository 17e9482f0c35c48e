"""Shared fixtures: a fresh ERRANDS_HOME, its store, and a way to run the real CLI.

The ``store`` fixture is parametrised by backend (:data:`BACKENDS`): a test that takes
it runs once per backend and may use only the store protocol
(:class:`errands.store.Store`). ``ERRANDS_TEST_BACKENDS=sqlite,postgres`` chooses which
backends run (default: every backend this errands has).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from backends import BACKENDS, backend
from helpers.server import Sink, write_config
from helpers.site import Site, serving

from errands.config import Settings, load_settings
from errands.store import Store

pytest_plugins = ["sim.fixtures"]

# pyproject's addopts run the suite as ``-n auto --dist loadfile`` (pytest-xdist): WORKERS
# processes, each taking whole test files. Most tests wait (real subprocesses, servers,
# sleeps), so on 2 cores 4 workers beat 2. ``-n 0`` runs in this one process instead.
WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many workers ``-n auto`` means: WORKERS; none (this process alone) for a run of
    one file, where --dist loadfile would use one worker anyway, or with ``-s``, whose
    output workers do not show; at most one per file for a run of a few files."""
    if config.getoption("capture") == "no":
        return 0
    files = {arg.split("::")[0] for arg in config.args}
    if files and all(f.endswith(".py") for f in files):
        return 0 if len(files) == 1 else min(WORKERS, len(files))
    return WORKERS


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)  # as errands makes a home: private (errands doctor checks)
    monkeypatch.setenv("ERRANDS_HOME", str(h))
    return h


@pytest.fixture
def settings(home: Path) -> Settings:
    return load_settings(home)


def open_test_store(name: str, settings: Settings) -> Store:
    """A fresh store of backend *name* for the home of *settings*."""
    return backend(name).open(settings.home, None)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Store]:
    """A fresh store for this test's home, on each backend in turn."""
    s = open_test_store(request.param, settings)
    yield s
    await s.close()


class CLI:
    """Runs the real `errands` command in a subprocess against one ERRANDS_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
        env.update({"ERRANDS_HOME": str(self.home), "COLUMNS": "200", "NO_COLOR": "1", **extra})
        return env

    def __call__(
        self, *args: str, timeout: float = 60, input: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "errands", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "errands", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env(**env),
        )


@pytest.fixture
def cli(home: Path) -> Iterator[CLI]:
    yield CLI(home)


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A local HTTP endpoint errands' network tools can reach (tests/helpers/server.py)."""
    s = Sink()
    yield s
    s.close()


@pytest.fixture
def site() -> Iterator[Site]:
    """A web site on 127.0.0.1 serving the pages a test sets (tests/helpers/site.py)."""
    with serving() as s:
        yield s


@pytest.fixture
def local(home: Path) -> Settings:
    """The home's settings, its config letting the network tools reach 127.0.0.1."""
    write_config(home)
    return load_settings(home)
