"""Turning a model spec into a model: ``scripted:demo``, ``openai:gpt-4o-mini`` (Chat
Completions), ``openai-responses:gpt-5-mini`` (Responses API),
``anthropic:claude-sonnet-4-5``, ``gemini:gemini-2.5-flash``, or ``NAME:MODEL`` for a
named endpoint ``[providers.NAME]`` (``kind`` one of the above, ``base_url``,
``api_key_env``, rate limits, retries). A fallback chain is a comma-separated list of
those (``anthropic:A,gemini:B,openai:C``) or ``chain:NAME`` for ``[chains] NAME = [...]``.
Keys come from the environment, else the OS keyring (:mod:`errands.models.keys`)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from errands.config import ProviderSettings, Settings
from errands.errors import UserError
from errands.install import extra_hint
from errands.models.keys import find_key, key_names
from errands.models.protocol import Model, ModelError
from errands.models.wrappers import router
from errands.models.wrappers.fallback import CircuitBreaker, FallbackModel
from errands.models.wrappers.router import EndpointKey, breaker_for

__all__ = ["ModelSpecError", "Models", "check_spec", "endpoint_kind", "resolve_model"]

KINDS = ("scripted", "openai", "openai-responses", "anthropic", "gemini")
CHAIN_PREFIX = "chain:"
# kind -> (module, class, the SDK it imports, the extra that installs that SDK)
_CLIENTS: dict[str, tuple[str, str, str, str]] = {
    "openai": ("errands.models.providers.openai_chat", "OpenAIChatModel", "openai", "openai"),
    "openai-responses": (
        "errands.models.providers.openai_responses",
        "OpenAIResponsesModel",
        "openai",
        "openai",
    ),
    "anthropic": ("errands.models.providers.anthropic", "AnthropicModel", "anthropic", "anthropic"),
    "gemini": ("errands.models.providers.gemini", "GeminiModel", "google.genai", "gemini"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package
        return False


class ModelSpecError(UserError, ValueError):
    """The model spec cannot be used; the message says how to fix it."""


def _parse(spec: str) -> tuple[str, str]:
    provider, sep, name = spec.partition(":")
    if not sep or not provider or not name:
        raise ModelSpecError(
            f"bad model {spec!r}: write PROVIDER:MODEL, e.g. openai:gpt-4o-mini or scripted:demo"
        )
    return provider, name


def resolve_model(spec: str, settings: Settings) -> Model:
    """The model for *spec*: a provider model behind retries and its endpoint's rate
    limiter, or -- for ``a:x,b:y`` and ``chain:NAME`` -- a fallback chain of those,
    each behind its endpoint's circuit breaker (see :mod:`errands.models.wrappers.router`)."""
    spec = spec.strip()
    members = _chain_members(spec, settings)
    if members is None:
        return _single(spec, settings)[0]
    built: list[tuple[Model, CircuitBreaker]] = []
    for member in members:
        model, endpoint, config = _single(member, settings)
        built.append((model, breaker_for(endpoint, member, config)))
    return router.chain(spec, built)


class Models:
    """``models(spec)``: one model object per spec, shared by every errand of the process
    (its rate limiter, circuit breakers and connections); *make* builds one (default:
    :func:`resolve_model`)."""

    def __init__(self, settings: Settings, make: Callable[[str], Model] | None = None) -> None:
        self.settings = settings
        self._make = make or (lambda spec: resolve_model(spec, settings))
        self._models: dict[str, Model] = {}

    def __call__(self, spec: str) -> Model:
        model = self._models.get(spec)
        if model is None:
            model = self._models[spec] = self._make(spec)
        return model

    async def aclose(self) -> None:
        """Close every model's connections (those that have any)."""
        models, self._models = list(self._models.values()), {}
        for model in models:
            close = getattr(model, "aclose", None)
            if close is not None:
                await close()


