"""Installing, looking at and removing the unit: the file, and what ``systemctl`` is told.

Whether systemd is there is asked of ``systemctl`` itself (``is-system-running``: a
manager that answers is there, ``offline`` or no answer is not), so the unit is written
either way and started only when a manager can start it; without one the person is told
what to run instead (:data:`WITHOUT_SYSTEMD`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from errands.errors import UserError
from errands.service.unit import SERVICE_NAME, Scope, UnitSpec, quote, render

__all__ = [
    "MANAGER_UP",
    "Outcome",
    "install",
    "manager",
    "status",
    "uninstall",
    "unit_path",
    "up_command",
    "without_systemd",
]

# what ``systemctl is-system-running`` prints while a manager is there
MANAGER_UP = frozenset({"initializing", "starting", "running", "degraded", "maintenance"})
SYSTEMCTL_TIMEOUT = 30.0


@dataclass
class Outcome:
    """What a command did: the lines to tell the person, and whether anything changed."""

    path: Path
    changed: bool = False
    lines: list[str] = field(default_factory=list)


def unit_path(scope: Scope) -> Path:
    """Where the unit lives: the user's ``~/.config/systemd/user`` (``$XDG_CONFIG_HOME``
    if set), or ``/etc/systemd/system``."""
    if scope == "system":
        return Path("/etc/systemd/system") / SERVICE_NAME
    config = os.environ.get("XDG_CONFIG_HOME", "").strip()
    base = Path(config) if config and os.path.isabs(config) else Path.home() / ".config"
    return base / "systemd" / "user" / SERVICE_NAME


def up_command(config: str | None = None) -> list[str]:
    """The exact command line of this installation's ``errands up``: this interpreter
    (its virtual environment's, if any) running errands (ERRANDS_HOME comes from the
    unit's environment)."""
    args = [sys.executable, "-m", "errands"]
    if config:
        args += ["--config", str(Path(config).expanduser().resolve())]
    return [*args, "up"]


def _systemctl(scope: Scope, *args: str) -> subprocess.CompletedProcess[str] | None:
    """Run ``systemctl [--user] ARGS``; None when there is no systemctl to run."""
    binary = shutil.which("systemctl")
    if binary is None:
        return None
    cmd = [binary, *(["--user"] if scope == "user" else []), *args]
    try:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, "", str(exc))


def manager(scope: Scope) -> str | None:
    """Why no systemd manager can run the unit here; None when one is there."""
    answer = _systemctl(scope, "is-system-running")
    if answer is None:
        return "there is no systemctl on PATH"
    said = answer.stdout.strip().splitlines()[-1:] or [answer.stderr.strip() or "no answer"]
    if said[0] in MANAGER_UP:
        return None
    where = "your user's systemd" if scope == "user" else "systemd"
    return f"{where} is not running here (systemctl says: {said[0]})"


def _must(scope: Scope, *args: str) -> None:
    answer = _systemctl(scope, *args)
    if answer is None or answer.returncode != 0:
        said = "" if answer is None else (answer.stderr or answer.stdout).strip()
        flag = "--user " if scope == "user" else ""
        raise UserError(f"systemctl {flag}{' '.join(args)} failed: {said or 'no systemctl'}")


def without_systemd(spec: UnitSpec, why: str) -> list[str]:
    """What to do when no systemd manager runs the unit."""
    command = " ".join(quote(w) for w in spec.command)
    return [
        f"not started: {why}.",
        "Without systemd, run errands up under whatever keeps processes running here",
        "(a container's restart policy, runit, supervisord, a @reboot cron line), as:",
        f"  ERRANDS_HOME={quote(str(spec.home))} {command}",
        "It exits 0 on SIGTERM (every errand keeps its place) and non-zero on a failure:",
        "start it again on a failure. GET /readyz on it says when it is ready.",
    ]


def install(spec: UnitSpec) -> Outcome:
    """Write the unit (unchanged if the same), then reload, enable and start it when a
    systemd manager is there; say what to do when not."""
    path = unit_path(spec.scope)
    if spec.scope == "system" and os.geteuid() != 0:
        raise UserError("a system unit is written to /etc/systemd/system: run it as root (sudo)")
    text = render(spec)
    try:
        before = path.read_text(encoding="utf-8") if path.exists() else None
        if before != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            tmp.chmod(0o644)
            os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    done = Outcome(path, changed=before != text)
    if before is None:
        done.lines.append(f"wrote {path}")
    elif done.changed:
        done.lines.append(f"updated {path}")
    else:
        done.lines.append(f"{path} is already installed (unchanged)")
    why = manager(spec.scope)
    if why is not None:
        done.lines += without_systemd(spec, why)
        return done
    _must(spec.scope, "daemon-reload")
    _must(spec.scope, "enable", "--now", SERVICE_NAME)
    if before is not None and done.changed:
        _must(spec.scope, "restart", SERVICE_NAME)  # (the running one had the old unit)
    flag = "--user " if spec.scope == "user" else ""
    done.lines.append(f"enabled and started: systemctl {flag}status {SERVICE_NAME}")
    if spec.scope == "user":
        done.lines.append("to start it at boot without logging in: loginctl enable-linger $USER")
    return done


def uninstall(scope: Scope) -> Outcome:
    """Stop and disable the unit (when a manager is there) and remove its file."""
    path = unit_path(scope)
    if not path.exists():
        return Outcome(path, lines=[f"nothing to remove: {path} is not there"])
    if scope == "system" and os.geteuid() != 0:
        raise UserError(f"{path} belongs to root: run it as root (sudo)")
    done = Outcome(path, changed=True)
    running = manager(scope) is None
    if running:
        _must(scope, "disable", "--now", SERVICE_NAME)
    try:
        path.unlink()
    except OSError as exc:
        raise UserError(f"cannot remove {path}: {exc.strerror}") from None
    if running:
        _must(scope, "daemon-reload")
        done.lines.append(f"stopped and disabled {SERVICE_NAME}")
    done.lines.append(f"removed {path} (the home and its store are kept)")
    return done


def status(scope: Scope) -> tuple[Outcome, dict[str, str]]:
    """Whether the unit is installed, and what systemd says of it (enabled, active)."""
    path = unit_path(scope)
    found = {"unit": str(path), "installed": "yes" if path.exists() else "no"}
    why = manager(scope)
    if why is not None:
        found["systemd"] = why
        return Outcome(path), found
    for question in ("is-enabled", "is-active"):
        answer = _systemctl(scope, question, SERVICE_NAME)
        said = "" if answer is None else answer.stdout.strip()
        found[question.removeprefix("is-")] = said or "unknown"
    return Outcome(path), found
