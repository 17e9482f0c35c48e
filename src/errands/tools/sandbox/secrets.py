"""Secrets a shell command uses by name, and the redaction of their values in its output.

A call names secrets (``shell(..., secrets=["GITHUB_TOKEN"])``); each must be declared in
errands.toml (``[secrets.GITHUB_TOKEN] env = "GH_TOKEN", hosts = ["github.com"]``, the
value in errands' environment variable ``env``, NAME by default, as for ``secret:NAME``
elsewhere). The sandbox gets the value as the environment variable NAME and nothing
else of errands' environment; the model, the approval card and the log see the name.

Whatever the command prints is redacted before it goes anywhere: every declared secret
that errands holds a value for is replaced with ``[REDACTED:NAME]`` -- as written, URL-
and JSON-escaped, base64 (errands' store redactor, :class:`errands.store.redact.Redactor`)
and hex (either case) -- whether or not the call named it.

A command can also leave a secret in the workspace for a later command to send. So the
names given in a workspace are remembered outside it (``ERRANDS_HOME/sandbox-taint``),
and every later call in that workspace is held to those secrets' hosts as if it carried
them (:func:`workspace_secret_hosts`). Deleting the workspace's file there lifts it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from errands.store.redact import MIN_SECRET_LENGTH, Redactor
from errands.tools.sandbox.proxy import SecretHosts
from errands.tools.tool import ToolArgumentError, ToolError

if TYPE_CHECKING:
    from errands.config import Settings

__all__ = [
    "Redact",
    "call_secrets",
    "declared_values",
    "given_before",
    "remember_given",
    "secret_redactor",
    "workspace_secret_hosts",
]

ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


# the sandbox's own variables (the allowlist, the proxy's), which no secret may replace
RESERVED = frozenset({"PATH", "HOME", "LANG", "TERM", "HTTP_PROXY", "HTTPS_PROXY", "PWD"})


class Redact(Protocol):
    def __call__(self, text: str) -> str: ...


def call_secrets(
    settings: Settings, names: Iterable[str], environ: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[SecretHosts]]:
    """The values of the secrets a call names (as NAME -> value for the sandbox's
    environment) and where each may go; one clear error for a name that is not declared,
    not set, or not a usable variable name."""
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    hosts: list[SecretHosts] = []
    for name in dict.fromkeys(names):
        declared = settings.secrets.get(name)
        if declared is None:
            known = ", ".join(sorted(settings.secrets)) or "none"
            raise ToolArgumentError(
                f"shell: no secret named {name} in errands.toml (declared: {known}); the "
                f'person declares it and where it may go: [secrets.{name}] hosts = ["example.com"]'
            )
        if name.upper() in RESERVED:
            raise ToolArgumentError(
                f"shell: the secret {name} would replace the sandbox's own {name} variable; "
                "rename it in errands.toml"
            )
        if not name or name[0].isdigit() or not set(name) <= ENV_NAME_CHARS:
            raise ToolArgumentError(
                f"shell: the secret {name} cannot be an environment variable's name "
                "(letters, digits and _ only); rename it in errands.toml"
            )
        value = environ.get(declared.env or name)
        if not value:
            raise ToolError(
                f"shell: the secret {name} is not set: errands' environment has no "
                f"{declared.env or name}"
            )
        if len(value) < MIN_SECRET_LENGTH:  # too short to find in output without noise
            raise ToolError(
                f"shell: the secret {name} is shorter than {MIN_SECRET_LENGTH} characters, "
                "too short to be redacted from a command's output; it is not given to one"
            )
        values[name] = value
        hosts.append(SecretHosts(name, tuple(declared.hosts)))
    return values, hosts


def _taint_file(settings: Settings, workspace: Path) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.realpath(workspace))).hexdigest()[:32]
    return settings.home / "sandbox-taint" / key


def remember_given(settings: Settings, workspace: Path, names: Iterable[str]) -> None:
    """Note, outside the workspace, that *names* were given to a command in *workspace*
    (before it runs): the command may have left them there for a later one."""
    given = set(names)
    if not given:
        return
    path = _taint_file(settings, workspace)
    known = set(given_before(settings, workspace))
    if given <= known:
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as fh:
        fh.write(
            f"# {os.path.realpath(workspace)}\n" + "".join(f"{n}\n" for n in sorted(known | given))
        )
    os.replace(fh.name, path)


def given_before(settings: Settings, workspace: Path) -> list[str]:
    """The secrets given to commands in *workspace* so far."""
    try:
        text = _taint_file(settings, workspace).read_text(encoding="utf-8")
    except OSError:
        return []
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def workspace_secret_hosts(
    settings: Settings, workspace: Path, carried: Iterable[str]
) -> list[SecretHosts]:
    """Where the secrets an earlier call left in *workspace* may go (a secret no longer
    declared: nowhere), for those this call does not carry itself."""
    out = []
    for name in given_before(settings, workspace):
        if name in carried:
            continue
        declared = settings.secrets.get(name)
        hosts = tuple(declared.hosts) if declared is not None else ()
        out.append(SecretHosts(name, hosts, earlier=True))
    return out


def declared_values(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every declared secret errands holds a value for, by name."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, declared in settings.secrets.items():
        value = environ.get(declared.env or name)
        if value:
            out[name] = value
    return out


def secret_redactor(secrets: Mapping[str, str]) -> Redact:
    """A redactor for *secrets*' values in their common spellings, hex included."""
    redactor = Redactor(secrets)
    for name, value in secrets.items():
        raw = value.encode("utf-8", "surrogatepass")
        redactor.add(name, raw.hex())
        redactor.add(name, raw.hex().upper())
    return _CutSafe(redactor, secrets)


class _CutSafe:
    """A redactor that also drops the start of a secret where the text ends (output cut
    off at its cap may end inside a secret)."""

    def __init__(self, inner: Redact, secrets: Mapping[str, str]) -> None:
        self.inner = inner
        self.values = [v for v in secrets.values() if v]

    def __call__(self, text: str) -> str:
        text = self.inner(text)
        for value in self.values:
            for size in range(min(len(value) - 1, len(text)), 3, -1):
                if text.endswith(value[:size]):
                    return text[:-size] + "[REDACTED]"
        return text
