"""``errands service install|status|uninstall``: the systemd unit, and what systemctl is told.

systemd is not running in the test container (``/run/systemd/system`` is absent), so the
commands run against a fake ``systemctl`` on PATH that records its arguments and says a
manager is there; the real ``systemctl`` (which says ``offline``) shows the path without
systemd; ``systemd-analyze verify`` -- the real one -- checks the unit files it writes.
Everything happens under a temporary HOME. The unit's sandboxing is simulated with the
same kernel features (a read-only /, NoNewPrivileges, a user namespace) and errands
doctor starts a real bubblewrap sandbox under it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.server import running, write_config

from errands.service import unit as units
from errands.service.systemd import up_command
from errands.service.unit import UnitSpec, render

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$SYSTEMCTL_LOG"
case "$*" in
  *is-system-running*) echo running ;;
  *is-enabled*) echo enabled ;;
  *is-active*) echo active ;;
esac
exit 0
"""
# directives that would break the shell tool's bubblewrap sandbox
BREAKS_BWRAP = ("RestrictNamespaces", "SystemCallFilter", "PrivateDevices", "ProtectControlGroups")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as systemd reads it: sections of (key, value), repeated keys kept,
    comments and blank lines skipped."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"a setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, (key, found)
    return found[0]


def unquoted(value: str) -> str:
    """One systemd value that may be quoted, as a string (%% back to %)."""
    words = shlex.split(value)
    assert len(words) == 1, value
    return words[0].replace("%%", "%")


def check_unit(text: str, spec: UnitSpec) -> None:
    unit = parse_unit(text)
    service = unit["Service"]
    assert one(service, "Restart") == "on-failure"
    assert unquoted(one(service, "Environment")) == f"ERRANDS_HOME={spec.home}"
    assert one(service, "WorkingDirectory").replace("%%", "%") == str(spec.home)
    command = [
        w.replace("%%", "%").replace("$$", "$") for w in shlex.split(one(service, "ExecStart"))
    ]
    assert command == list(spec.command)
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "PrivateTmp") == "yes"
    assert one(service, "NoNewPrivileges") == "yes"
    writable = [unquoted(v) for v in values(service, "ReadWritePaths")]
    assert writable[0] == str(spec.home)
    for path in spec.writable:
        assert str(path) in writable or path.is_relative_to(spec.home), (path, writable)
    for key in BREAKS_BWRAP:
        assert not values(service, key), f"{key}= breaks the bubblewrap sandbox"
    wanted = "default.target" if spec.scope == "user" else "multi-user.target"
    assert one(unit["Install"], "WantedBy") == wanted


def spec_for(tmp_path: Path, scope: units.Scope = "user", user: str | None = None) -> UnitSpec:
    return UnitSpec(
        scope=scope,
        home=tmp_path / "errands home 100%",
        command=up_command(),
        writable=[tmp_path / "errands home 100%" / "workspaces", tmp_path / "projects"],
        user=user,
        version="test",
    )


@pytest.mark.parametrize(("scope", "user"), [("user", None), ("system", "nobody")])
def test_the_unit_says_what_it_must(tmp_path: Path, scope: units.Scope, user: str | None) -> None:
    spec = spec_for(tmp_path, scope, user)
    text = render(spec)
    check_unit(text, spec)
    service = parse_unit(text)["Service"]
    if scope == "system":
        assert one(service, "User") == "nobody"
    else:
        assert one(service, "PrivateUsers") == "yes" and not values(service, "User")
    assert render(spec) == text  # the same spec, the same bytes


