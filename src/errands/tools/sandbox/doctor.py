"""``errands doctor``'s sandbox line: can the shell run here, and what is missing.

Checks bubblewrap (installed, its version), user namespaces (the sysctls that switch
them off, then a real sandbox started once), the ``pids`` cgroup errands puts each
sandbox in (when errands runs as root the kernel's per-user process limit does not bind
it, and only the cgroup and a watchdog cap a fork bomb), and the sandbox's ``python3``
that bridges to the egress proxy (needed once ``[network] egress_allow`` lists a host).
Each problem comes with the one line that fixes it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from errands.tools.sandbox.bwrap import Sandbox, SandboxUnavailable, pids_cgroup, remove_cgroup
from errands.tools.sandbox.egress import PYTHON

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
        report.notes.append(f"egress bridge: {PYTHON}")
    elif egress_wanted:
        report.problems.append(
            f"[network] egress_allow is set but the sandbox has no {PYTHON} for the egress "
            "bridge: apt-get install python3-minimal"
        )
    report.ok = not report.problems
    return report