def _chain_members(spec: str, settings: Settings) -> list[str] | None:
    """The members of a fallback chain spec, or None for a single model."""
    if "," in spec:
        members = [m.strip() for m in spec.split(",")]
        if not all(members):
            raise ModelSpecError(
                f"bad model {spec!r}: a chain is PROVIDER:MODEL,PROVIDER:MODEL,... "
                "with no empty member"
            )
    elif spec.startswith(CHAIN_PREFIX):
        name = spec.removeprefix(CHAIN_PREFIX)
        if name not in settings.chains:
            known = ", ".join(sorted(settings.chains)) or "none configured"
            raise ModelSpecError(
                f"no chain {name!r} in the config (known: {known}); define it as "
                f'[chains] {name or "NAME"} = ["anthropic:MODEL", "openai:MODEL"]'
            )
        members = [m.strip() for m in settings.chains[name]]
        if not members or not all(members):
            raise ModelSpecError(f"chain {name!r} in the config has an empty member list")
    else:
        return None
    for member in members:
        if member.startswith(CHAIN_PREFIX):
            raise ModelSpecError(f"chain {spec!r}: a member cannot be a chain ({member!r})")
    return members


def endpoint_kind(provider: str, endpoint: ProviderSettings | None) -> str:
    """The kind of client for *provider*: ``[providers.anthropic]`` that only sets limits
    (no ``kind``) is still the Anthropic API."""
    if endpoint is None:
        return provider
    if "kind" in endpoint.model_fields_set or provider not in _CLIENTS:
        return endpoint.kind
    return provider


def _single(spec: str, settings: Settings) -> tuple[Model, EndpointKey, ProviderSettings | None]:
    provider, name = _parse(spec)
    if provider == "scripted":
        from errands.models.scripted import ScriptedModel, load_script

        try:
            return ScriptedModel(load_script(name), name=spec), ("scripted", name, ""), None
        except ModelError as exc:
            raise ModelSpecError(str(exc)) from None
    endpoint = settings.providers.get(provider)
    kind = endpoint_kind(provider, endpoint)
    if kind not in _CLIENTS:
        known = ", ".join([*KINDS, *sorted(settings.providers)])
        raise ModelSpecError(f"unknown model provider {provider!r} in {spec!r}; known: {known}")
    module, cls, sdk, extra = _CLIENTS[kind]
    if not _installed(sdk):
        raise ModelSpecError(f"the {kind} provider needs the {extra} extra: {extra_hint(extra)}")
    client_class = getattr(importlib.import_module(module), cls)
    key_env = endpoint.api_key_env if endpoint else None
    found = find_key(*key_names(kind, key_env))
    if key_env and found is None:
        raise ModelSpecError(
            f"provider {provider!r} reads its key from ${key_env}, which is not set "
            f"(set it, or store it in the OS keyring: keyring set errands {key_env})"
        )
    options: dict[str, Any] = {"max_retries": 0}  # retries are RetryingModel's, not the SDK's
    if endpoint and endpoint.timeout_seconds is not None:
        options["timeout"] = endpoint.timeout_seconds
    base_url = endpoint.base_url if endpoint else None
    try:
        client: Model = client_class(
            name, base_url=base_url, api_key=found[0] if found else None, **options
        )
    except ModelError as exc:
        raise ModelSpecError(str(exc)) from None
    if endpoint:
        client.name = spec
    # the endpoint the client actually talks to (a default may come from $..._BASE_URL)
    key: EndpointKey = (kind, str(getattr(client, "base_url", None) or ""), key_env or "")
    return router.provider_stack(client, key, name, endpoint), key, endpoint


def outage_wait_for(spec: str, settings: Settings) -> float:
    """How long an errand on *spec* waits for its provider to come back (seconds): the
    ``outage_wait_seconds`` of its provider's ``[providers.NAME]`` (a chain: the longest
    of its members'), else the default."""
    default = ProviderSettings().outage_wait_seconds
    try:
        members = _chain_members(spec.strip(), settings) or [spec.strip()]
    except ModelSpecError:
        return default
    waits = [
        config.outage_wait_seconds
        if (config := settings.providers.get(m.partition(":")[0]))
        else default
        for m in members
    ]
    return max(waits, default=default)


def check_spec(spec: str, settings: Settings) -> None:
    """Refuse a bad spec early (before an errand is created), without network calls: an
    unknown provider, a missing SDK, and a provider whose key is nowhere to be found
    (every member of a chain must have its key)."""
    model = resolve_model(spec, settings)
    members = [m for m, _ in model.members] if isinstance(model, FallbackModel) else [model]
    for member in members:
        problem = getattr(router.innermost(member), "key_problem", lambda: None)()
        if problem is not None:
            raise ModelSpecError(problem)
