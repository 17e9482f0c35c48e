"""Redaction of known secret values before anything reaches the log.

A secret is redacted in the spellings it commonly travels in, not only as written:

- **as written**, and JSON-escaped (a quote or a backslash in it, in a JSON string or in
  a JSON text held by a string);
- **URL-encoded**, in any mix: each character as itself or percent-encoded (UTF-8, hex
  in either case; ``+`` for a space) -- ``s%65cr%45t`` is ``secret``;
- **JSON-escaped**, in any mix: each character as itself, as ``\\uXXXX`` or, for a
  quote, backslash or slash, as ``\\"``, ``\\\\``, ``\\/``;
- **base64** (standard and URL-safe, with or without padding), also inside a longer
  encoded text, as in ``Authorization: Basic base64(user:secret)``: the characters that
  encode the secret's bytes are found whatever the secret's offset.

It works on serialised JSON (an event): when something is found, the string values
(and keys) are redacted one by one and the JSON is written again, so a replacement never
cuts through an escape sequence. Text that is not JSON is redacted as it is.

What it does not do: it is a net for the secrets errands knows (the environment's), in
the encodings above. A model bent on leaking one can always encode it otherwise
(reverse it, split it, hex it); stopping that is the policy's and the network guard's
job, not redaction's (docs/security.md).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Forms", "Redactor", "secret_env_values"]

# a \uXXXX escape inside a string, as serialised JSON writes it ("\\uXXXX"); a backslash
# before it is an escaped backslash of its own, left alone
_UNICODE_ESCAPE = re.compile(r"\\\\u([0-9A-Fa-f]{4})")
_PERCENT_RUN = re.compile(r"%[0-9A-Fa-f]{2}(?:%[0-9A-Fa-f]{2})*")  # (a literal first: fast)


def _json_text(text: str) -> str:
    """*text* as a JSON string writes it (a quote as \\", a backslash doubled, ...)."""
    if '"' in text or "\\" in text or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)[1:-1]
    return text


def _unescaped_unicode(m: re.Match[str]) -> str:
    return _json_text(chr(int(m.group(1), 16)))


def _unescaped_percent(m: re.Match[str]) -> str:
    return _json_text(bytes.fromhex(m.group(0).replace("%", "")).decode("utf-8", "replace"))


_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
MIN_SECRET_LENGTH = 8


def secret_env_values(
    environ: Mapping[str, str] | None = None, extra_names: Iterable[str] = ()
) -> dict[str, str]:
    """The values of environment variables that hold secrets, by name."""
    environ = os.environ if environ is None else environ
    names = {n for n in environ if _SECRET_NAME.search(n)} | set(extra_names)
    return {n: environ[n] for n in names if len(environ.get(n, "")) >= MIN_SECRET_LENGTH}


@dataclass(frozen=True)
class Forms:
    """How one secret may be spelled: fixed strings, and a pattern for mixed encodings."""

    fixed: frozenset[str]  # found with `in` as they stand (also in serialised JSON)
    pattern: str  # a regular expression for the mixed spellings, on decoded strings


def _hex_ci(byte: int) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in f"{byte:02X}")


