"""Turning a model spec (``scripted:demo``, ``openai:gpt-4o-mini``, ``local:llama3``) into a model."""

from __future__ import annotations

import os

from errands.config import Settings
from errands.models.protocol import Model, ModelError

__all__ = ["ModelSpecError", "resolve_model"]

KINDS = ("scripted", "openai")


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
    if kind == "openai":
        try:
            from errands.models.openai_chat import OpenAIChatModel
        except ImportError:
            raise ModelSpecError(
                "the openai provider needs the openai extra: pip install 'errands[openai]'"
            ) from None
        key = None
        if endpoint and endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env)
            if not key:
                raise ModelSpecError(
                    f"provider {provider!r} reads its key from ${endpoint.api_key_env}, which is not set"
                )
        try:
            model: Model = OpenAIChatModel(
                name, base_url=endpoint.base_url if endpoint else None, api_key=key
            )
        except ModelError as exc:
            raise ModelSpecError(str(exc)) from None
        if endpoint:
            model.name = spec
        return model
    known = ", ".join([*KINDS, *sorted(settings.providers)])
    raise ModelSpecError(f"unknown model provider {provider!r} in {spec!r}; known: {known}")


def check_spec(spec: str, settings: Settings) -> None:
    """Refuse a bad spec early (before an errand is created), without network calls."""
    resolve_model(spec, settings)
