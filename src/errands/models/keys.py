"""API keys: from the environment, else from the OS keyring when there is one.

A key is looked up by the *name* of its variable (``OPENAI_API_KEY``, or the
``api_key_env`` of a named endpoint): the environment first, then -- only when the
optional ``keyring`` package is installed (``pip install 'errands[keyring]'``) -- the OS
keyring, service ``errands``, user = that name::

    keyring set errands ANTHROPIC_API_KEY

A machine without a keyring backend (a headless server) falls back silently to the
environment alone; ``ERRANDS_NO_KEYRING=1`` skips the keyring altogether. Key values
are handed to the provider clients and nowhere else: :class:`KeyStatus` (what
``errands models`` and ``errands doctor`` report) holds whether a key is set and where
from, never the value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_KEY_ENVS",
    "KEYRING_SERVICE",
    "KeyStatus",
    "find_key",
    "forget_keyring_lookups",
    "key_names",
    "key_status",
]

KEYRING_SERVICE = "errands"
# the variables each kind reads when no named endpoint says otherwise, in order
DEFAULT_KEY_ENVS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "openai-responses": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
KeySource = Literal["env", "keyring"]
_keyring_cache: dict[str, str | None] = {}


def _from_keyring(name: str) -> str | None:
    if os.environ.get("ERRANDS_NO_KEYRING"):
        return None
    if name in _keyring_cache:
        return _keyring_cache[name]
    value: str | None = None
    try:
        import keyring  # type: ignore[import-not-found, unused-ignore]

        found = keyring.get_password(KEYRING_SERVICE, name)
        value = found.strip() if isinstance(found, str) and found.strip() else None
    except Exception:  # not installed, no backend (headless), locked, D-Bus down: no key
        value = None
    _keyring_cache[name] = value
    return value


def forget_keyring_lookups() -> None:
    """Look in the keyring again next time (lookups are remembered for the process)."""
    _keyring_cache.clear()


def find_key(*names: str) -> tuple[str, str, KeySource] | None:
    """The first key found under *names*: ``(value, name, source)``, or None."""
    for name in names:
        value = (os.environ.get(name) or "").strip()
        if value:
            return value, name, "env"
    for name in names:
        value = _from_keyring(name) or ""
        if value:
            return value, name, "keyring"
    return None


def key_names(kind: str, api_key_env: str | None) -> tuple[str, ...]:
    """The variable names a provider of *kind* reads its key from."""
    if api_key_env:
        return (api_key_env,)
    return DEFAULT_KEY_ENVS.get(kind, ())


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """Whether a key is present, under which name and from where -- never its value."""

    names: tuple[str, ...]
    present: bool
    name: str | None = None
    source: KeySource | None = None

    def describe(self) -> str:
        if not self.names:
            return "no key needed"
        if self.present:
            return f"set ({self.name}, from {self.source})"
        return f"missing (${' or $'.join(self.names)})"


def key_status(kind: str, api_key_env: str | None) -> KeyStatus:
    names = key_names(kind, api_key_env)
    found = find_key(*names) if names else None
    if found is None:
        return KeyStatus(names, False)
    return KeyStatus(names, True, found[1], found[2])
