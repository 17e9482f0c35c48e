"""What the routes share: errands itself (the harness), the live hub, the checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from errands.config import Settings
from errands.core.states import PendingApproval
from errands.harness import Harness
from errands.models.keys import DEFAULT_KEY_ENVS, find_key
from errands.server.auth import Security
from errands.server.hub import Hub
from errands.server.idempotency import IdempotencyStore
from errands.store import Store

__all__ = ["ServerContext", "model_help"]


@dataclass
class ServerContext:
    harness: Harness
    hub: Hub
    security: Security
    idempotency: IdempotencyStore
    base_url: str
    # claim runnable errands now (set when errands run in this process)
    nudge_runner: Callable[[], None] | None = None
    # why the runner is not serving, None while it is (``/readyz``; None: no runner here)
    runner_down: Callable[[], str | None] | None = None

    # errand -> title, for the approval cards (titles never change)
    titles: dict[str, str] = field(default_factory=dict, repr=False)
    # approval id -> (the approval as the store last listed it, its card's JSON)
    approval_cards: dict[str, tuple[PendingApproval, bytes]] = field(
        default_factory=dict, repr=False
    )

    @property
    def store(self) -> Store:
        return self.harness.store

    @property
    def settings(self) -> Settings:
        return self.harness.settings

    def nudge(self) -> None:
        """Something became runnable (a new errand, a decision, a message)."""
        if self.nudge_runner is not None:
            self.nudge_runner()


def model_help(settings: Settings) -> list[str]:
    """What to do to connect a real model; empty when one looks connected (a key for a
    known provider in the environment or the keyring, an OpenAI-compatible base URL, or a
    configured endpoint)."""
    if os.environ.get("OPENAI_BASE_URL"):
        return []
    known = sorted({name for names in DEFAULT_KEY_ENVS.values() for name in names})
    if find_key(*known) is not None:
        return []
    for provider in settings.providers.values():
        if provider.base_url or (provider.api_key_env and find_key(provider.api_key_env)):
            return []
    return [
        "No model is connected yet, so only the scripted model (scripted:demo) can run.",
        "To use a hosted model, set its API key before errands up, e.g. "
        "export OPENAI_API_KEY=sk-…, and choose the model openai:gpt-4o-mini "
        "(ANTHROPIC_API_KEY and GEMINI_API_KEY work the same way; see errands models).",
        "To use a local model, run an OpenAI-compatible server such as Ollama and point "
        "errands at it: export OPENAI_BASE_URL=http://127.0.0.1:11434/v1, then choose the "
        "model openai:llama3.2.",
        "Restart errands up after setting the variable.",
    ]
