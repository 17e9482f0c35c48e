"""Pytest fixtures for the simulators. Register them in tests/conftest.py::

    pytest_plugins = ["sim.fixtures"]

``openai_sim`` yields a started :class:`~sim.openai_server.OpenAIChatSim` on a free
port: ``.base_url`` (ends in ``/v1``), ``.api_key``, ``.script(...)``, ``.fault(...)``,
``.requests``; ``.env`` gives the environment variables that point a client (or an
``errands`` subprocess) at it. ``anthropic_sim``, ``gemini_sim`` and
``openai_responses_sim`` do the same for the other providers' simulators (see their
modules); each ``*_env`` fixture also sets the environment variables of its simulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest

from .anthropic_server import AnthropicSim
from .core import SimServer
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

_Sim = TypeVar("_Sim", bound=SimServer)


def _pointed_at(sim: _Sim, monkeypatch: pytest.MonkeyPatch) -> _Sim:
    """*sim*, with its ``env`` set for the rest of the test."""
    for name, value in sim.env.items():
        monkeypatch.setenv(name, value)
    return sim


@pytest.fixture
def openai_sim() -> Iterator[OpenAIChatSim]:
    with OpenAIChatSim() as sim:
        yield sim


@pytest.fixture
def openai_sim_env(openai_sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch) -> OpenAIChatSim:
    """``openai_sim`` with ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` set to it."""
    return _pointed_at(openai_sim, monkeypatch)


@pytest.fixture
def anthropic_sim() -> Iterator[AnthropicSim]:
    with AnthropicSim() as sim:
        yield sim


@pytest.fixture
def anthropic_sim_env(anthropic_sim: AnthropicSim, monkeypatch: pytest.MonkeyPatch) -> AnthropicSim:
    return _pointed_at(anthropic_sim, monkeypatch)


@pytest.fixture
def gemini_sim() -> Iterator[GeminiSim]:
    with GeminiSim() as sim:
        yield sim


@pytest.fixture
def gemini_sim_env(gemini_sim: GeminiSim, monkeypatch: pytest.MonkeyPatch) -> GeminiSim:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)  # google-genai prefers it to ours
    return _pointed_at(gemini_sim, monkeypatch)


@pytest.fixture
def openai_responses_sim() -> Iterator[OpenAIResponsesSim]:
    with OpenAIResponsesSim() as sim:
        yield sim
