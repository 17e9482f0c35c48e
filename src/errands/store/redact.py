"""Redaction of known secret values before anything reaches the log."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping

__all__ = ["Redactor", "secret_env_values"]

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
MIN_SECRET_LENGTH = 8


def secret_env_values(
    environ: Mapping[str, str] | None = None, extra_names: Iterable[str] = ()
) -> dict[str, str]:
    """The values of environment variables that hold secrets, by name."""
    environ = os.environ if environ is None else environ
    names = {n for n in environ if _SECRET_NAME.search(n)} | set(extra_names)
    return {n: environ[n] for n in names if len(environ.get(n, "")) >= MIN_SECRET_LENGTH}


class Redactor:
    """Replaces every occurrence of a known secret value with ``[REDACTED:NAME]``.

    It works on serialised JSON text, so it also catches the JSON-escaped spelling
    of a secret that contains quotes or backslashes.
    """

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self._pairs: list[tuple[str, str]] = []
        for name, value in (secrets or {}).items():
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        if len(value) < MIN_SECRET_LENGTH:
            return
        marker = f"[REDACTED:{name}]"
        spellings = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        for spelling in sorted(spellings, key=len, reverse=True):
            self._pairs.append((spelling, marker))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __call__(self, text: str) -> str:
        for value, marker in self._pairs:
            if value in text:
                text = text.replace(value, marker)
        return text
