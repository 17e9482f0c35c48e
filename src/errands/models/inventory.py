"""What is configured (``errands models``) and whether it works (``errands doctor``).

:func:`inventory` lists the providers -- the four built-in kinds and every named
endpoint --, their base URLs, whether their key is present (``set`` / ``missing`` and
from where; never the value), their rate limits, the named chains and the default
model. :func:`doctor` checks each provider in use: the SDK is installed, the key is
present, the endpoint answers a cheap model-list request (``GET .../models``, short
timeout) and accepts the key, and every model the config names is one the endpoint
lists (when it lists models). Each problem is one line that says what to fix.

Key values are only ever put in request headers; nothing here returns or prints them,
and response bodies (which may echo a key) are never shown.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from errands.config import ProviderSettings, Settings
from errands.core.events import Usage
from errands.costs.pricing import cost_usd
from errands.install import extra_hint
from errands.models.keys import KeyStatus, find_key, key_status
from errands.models.providers.anthropic import ANTHROPIC_HOST
from errands.models.providers.gemini import GEMINI_HOST
from errands.models.providers.openai_chat import OPENAI_HOST
from errands.models.spec import CHAIN_PREFIX, ModelSpecError, check_spec, endpoint_kind

__all__ = ["Check", "ProviderInfo", "doctor", "inventory", "keyring_state"]

BUILTIN = ("openai", "openai-responses", "anthropic", "gemini")
_SDK = {
    "openai": ("openai", "openai"),
    "openai-responses": ("openai", "openai"),
    "anthropic": ("anthropic", "anthropic"),
    "gemini": ("google.genai", "gemini"),
}
_BASE_ENV = {
    "openai": "OPENAI_BASE_URL",
    "openai-responses": "OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
    "gemini": "GOOGLE_GEMINI_BASE_URL",
}
_DEFAULT_BASE = {
    "openai": f"https://{OPENAI_HOST}/v1",
    "openai-responses": f"https://{OPENAI_HOST}/v1",
    "anthropic": f"https://{ANTHROPIC_HOST}",
    "gemini": f"https://{GEMINI_HOST}",
}
_OFFICIAL_HOST = {
    "openai": OPENAI_HOST,
    "openai-responses": OPENAI_HOST,
    "anthropic": ANTHROPIC_HOST,
    "gemini": GEMINI_HOST,
}


def _no_userinfo(url: str) -> str:
    """A URL without any ``user:password@`` part (it may hold a credential)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def keyring_state() -> str:
    """Whether keys can come from the OS keyring (never reads a key)."""
    if os.environ.get("ERRANDS_NO_KEYRING"):
        return "off (ERRANDS_NO_KEYRING is set)"
    if not _installed("keyring"):
        return f"not installed (keys from the environment only; {extra_hint('keyring')})"
    try:
        import keyring  # type: ignore[import-not-found, unused-ignore]

        backend = keyring.get_keyring()
    except Exception as exc:  # a broken backend: the environment is used
        return f"unavailable ({type(exc).__name__}); keys from the environment only"
    name = type(backend).__name__
    if "fail" in type(backend).__module__ or name in ("Keyring", "NullKeyring"):
        return "no backend on this machine (keys from the environment only)"
    return f"available ({type(backend).__module__}.{name})"


@dataclass(slots=True)
class ProviderInfo:
    name: str
    kind: str
    named: bool  # a [providers.NAME] section
    base_url: str
    base_url_from: str  # config | $VAR | default
    key: str  # set | missing | not needed
    key_names: list[str]
    key_from: str | None  # env | keyring
    sdk: str  # installed | the pip line
    limits: dict[str, float]
    models_in_use: list[str] = field(default_factory=list)
    supported: bool = True  # a kind errands has a client for

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _base_url(kind: str, config: ProviderSettings | None) -> tuple[str, str]:
    if config is not None and config.base_url:
        return _no_userinfo(config.base_url), "config"
    env = _BASE_ENV.get(kind)
    if env and os.environ.get(env, "").strip():
        return _no_userinfo(os.environ[env].strip()), f"${env}"
    return _DEFAULT_BASE.get(kind, ""), "default"


def _needs_key(kind: str, base_url: str) -> bool:
    return urlsplit(base_url).hostname == _OFFICIAL_HOST.get(kind)


def _specs_in_use(settings: Settings) -> list[str]:
    """Every single-model spec the default model and the chains name."""
    specs: list[str] = []
    for spec in [settings.default_model, *(m for ms in settings.chains.values() for m in ms)]:
        for part in spec.split(","):
            part = part.strip()
            if part and not part.startswith(CHAIN_PREFIX) and part not in specs:
                specs.append(part)
    return specs