def test_negative_control_a_bwrap_breaking_unit_is_caught(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    text = render(spec).replace("[Install]", "RestrictNamespaces=yes\n\n[Install]")
    with pytest.raises(AssertionError, match="breaks the bubblewrap sandbox"):
        check_unit(text, spec)


def analyze(path: Path, scope: units.Scope, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    assert binary is not None, "systemd-analyze is missing: apt-get install systemd"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "warning"}
    args = [binary, "verify", *(["--user"] if scope == "user" else []), str(path)]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("scope", ["user", "system"])
def test_systemd_analyze_verifies_the_unit(tmp_path: Path, scope: units.Scope) -> None:
    spec = spec_for(tmp_path, scope, "nobody" if scope == "system" else None)
    spec.home.mkdir()
    path = tmp_path / "errands.service"
    path.write_text(render(spec))
    done = analyze(path, scope, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout


def test_negative_control_systemd_analyze_refuses_a_quoted_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # quoting every path the way a command line's words are quoted: systemd reads
    # WorkingDirectory= verbatim, and the unit would not start
    monkeypatch.setattr(units, "literal", lambda p: units.quote(str(p)))
    spec = spec_for(tmp_path)
    spec.home.mkdir()
    path = tmp_path / "errands.service"
    path.write_text(render(spec))
    done = analyze(path, "user", tmp_path)
    assert done.returncode != 0 and "WorkingDirectory" in done.stderr, done.stderr


# -- the commands, in a temporary HOME ---------------------------------------------------------


class Machine:
    """A temporary HOME, a PATH with (or without) a fake systemctl, and the CLI."""

    def __init__(self, tmp_path: Path, systemctl: str) -> None:
        self.root = tmp_path
        self.home = tmp_path / "user"
        self.errands_home = self.home / ".local" / "share" / "errands"
        self.log = tmp_path / "systemctl.log"
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        if systemctl == "fake":
            fake = self.bin / "systemctl"
            fake.write_text(FAKE_SYSTEMCTL)
            fake.chmod(0o755)
        elif systemctl == "real":
            real = shutil.which("systemctl")
            assert real is not None, "systemctl is missing: apt-get install systemd"
            (self.bin / "systemctl").symlink_to(real)
        self.unit = self.home / ".config" / "systemd" / "user" / "errands.service"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ERRANDS_", "XDG_", "SUDO_", "PYTEST_"))
        }
        env.update(
            HOME=str(self.home),
            PATH=str(self.bin),
            SYSTEMCTL_LOG=str(self.log),
            NO_COLOR="1",
            COLUMNS="200",
        )
        cmd = [sys.executable, "-m", "errands", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    def calls(self) -> list[str]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        self.log.unlink()
        return lines


def told(*calls: str) -> list[str]:
    return [f"--user {c}" for c in calls]


def test_install_and_uninstall_are_idempotent(tmp_path: Path) -> None:
    m = Machine(tmp_path, "fake")
    first = m.run("service", "install")
    assert first.returncode == 0, first.stderr
    assert f"wrote {m.unit}" in first.stdout
    assert "enabled and started" in first.stdout
    text = m.unit.read_text()
    spec = UnitSpec(
        scope="user",
        home=m.errands_home.resolve(),
        command=up_command(),
        writable=[m.errands_home.resolve() / "workspaces"],
        version="test",
    )
    check_unit(text, spec)
    assert m.errands_home.is_dir() and (m.errands_home / "workspaces").is_dir()
    env_file = m.errands_home / "service.env"  # for keys: 0600, comments only at first
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert all(line.startswith("#") for line in env_file.read_text().splitlines())
    env_file.write_text("OPENAI_API_KEY=sk-kept\n")  # the person's: kept by installs
    assert m.calls() == told("is-system-running", "daemon-reload", "enable --now errands.service")
    again = m.run("service", "install")
    assert again.returncode == 0 and "already installed (unchanged)" in again.stdout
    assert m.unit.read_text() == text
    assert "--user restart errands.service" not in m.calls()
    assert env_file.read_text() == "OPENAI_API_KEY=sk-kept\n"
    # a changed installation (a workspace root added): the unit is rewritten and restarted
    roots = tmp_path / "projects"
    roots.mkdir()
    (m.errands_home / "errands.toml").write_text(f'[workspaces]\nroots = ["{roots}"]\n')
    changed = m.run("service", "install")
    assert changed.returncode == 0 and f"updated {m.unit}" in changed.stdout, changed.stderr
    assert f"ReadWritePaths={roots}" in m.unit.read_text()
    assert m.calls()[-1] == "--user restart errands.service"
    status = m.run("service", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert '"enabled": "enabled"' in status.stdout and '"active": "active"' in status.stdout
    m.calls()
    gone = m.run("service", "uninstall")
    assert gone.returncode == 0 and f"removed {m.unit}" in gone.stdout, gone.stderr
    assert not m.unit.exists() and m.errands_home.is_dir()  # the home stays
    assert m.calls() == told("is-system-running", "disable --now errands.service", "daemon-reload")
    twice = m.run("service", "uninstall")
    assert twice.returncode == 0 and "nothing to remove" in twice.stdout
    assert m.calls() == []


@pytest.mark.parametrize(
    ("systemctl", "why"),
    [
        ("real", "your user's systemd is not running here (systemctl says: offline)"),
        ("none", "there is no systemctl on PATH"),
    ],
)
def test_without_systemd_it_says_what_to_run_instead(
    tmp_path: Path, systemctl: str, why: str
) -> None:
    assert not Path("/run/systemd/system").exists(), "systemd runs here: test it for real"
    m = Machine(tmp_path, systemctl)
    done = m.run("service", "install")
    assert done.returncode == 0, done.stderr
    said = done.stdout
    assert f"not started: {why}." in said, said
    assert f"ERRANDS_HOME={m.errands_home.resolve()} {shlex.join(up_command())}" in said
    assert m.unit.exists() and "Traceback" not in done.stderr
    status = m.run("service", "status")
    assert f"installed: yes\nsystemd: {why}" in status.stdout


# -- the unit's sandbox, simulated: bubblewrap still starts under it -------------------------------

# What the unit's sandboxing does to errands up, made with the same kernel features (the
# test runs as root, like the CI): a mount namespace where / is read-only but for /tmp
# (PrivateTmp: a writable /tmp of its own) and the home (ReadWritePaths), no new
# privileges (setpriv), inside a user namespace of its own (PrivateUsers). errands doctor
# then starts a real bubblewrap sandbox in it.
SANDBOXED = """
set -e
mount --make-rprivate /
mount --bind /tmp /tmp
{home_bind}
mount -o remount,bind,ro /
if touch /.errands-ro-check 2>/dev/null; then echo "/ is writable"; exit 3; fi
exec setpriv --no-new-privs unshare --user --map-root-user "$@"
"""


MAKE_STORE = """
import asyncio, sys
from errands.store.sqlite import SQLiteStore
asyncio.run(SQLiteStore(sys.argv[1]).close())
"""


def doctor_in_the_units_sandbox(
    home: Path, writable_home: bool
) -> subprocess.CompletedProcess[str]:
    assert os.geteuid() == 0, "the simulation makes namespaces: run the tests as root (CI does)"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = subprocess.run(  # a store in the home, for doctor to try a write on
        [sys.executable, "-c", MAKE_STORE, str(home / "errands.sqlite")], timeout=60, check=True
    )
    assert made.returncode == 0
    bind = f"mount --bind {shlex.quote(str(home))} {shlex.quote(str(home))}"
    if not writable_home:  # (the control: the home left read-only, like the rest)
        bind += f" && mount -o remount,bind,ro {shlex.quote(str(home))}"
    script = SANDBOXED.format(home_bind=bind)
    env = {**os.environ, "ERRANDS_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    cmd = [
        "unshare",
        "--mount",
        "sh",
        "-c",
        script,
        "sh",
        sys.executable,
        "-m",
        "errands",
        "doctor",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_bubblewrap_starts_under_the_units_sandboxing(tmp_path: Path) -> None:
    done = doctor_in_the_units_sandbox(tmp_path / "home", writable_home=True)
    lines = done.stdout.splitlines()
    sandbox = [line for line in lines if "sandbox:" in line]
    assert sandbox and sandbox[0].startswith("ok"), done.stdout + done.stderr
    assert "a sandbox starts" in sandbox[0], sandbox
    assert "everything checks out" in done.stdout, done.stdout + done.stderr


def test_negative_control_the_simulation_really_makes_the_system_read_only(tmp_path: Path) -> None:
    done = doctor_in_the_units_sandbox(tmp_path / "home", writable_home=False)
    assert "everything checks out" not in done.stdout, done.stdout
    assert "store: cannot write" in done.stdout, done.stdout + done.stderr


def test_status_says_whether_the_server_is_ready(tmp_path: Path) -> None:
    m = Machine(tmp_path, "real")
    home = tmp_path / "errands-home"
    write_config(home)
    before = m.run("--home", str(home), "service", "status", "--json")
    assert json.loads(before.stdout)["server"] == f"no errands up is running for {home}"
    with running(home) as server:
        said = json.loads(m.run("--home", str(home), "service", "status", "--json").stdout)
    assert said["server"] == f"ready at {server.url}/ (pid {server.proc.pid})", said
    assert said["installed"] == "no"


def test_a_system_unit_is_enabled_through_the_system_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from errands.service import systemd

    m = Machine(tmp_path, "fake")
    unit = tmp_path / "etc" / "errands.service"
    monkeypatch.setattr(systemd, "unit_path", lambda scope: unit)  # (not the real /etc)
    monkeypatch.setenv("PATH", str(m.bin))
    monkeypatch.setenv("SYSTEMCTL_LOG", str(m.log))
    spec = spec_for(tmp_path, "system", "nobody")
    done = systemd.install(spec)
    assert done.changed and unit.read_text() == render(spec)
    assert m.calls() == ["is-system-running", "daemon-reload", "enable --now errands.service"]
    assert systemd.uninstall("system").changed and not unit.exists()
    assert m.calls() == ["is-system-running", "disable --now errands.service", "daemon-reload"]
