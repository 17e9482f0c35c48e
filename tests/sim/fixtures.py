"""Pytest fixtures for the simulators. Register them in tests/conftest.py::

    pytest_plugins = ["sim.fixtures"]

``openai_sim`` yields a started :class:`~sim.openai_server.OpenAIChatSim` on a free
port: ``.base_url`` (ends in ``/v1``), ``.api_key``, ``.script(...)``, ``.fault(...)``,
``.requests``; ``.env`` gives the environment variables that point a client (or an
``errands`` subprocess) at it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .openai_server import OpenAIChatSim

__all__ = ["openai_sim", "openai_sim_env"]


@pytest.fixture
def openai_sim() -> Iterator[OpenAIChatSim]:
    sim = OpenAIChatSim()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def openai_sim_env(openai_sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch) -> OpenAIChatSim:
    """``openai_sim`` with ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` set to it."""
    for name, value in openai_sim.env.items():
        monkeypatch.setenv(name, value)
    return openai_sim