def _provider_info(name: str, settings: Settings) -> ProviderInfo:
    config = settings.providers.get(name)
    kind = endpoint_kind(name, config)
    base_url, base_from = _base_url(kind, config)
    status: KeyStatus = key_status(kind, config.api_key_env if config else None)
    if status.present:
        key = "set"
    elif not _needs_key(kind, base_url):
        key = "not needed" if not (config and config.api_key_env) else "missing"
    else:
        key = "missing"
    sdk_module, extra = _SDK.get(kind, ("", ""))
    sdk = (
        "installed"
        if sdk_module and _installed(sdk_module)
        else (f"missing: {extra_hint(extra)}" if extra else "-")
    )
    limits: dict[str, float] = {}
    if config is not None:
        for field_name in ("rpm", "itpm", "otpm", "tpm"):
            value = getattr(config, field_name)
            if value is not None:
                limits[field_name] = value
        if limits and config.limit_window_seconds != 60:
            limits["window_seconds"] = config.limit_window_seconds
    in_use = [s.partition(":")[2] for s in _specs_in_use(settings) if s.partition(":")[0] == name]
    return ProviderInfo(
        name=name,
        kind=kind,
        named=config is not None,
        base_url=base_url,
        base_url_from=base_from,
        key=key,
        key_names=list(status.names),
        key_from=status.source,
        sdk=sdk,
        limits=limits,
        models_in_use=in_use,
        supported=kind in _SDK,
    )


def inventory(settings: Settings) -> dict[str, Any]:
    """What ``errands models`` shows: providers, chains, the default model, key presence."""
    names = list(BUILTIN) + [n for n in sorted(settings.providers) if n not in BUILTIN]
    return {
        "default_model": settings.default_model,
        "providers": [_provider_info(n, settings).to_json() for n in names],
        "chains": {k: list(v) for k, v in sorted(settings.chains.items())},
        "keyring": keyring_state(),
        "context_windows": _windows(settings),
    }


def _windows(settings: Settings) -> dict[str, int | None]:
    """The context window of each model in use and each ``[models."SPEC"]`` (None: not
    known, so never compacted; docs/context.md)."""
    from errands.models.windows import context_window

    specs = [settings.default_model, *_specs_in_use(settings), *sorted(settings.models)]
    specs += [f"chain:{name}" for name in sorted(settings.chains)]
    return {spec: context_window(spec, settings) for spec in dict.fromkeys(specs)}


# -- doctor ------------------------------------------------------------------------------


@dataclass(slots=True)
class Check:
    subject: str  # a provider name, "default_model" or "chain:NAME"
    ok: bool
    problems: list[str] = field(default_factory=list)  # one line each: what to fix
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _list_request(kind: str, base_url: str, key: str | None) -> tuple[str, dict[str, str]]:
    base = base_url.rstrip("/")
    if kind == "anthropic":
        headers = {"anthropic-version": "2023-06-01"}
        if key:
            headers["x-api-key"] = key
        return f"{base}/v1/models?limit=1000", headers
    if kind == "gemini":
        return f"{base}/v1beta/models?pageSize=1000", ({"x-goog-api-key": key} if key else {})
    return f"{base}/models", ({"Authorization": f"Bearer {key}"} if key else {})


def _model_ids(kind: str, body: Any) -> list[str]:
    items = body.get("models" if kind == "gemini" else "data") if isinstance(body, dict) else None
    ids: list[str] = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            raw = item.get("name" if kind == "gemini" else "id")
            if isinstance(raw, str):
                ids.append(raw.removeprefix("models/"))
    return ids


def _key_hint(info: ProviderInfo) -> str:
    names = " or ".join(f"${n}" for n in info.key_names) or "its key"
    return (
        f"set {names} (or: keyring set errands {info.key_names[0] if info.key_names else 'NAME'})"
    )


