"""``errands doctor``'s sandbox line: can the shell run here, and what is missing.

Checks bubblewrap (installed, its version), user namespaces (the sysctls that switch
them off, then a real sandbox started once), the ``pids`` cgroup errands puts each
sandbox in (when errands runs as root the kernel's per-user process limit does not bind
it, and only the cgroup and a watchdog cap a fork bomb), and the sandbox's ``python3``
that bridges to the egress proxy (needed once ``[network] egress_allow`` lists a host).
Each problem comes with the one line that fixes it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from errands.tools.netguard import egress_entries
from errands.tools.sandbox.bwrap import Sandbox, SandboxUnavailable, pids_cgroup, remove_cgroup
from errands.tools.sandbox.egress import PYTHON, Egress, egress_session

__all__ = ["SandboxReport", "sandbox_report"]

_SYSCTLS = (  # (file, the value that blocks user namespaces, the fix)
    ("/proc/sys/user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    (
        "/proc/sys/kernel/unprivileged_userns_clone",
        "0",
        "sysctl -w kernel.unprivileged_userns_clone=1",
    ),
    (
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        "1",
        "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile "
        "for bwrap)",
    ),
)


@dataclass
class SandboxReport:
    subject: str = "sandbox"
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def sandbox_report(sandbox: Sandbox | None = None, egress_wanted: bool = False) -> SandboxReport:
    """What works and what to fix for the shell's sandbox on this machine."""
    sandbox = sandbox or Sandbox()
    report = SandboxReport()
    if sandbox.bwrap:
        try:
            version = subprocess.run(
                [sandbox.bwrap, "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = "bwrap"
        report.notes.append(version or "bwrap")
    unprivileged = os.geteuid() != 0
    for path, blocking, fix in _SYSCTLS:
        if _read(path) == blocking and (unprivileged or path.endswith("namespaces")):
            report.problems.append(f"user namespaces are switched off ({path} = {blocking}): {fix}")
    try:
        sandbox.check()
        report.notes.append("a sandbox starts (user, PID, network namespaces)")
    except SandboxUnavailable as exc:
        report.problems.append(str(exc))
    group = pids_cgroup(16)
    if group is not None:
        remove_cgroup(group)
        report.notes.append("a pids cgroup per sandbox")
    elif not unprivileged:
        report.problems.append(
            "errands runs as root but cannot make a pids cgroup (the kernel's process limit "
            "does not bind root, so only a watchdog caps a fork bomb): mount the pids "
            "controller (cgroup v2: `echo +pids > /sys/fs/cgroup/cgroup.subtree_control`) "
            "or run errands as an ordinary user"
        )
    if PYTHON.is_file():
        if not report.problems:
            problem = asyncio.run(_egress_round_trip(sandbox))
            if problem:
                report.problems.append(problem)
            else:
                report.notes.append(f"egress through errands' proxy works ({PYTHON} bridges)")
    elif egress_wanted:
        report.problems.append(
            f"[network] egress_allow is set but the sandbox has no {PYTHON} for the egress "
            "bridge: apt-get install python3-minimal"
        )
    report.ok = not report.problems
    return report


_ANSWER = b"errands-doctor-ok"


async def _egress_round_trip(sandbox: Sandbox) -> str:
    """ "" when a request from inside the sandbox reaches a server on this machine's
    loopback through the bridge and the proxy; else what went wrong."""
    from errands.config import NetworkSettings, Settings

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_ANSWER), _ANSWER))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    where = f"127.0.0.1:{port}"
    settings = Settings(
        network=NetworkSettings(allow_private=["127.0.0.1/32"], egress_allow=[where])
    )
    command = (
        'python3 -c "import urllib.request as u; '
        f"print(u.urlopen('http://{where}/', timeout=10).read().decode())\""
    )
    try:
        plan = Egress(egress_entries([where]))
        with tempfile.TemporaryDirectory(prefix="errands-doctor-") as tmp:
            async with egress_session(plan, settings) as (extras, _):
                ran = await sandbox.run(command, Path(tmp), 30, extras=extras)
    except Exception as exc:  # what doctor reports, whatever it is
        return f"egress through errands' proxy failed: {exc}"
    finally:
        server.close()
    if _ANSWER.decode() in ran.stdout.decode("utf-8", "replace"):
        return ""
    said = (ran.stderr or ran.stdout).decode("utf-8", "replace").strip().splitlines()
    return (
        "a request from the sandbox did not get through errands' egress proxy "
        f"({said[-1] if said else 'no output'}); see docs/security.md §15"
    )
