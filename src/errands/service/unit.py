"""The systemd unit of ``errands up``: what it says, and why (each choice is a comment in it).

:func:`render` is pure: the same :class:`UnitSpec` gives the same bytes, so installing
twice changes nothing. Values are quoted the way systemd reads them (:func:`quote`):
a path with a space in double quotes, ``%`` as ``%%`` (a specifier otherwise), ``$`` as
``$$`` in a command line (a variable otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["SERVICE_NAME", "Scope", "UnitSpec", "literal", "quote", "render"]

SERVICE_NAME = "errands.service"
Scope = Literal["user", "system"]

_SPECIAL = set(" \t\n\"'\\;")


def quote(value: str, *, command: bool = False) -> str:
    """*value* as one word of a unit file's setting (of a command line: *command*)."""
    if any(ord(c) < 0x20 and c not in "\t" for c in value):
        raise ValueError(f"{value!r}: a control character cannot be in a unit file")
    value = value.replace("%", "%%")
    if command:
        value = value.replace("$", "$$")
    if not value or any(c in _SPECIAL for c in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def literal(path: Path) -> str:
    """*path* for a setting systemd reads verbatim (``WorkingDirectory=``,
    ``EnvironmentFile=``): no quotes, only ``%`` escaped."""
    text = str(path)
    if any(ord(c) < 0x20 for c in text):
        raise ValueError(f"{text!r}: a control character cannot be in a unit file")
    return text.replace("%", "%%")


@dataclass(frozen=True)
class UnitSpec:
    """What the unit is made of."""

    scope: Scope
    home: Path  # ERRANDS_HOME: the service's own
    command: Sequence[str]  # the exact command line of this installation's ``errands up``
    writable: Sequence[Path] = ()  # more paths it may write (workspace roots)
    user: str | None = None  # a system unit's User= (None: root)
    version: str = ""
    env_file: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "env_file", self.home / "service.env")


def render(spec: UnitSpec) -> str:
    """The unit file's text."""
    command = " ".join(quote(word, command=True) for word in spec.command)
    # (what lies inside the home is writable with it)
    outside = [p for p in spec.writable if not p.is_relative_to(spec.home)]
    unique = list(dict.fromkeys([spec.home, *outside]))
    lines = [
        f"# errands {spec.version}: written by `errands service install --{spec.scope}`;",
        "# `errands service uninstall` stops the service and removes this file. A change",
        "# made here is replaced by the next install: copy the unit under another name",
        "# (or use `systemctl edit`) to keep your own.",
        "",
        "[Unit]",
        "Description=errands: a self-hosted, always-on agent harness (errands up)",
        '# (README: "Run it for real")',
        # the models are reached over the network; start once it is up (it retries anyway)
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        "# The service's own home: its store, config (errands.toml, policy.toml) and",
        "# workspaces. API keys and OTEL_* variables go in service.env there (mode 0600),",
        "# never in this file, which other users may read.",
        f"Environment={quote('ERRANDS_HOME=' + str(spec.home))}",
        f"EnvironmentFile=-{literal(spec.env_file)}",
        f"WorkingDirectory={literal(spec.home)}",
        "UMask=0077",
        f"ExecStart={command}",
        "# A crash (or a kill) loses nothing: every errand resumes from the store where it",
        "# was. A clean stop (exit 0) stays stopped.",
        "Restart=on-failure",
        "RestartSec=5",
        "# SIGTERM: errands up stops accepting requests, stops its runner and workers (their",
        "# errands keep their place) and exits; mixed: the workers are stopped by the server,",
        "# and only what is left after the timeout gets SIGKILL.",
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "",
        "# Sandboxing: only what leaves the shell tool's bubblewrap sandbox working.",
        "# NoNewPrivileges: nothing the service starts gains privileges (setuid binaries).",
        "# Debian's bubblewrap is not setuid: it uses unprivileged user namespaces instead.",
        "NoNewPrivileges=yes",
        "# PrivateTmp: a /tmp of its own (the sandbox binds its own tmpfs anyway).",
        "PrivateTmp=yes",
        "# ProtectSystem=strict: the whole file system is read-only to errands except the",
        "# paths below -- its home, its workspaces' roots, its runtime directory (where",
        "# every errands up publishes its port so that no errand's network tool reaches it).",
        "# A workspace you name elsewhere needs its own ReadWritePaths= line.",
        "ProtectSystem=strict",
        *(f"ReadWritePaths={quote(str(p))}" for p in unique),
        "RuntimeDirectory=errands",
        "RuntimeDirectoryPreserve=yes",
        f"RuntimeDirectoryMode={'0700' if spec.scope == 'user' else '0755'}",
        *_scope_lines(spec),
        "# Not set, on purpose (each breaks the bubblewrap sandbox, which needs to create",
        "# user, mount, PID and network namespaces and to mount inside them):",
        "# RestrictNamespaces=, SystemCallFilter= (@mount, unshare, pivot_root),",
        "# PrivateDevices= (bwrap builds its own /dev), ProtectControlGroups= (the sandbox",
        "# makes a pids cgroup to stop fork bombs where it can), ProtectKernelTunables=.",
        "",
        "[Install]",
        f"WantedBy={'default.target' if spec.scope == 'user' else 'multi-user.target'}",
    ]
    return "\n".join(lines) + "\n"


def _scope_lines(spec: UnitSpec) -> list[str]:
    if spec.scope == "user":
        return [
            "# A user manager applies the settings above only inside a user namespace of",
            "# the service's own (systemd 258 and later imply it; say it for older ones).",
            "# bubblewrap makes its namespaces inside it: nested user namespaces are",
            "# allowed to any user.",
            "PrivateUsers=yes",
        ]
    if spec.user is None:
        return ["# No User=: it runs as root (install it as the user who owns the home)."]
    return [
        "# The user who owns the home (who ran the install); never root.",
        f"User={quote(spec.user)}",
    ]