def _probe(info: ProviderInfo, check: Check, timeout: float) -> None:
    found = find_key(*info.key_names)
    key = found[0] if found else None
    url, headers = _list_request(info.kind, info.base_url, key)
    shown = url.split("?", 1)[0]
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            response = client.get(url, headers=headers)
    except httpx.TimeoutException:
        check.problems.append(
            f"{info.name}: {shown} did not answer within {timeout:g}s -- check base_url "
            "and that the server is up"
        )
        return
    except httpx.HTTPError as exc:
        reason = type(exc).__name__
        check.problems.append(
            f"{info.name}: cannot reach {shown} ({reason}) -- check base_url "
            f"({info.base_url_from}) and the network"
        )
        return
    status = response.status_code
    key_rejected = status in (401, 403) or (
        info.kind == "gemini" and status == 400 and "API key" in response.text
    )
    if key_rejected:
        what = "was rejected" if key else "is required"
        check.problems.append(
            f"{info.name}: the key {what} by {shown} (HTTP {status}) -- {_key_hint(info)}"
        )
        return
    if status in (404, 405):
        check.notes.append(f"{shown} answers but does not list models (HTTP {status})")
        return
    if status >= 400:
        check.problems.append(
            f"{info.name}: {shown} answered HTTP {status} -- check base_url ({info.base_url_from})"
        )
        return
    try:
        ids = _model_ids(info.kind, response.json())
    except ValueError:
        check.notes.append(f"{shown} answered, but not with a JSON model list")
        return
    if not ids:
        check.notes.append(f"{shown} reachable; it lists no models, so names are not checked")
        return
    check.notes.append(f"{shown} reachable, key accepted, {len(ids)} models listed")
    for model in info.models_in_use:
        if model not in ids:
            sample = ", ".join(sorted(ids)[:5])
            check.problems.append(
                f"{info.name}: model {model!r} is not among the models {shown} lists "
                f"(e.g. {sample}) -- fix the model name in the config or --model"
            )


def _in_use(info: ProviderInfo) -> bool:
    return info.named or bool(info.models_in_use) or info.key == "set"


def doctor(settings: Settings, timeout: float = 5.0) -> list[Check]:
    """Check the default model, the chains and every provider in use (see the module)."""
    checks: list[Check] = []
    specs = [("default_model", settings.default_model)]
    specs += [(f"chain:{n}", f"chain:{n}") for n in sorted(settings.chains)]
    for subject, spec in specs:
        check = Check(subject, True)
        try:
            check_spec(spec, settings)
            members = settings.chains.get(spec.removeprefix(CHAIN_PREFIX), [spec])
            check.notes.append(
                ("resolves: " if subject == "default_model" else "members resolve: ")
                + ", ".join(members)
            )
        except ModelSpecError as exc:
            check.problems.append(f"{subject}: {exc}")
        checks.append(check)
    names = list(BUILTIN) + [n for n in sorted(settings.providers) if n not in BUILTIN]
    probed: dict[tuple[str, tuple[str, ...]], str] = {}  # (model-list URL, key names) -> who
    for name in names:
        info = _provider_info(name, settings)
        if not _in_use(info):
            continue
        check = Check(name, True)
        checks.append(check)
        same = (_list_request(info.kind, info.base_url, None)[0], tuple(info.key_names))
        if same in probed and not info.models_in_use:
            check.notes.append(f"same endpoint and key as {probed[same]} (checked there)")
            continue
        probed.setdefault(same, name)
        if not info.supported:
            check.problems.append(
                f"{name}: kind {info.kind!r} is not one errands knows -- use one of "
                + ", ".join(BUILTIN)
            )
            continue
        if info.sdk != "installed":
            check.problems.append(f"{name}: the {info.kind} SDK is {info.sdk}")
        if info.key == "missing":
            check.problems.append(f"{name}: no API key -- {_key_hint(info)}")
            continue  # a request without the key says nothing more
        _probe(info, check, timeout)
    checks.append(_budget_check(settings))
    for check in checks:
        check.ok = not check.problems
    return checks


def _budget_check(settings: Settings) -> Check:
    """A budget counts only what has a price: a capped provider API model without one
    would be called without ever being counted (docs/budgets.md)."""
    check = Check("budget", True)
    daily, errand = settings.budget.daily_usd, settings.limits.max_cost_usd
    caps = [f"daily ${daily:.2f}" if daily is not None else "no daily cap"]
    caps.append(f"each errand ${errand:.2f}" if errand is not None else "no default errand cap")
    check.notes.append(", ".join(caps))
    if daily is None and errand is None:
        return check
    probe = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    for spec in _specs_in_use(settings):
        provider = spec.partition(":")[0]
        if provider == "scripted" or cost_usd(spec, probe, settings.prices) > 0:
            continue
        fix = f'add [prices."{spec}"] input = ..., output = ... (USD per million tokens)'
        if provider in BUILTIN:
            check.problems.append(
                f"budget: {spec} has no known price, so a budget cannot count its calls -- {fix}"
            )
        else:  # a named endpoint: often a local server that costs nothing
            check.notes.append(f"{spec} has no price: counted as free ({fix} if it is not)")
    return check