def _char(c: str) -> str:
    """Every spelling of one character in a URL-encoded or JSON-escaped text; the
    escapes first, so that ``%25`` is read as one ``%`` rather than ``%`` and ``25``."""
    data = c.encode("utf-8", "surrogatepass")
    options = ["".join("%" + _hex_ci(b) for b in data)]
    if ord(c) <= 0xFFFF:
        high, low = divmod(ord(c), 256)
        options.append(r"\\u" + _hex_ci(high) + _hex_ci(low))
    escaped = json.dumps(c)[1:-1]
    if escaped != c:
        options.append(re.escape(escaped))
    if c == "/":
        options.append(re.escape("\\/"))
    if c == " ":
        options.append(r"\+")
    options.append(re.escape(c))
    return "(?:" + "|".join(options) + ")"


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that encode *data* at each of the three byte offsets."""
    cores: set[str] = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data).decode("ascii")
        core = encoded[(8 * k + 5) // 6 : (8 * (k + len(data))) // 6]
        if len(core) >= MIN_SECRET_LENGTH:
            cores.add(core)
            cores.add(core.translate(str.maketrans("+/", "-_")))
    return cores


class Redactor:
    """Replaces every known secret value, in its common spellings (see the module
    docstring), with ``[REDACTED:NAME]``."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self._fixed: list[tuple[str, str]] = []  # (spelling, marker), longest first
        self._needles: tuple[str, ...] = ()  # the fixed spellings, for the quick look
        self._spaced: tuple[str, ...] = ()  # the same with "+" as a space
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        self._plus = False  # a secret has a space (URL-encoded as "+")
        for name, value in (secrets or {}).items():
            self.add(name, value)

    def forms(self, value: str) -> Forms:
        """The spellings of *value* that are redacted."""
        fixed = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        fixed |= {json.dumps(f)[1:-1] for f in set(fixed)}  # a JSON text held by a string
        fixed |= _base64_cores(value.encode("utf-8", "surrogatepass"))
        return Forms(frozenset(fixed), "".join(_char(c) for c in value))

    def add(self, name: str, value: str) -> None:
        if len(value) < MIN_SECRET_LENGTH:
            return
        marker = f"[REDACTED:{name}]"
        forms = self.forms(value)
        self._fixed.extend((spelling, marker) for spelling in forms.fixed)
        self._fixed.sort(key=lambda pair: len(pair[0]), reverse=True)
        self._needles = tuple(spelling for spelling, _ in self._fixed)
        self._spaced = tuple(spelling.replace("+", " ") for spelling in self._needles)
        self._patterns.append((re.compile(forms.pattern), marker))
        self._plus = self._plus or " " in value

    def __bool__(self) -> bool:
        return bool(self._fixed)

    def _suspect(self, text: str) -> bool:
        """Might *text* hold a secret? Cheap first: the fixed spellings, one ``in`` each;
        only when *text* holds an escape at all, the same after undoing the escapes
        (candidates only: what is replaced is decided string by string)."""
        if any(map(text.__contains__, self._needles)):
            return True
        plus = self._plus and "+" in text
        if "%" not in text and "\\" not in text and not plus:
            return False
        decoded = text  # the escapes undone, what they stand for written as JSON writes it
        if "\\\\u" in decoded:  # a \uXXXX escape inside a string: "\\u" once serialised
            decoded = _UNICODE_ESCAPE.sub(_unescaped_unicode, decoded)
        if "%" in decoded:
            decoded = _PERCENT_RUN.sub(_unescaped_percent, decoded)
        if plus:  # "+" may stand for a space or for itself: look with both as one
            spaced = decoded.replace("+", " ")
            return any(map(spaced.__contains__, self._spaced))
        return decoded is not text and any(map(decoded.__contains__, self._needles))

    def redact_string(self, text: str) -> str:
        """*text* (a decoded string, not serialised JSON) with every secret replaced:
        the mixed spellings first (an escape read as one character: ``%300`` is ``00``,
        not ``%3`` and ``00``), then the fixed ones."""
        for pattern, marker in self._patterns:
            text = pattern.sub(marker, text)
        for spelling, marker in self._fixed:
            if spelling in text:
                text = text.replace(spelling, marker)
        return text

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_string(value)
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        if isinstance(value, dict):
            return {self.redact_string(k): self._walk(v) for k, v in value.items()}
        return value

    def __call__(self, text: str) -> str:
        if not self._fixed or not self._suspect(text):
            return text
        try:
            data = json.loads(text)
        except ValueError:
            return self.redact_string(text)
        redacted = self._walk(data)
        if redacted == data:
            return text
        return json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
