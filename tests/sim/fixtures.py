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

from .anthropic_server import AnthropicSim
from .gemini_server import GeminiSim
from .openai_responses_server import OpenAIResponsesSim
from .openai_server import OpenAIChatSim

__all__ = [
    "anthropic_sim",
    "anthropic_sim_env",
    "gemini_sim",
    "gemini_sim_env",
    "openai_responses_sim",
    "openai_sim",
    "openai_sim_env",
]


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


# -- the other providers' simulators (see their modules); each ``*_env`` fixture also
# sets the environment variables that point that provider's client at the simulator


@pytest.fixture
def anthropic_sim() -> Iterator[AnthropicSim]:
    sim = AnthropicSim()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def anthropic_sim_env(anthropic_sim: AnthropicSim, monkeypatch: pytest.MonkeyPatch) -> AnthropicSim:
    for name, value in anthropic_sim.env.items():
        monkeypatch.setenv(name, value)
    return anthropic_sim


@pytest.fixture
def gemini_sim() -> Iterator[GeminiSim]:
    sim = GeminiSim()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def gemini_sim_env(gemini_sim: GeminiSim, monkeypatch: pytest.MonkeyPatch) -> GeminiSim:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    for name, value in gemini_sim.env.items():
        monkeypatch.setenv(name, value)
    return gemini_sim


@pytest.fixture
def openai_responses_sim() -> Iterator[OpenAIResponsesSim]:
    sim = OpenAIResponsesSim()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
