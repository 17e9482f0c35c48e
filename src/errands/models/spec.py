"""Turning a model spec into a model: ``scripted:demo``, ``openai:gpt-4o-mini`` (Chat
Completions), ``openai-responses:gpt-5-mini`` (Responses API),
``anthropic:claude-sonnet-4-5``, ``gemini:gemini-2.5-flash``, or ``NAME:MODEL`` for a
named endpoint ``[providers.NAME]`` (``kind`` one of the above, ``base_url``,
``api_key_env``)."""

from __future__ import annotations

import importlib
import importlib.util
import os

from errands.config import Settings
from errands.models.protocol import Model, ModelError

__all__ = ["ModelSpecError", "resolve_model"]

KINDS = ("scripted", "openai", "openai-responses", "anthropic", "gemini")
# kind -> (module, class, the SDK it imports, the extra that installs that SDK)
_CLIENTS: dict[str, tuple[str, str, str, str]] = {
    "openai": ("errands.models.openai_chat", "OpenAIChatModel", "openai", "openai"),
    "openai-responses": (
        "errands.models.openai_responses",
        "OpenAIResponsesModel",
        "openai",
        "openai",
    ),
    "anthropic": ("errands.models.anthropic", "AnthropicModel", "anthropic", "anthropic"),
    "gemini": ("errands.models.gemini", "GeminiModel", "google.genai", "gemini"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package
        return False


class ModelSpecError(ValueError):
    """The model spec cannot be used; the message says how to fix it."""


def _parse(spec: str) -> tuple[str, str]:
    provider, sep, name = spec.partition(":")
    if not sep or not provider or not name:
        raise ModelSpecError(
            f"bad model {spec!r}: write PROVIDER:MODEL, e.g. openai:gpt-4o-mini or scripted:demo"
        )
    return provider, name


def resolve_model(spec: str, settings: Settings) -> Model:
    provider, name = _parse(spec.strip())
    if provider == "scripted":
        from errands.models.scripted import ScriptedModel, load_script

        try:
            return ScriptedModel(load_script(name), name=spec)
        except ModelError as exc:
            raise ModelSpecError(str(exc)) from None
    endpoint = settings.providers.get(provider)
    kind = endpoint.kind if endpoint else provider
    if kind not in _CLIENTS:
        known = ", ".join([*KINDS, *sorted(settings.providers)])
        raise ModelSpecError(f"unknown model provider {provider!r} in {spec!r}; known: {known}")
    module, cls, sdk, extra = _CLIENTS[kind]
    if not _installed(sdk):
        raise ModelSpecError(
            f"the {kind} provider needs the {extra} extra: pip install 'errands[{extra}]'"
        )
    client_class = getattr(importlib.import_module(module), cls)
    key = None
    if endpoint and endpoint.api_key_env:
        key = os.environ.get(endpoint.api_key_env)
        if not key:
            raise ModelSpecError(
                f"provider {provider!r} reads its key from ${endpoint.api_key_env}, which is not set"
            )
    try:
        model: Model = client_class(
            name, base_url=endpoint.base_url if endpoint else None, api_key=key
        )
    except ModelError as exc:
        raise ModelSpecError(str(exc)) from None
    if endpoint:
        model.name = spec
    return model


def check_spec(spec: str, settings: Settings) -> None:
    """Refuse a bad spec early (before an errand is created), without network calls."""
    resolve_model(spec, settings)
