"""Running one command line in bubblewrap: the workspace, a read-only system, nothing else.

The sandbox (``bwrap``) gets a seccomp filter (:mod:`errands.tools.sandbox.seccomp`) and
a new user, mount, PID, network, IPC, UTS and cgroup
namespace (``--unshare-all``: the network namespace holds only its own loopback, so
nothing gets out), dies with errands (``--die-with-parent``), runs in a new session (no
``TIOCSTI`` into errands' terminal) and sees, by allowlist only:

- the errand's workspace, read-write, at ``/workspace`` (its working directory and HOME);
- ``/usr`` read-only, with ``/bin``, ``/sbin``, ``/lib*`` as on the host (symlinks on a
  merged-/usr Debian), and a few ``/etc`` files: ``passwd`` and ``group`` written for the
  sandbox user, ``nsswitch.conf``, ``hosts``, ``ld.so.cache``, ``alternatives``;
- a private ``/tmp``, its own ``/proc`` and a minimal ``/dev``.

No home directory, no ``ERRANDS_HOME`` (config, policy, token, store), no sockets but
errands' egress proxy when the call has egress (:mod:`errands.tools.sandbox.egress`);
the workspace's git directory read-only (:mod:`errands.tools.sandbox.gitdirs`). The
command runs as uid/gid 65534 inside a user namespace with no capabilities, with an
environment from an allowlist (``PATH``, ``HOME=/workspace``, ``LANG``, ``TERM=dumb``,
and what the call adds: the proxy's variables, the secrets it names); bubblewrap itself
is started with exactly that environment and passes it on, so not even
``/proc/1/environ`` holds errands', and no secret is on bwrap's command line. Limits: wall time (the whole process group is killed), and per process
CPU time, address space, file size and open files (``setrlimit`` before ``exec``), a
process count (``RLIMIT_NPROC``; the kernel does not apply it to processes that are root
outside, as they are when errands runs as root, so also a ``pids`` cgroup of the
sandbox's own where errands can make one, and a watchdog that kills the sandbox when it
holds more processes), and output size (the first bytes kept,
the rest counted).

:class:`Sandbox` is the runner; tests subclass it as negative controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from errands.tools.sandbox.gitdirs import git_binds
from errands.tools.sandbox.seccomp import filter_program

__all__ = [
    "SANDBOX_ENV",
    "SANDBOX_UID",
    "WORKSPACE",
    "Extras",
    "Limits",
    "Ran",
    "Sandbox",
    "SandboxUnavailable",
    "pids_cgroup",
    "remove_cgroup",
]

WORKSPACE = "/workspace"
SANDBOX_UID = 65534
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
    "HOME": WORKSPACE,
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# (the CA certificates, public, for https through the egress proxy; never /etc/ssl itself,
# whose private/ a sandbox of root's could read: its user is errands' user outside)
_ETC_FROM_HOST = (
    "ld.so.cache",
    "alternatives",
    "localtime",
    "ssl/certs",
    "ssl/openssl.cnf",
    "pki/tls/certs",
    "pki/ca-trust/extracted",
)
_INSTALL = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: "
    "`dnf install bubblewrap`) and make sure user namespaces are enabled "
    "(`sysctl kernel.unprivileged_userns_clone=1`, or on Ubuntu 24.04+ "
    "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`)"
)


class SandboxUnavailable(Exception):
    """bubblewrap cannot run here; the message says what to install or enable."""


@dataclass(frozen=True)
class Limits:
    """What one command may use."""

    cpu_s: int | None = None  # per process; None: the wall time
    address_space: int = 4 << 30  # bytes per process
    file_size: int = 1 << 30  # bytes, any one file written
    processes: int = 256  # at once, in the sandbox
    open_files: int = 1024
    output: int = 200_000  # bytes kept of stdout and of stderr each
    output_hard: int = 64 << 20  # past this much output the command is killed


@dataclass(frozen=True)
class Extras:
    """What one call adds to the sandbox: environment variables (the proxy's, the
    secrets the call names), read-only binds (host path, path inside), and the program
    the shell runs under (the egress bridge)."""

    env: Mapping[str, str] = field(default_factory=dict)
    ro_binds: tuple[tuple[Path, str], ...] = ()
    prefix: tuple[str, ...] = ()


@dataclass
class Ran:
    """What came of one command."""

    returncode: int | None  # None: killed by errands (timeout, too many processes, output)
    stdout: bytes
    stderr: bytes
    stdout_total: int
    stderr_total: int
    seconds: float
    killed: str = ""  # why errands killed it
    limits: Limits = field(default_factory=Limits)


def _rlimits(limits: Limits, wall_s: int) -> list[tuple[int, int]]:
    cpu = limits.cpu_s if limits.cpu_s is not None else wall_s
    return [
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, limits.address_space),
        (resource.RLIMIT_FSIZE, limits.file_size),
        (resource.RLIMIT_NPROC, limits.processes),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ]


class Sandbox:
    """Runs command lines in bubblewrap. Subclassed by tests (a control without it)."""

    def __init__(self, bwrap: str | None = None) -> None:
        self.bwrap = bwrap or shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")
        self._checked: str | None = None  # "" once a probe ran cleanly, else the problem

    # -- availability -------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`SandboxUnavailable` unless bubblewrap runs here (probed once)."""
        if self._checked is None:
            self._checked = self._probe()
        if self._checked:
            raise SandboxUnavailable(self._checked)

    def _probe(self) -> str:
        if not self.bwrap:
            return (
                f"the shell sandbox needs bubblewrap (`bwrap`), which is not installed: {_INSTALL}"
            )
        with tempfile.TemporaryDirectory(prefix="errands-probe-") as tmp:
            _write_etc(Path(tmp))
            fd = self._seccomp_fd(Path(tmp))
            argv = self.argv("true", Path(tmp), Path(tmp), seccomp_fd=fd)
            try:
                done = subprocess.run(
                    argv,
                    env={},
                    capture_output=True,
                    timeout=30,
                    stdin=subprocess.DEVNULL,
                    pass_fds=() if fd is None else (fd,),
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"bubblewrap could not be started ({exc}): {_INSTALL}"
            finally:
                if fd is not None:
                    os.close(fd)
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return (
                f"bubblewrap cannot create its sandbox here ({why[-1] if why else 'no message'}):"
                f" {_INSTALL}"
            )
        return ""

    # -- the command line ---------------------------------------------------------------
    def argv(
        self,
        command: str,
        workspace: Path,
        etc: Path,
        extras: Extras | None = None,
        seccomp_fd: int | None = None,
        pinned: Sequence[tuple[int, str]] = (),
        workspace_fd: int | None = None,
    ) -> list[str]:
        """bwrap's arguments for *command* with *workspace* at /workspace, the /etc
        files in *etc*, *extras*, the seccomp filter bwrap reads from *seccomp_fd*, and
        the directories *pinned* (open descriptors: the workspace's git directory) bound
        read-only where they say; the workspace by its descriptor *workspace_fd* when
        given. The environment is not in them (:meth:`spawn_env`: bwrap passes its own
        on)."""
        assert self.bwrap is not None
        extras = extras or Extras()
        args = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_UID),
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            top = Path("/") / name
            if top.is_symlink():
                args += ["--symlink", os.readlink(top), str(top)]
            elif top.is_dir():
                args += ["--ro-bind", str(top), str(top)]
        for name in ("passwd", "group", "nsswitch.conf", "hosts"):
            args += ["--ro-bind", str(etc / name), f"/etc/{name}"]
        for name in _ETC_FROM_HOST:
            if (Path("/etc") / name).exists():
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        args += [
            "--tmpfs",
            "/tmp",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            *(
                ["--bind", str(workspace), WORKSPACE]
                if workspace_fd is None
                else ["--bind-fd", str(workspace_fd), WORKSPACE]
            ),
            "--chdir",
            WORKSPACE,
        ]
        for fd, target in pinned:
            args += ["--ro-bind-fd", str(fd), target]
        for source, target in extras.ro_binds:
            args += ["--ro-bind", str(source), target]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        shell = "/bin/bash" if Path("/usr/bin/bash").exists() else "/bin/sh"
        return [*args, "--", *extras.prefix, shell, "-c", command]

    def seccomp_program(self) -> bytes | None:
        """The seccomp filter (:mod:`errands.tools.sandbox.seccomp`); None: none."""
        return filter_program()

    def _seccomp_fd(self, where: Path) -> int | None:
        """A descriptor to read the filter from (written into *where*), or None."""
        program = self.seccomp_program()
        if program is None:
            return None
        path = where / "seccomp.bpf"
        path.write_bytes(program)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def git_binds(self, workspace: Path) -> list[tuple[Path, str]]:
        """The workspace's git directory, bound read-only over the read-write workspace
        (:mod:`errands.tools.sandbox.gitdirs`)."""
        return git_binds(workspace, WORKSPACE)

    def spawn_env(self, extras: Extras | None = None) -> dict[str, str]:
        """The environment bubblewrap starts with and passes on: the allowlist and what
        the call adds, nothing of errands' (a secret stays off bwrap's command line,
        which every user of the machine can read)."""
        return {**SANDBOX_ENV, **(extras.env if extras else {})}

    # -- running ------------------------------------------------------------------------
    async def run(
        self,
        command: str,
        workspace: Path,
        timeout_s: int,
        limits: Limits | None = None,
        extras: Extras | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> Ran:
        """Run *command* in the sandbox; never raises for what the command does.
        *on_output* gets ``("stdout" | "stderr", bytes)`` as the command writes them."""
        limits = limits or Limits()
        self.check()
        with tempfile.TemporaryDirectory(prefix="errands-sandbox-") as tmp:
            etc = Path(tmp)
            _write_etc(etc)
            home = self.open_workspace(workspace)
            fd = self._seccomp_fd(etc)  # (only the files bound by name are seen inside)
            pinned = self._pin(self.git_binds(workspace), workspace, home)
            fds = [home, *([] if fd is None else [fd]), *(pin for pin, _ in pinned)]
            try:
                argv = self.argv(command, workspace, etc, extras, fd, pinned, home)
                env = self.spawn_env(extras)
                return await self._run(argv, env, timeout_s, limits, fds, on_output)
            finally:
                for each in fds:
                    os.close(each)

    @staticmethod
    def open_workspace(workspace: Path) -> int:
        """The workspace opened component by component, never through a symbolic link
        (it was stored with none; another errand's commands could plant one in a path
        through their own workspace), to be bound by its descriptor."""
        flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        if not workspace.is_absolute():
            workspace = Path.cwd() / workspace
        fd = os.open("/", flags)
        try:
            for part in workspace.parts[1:]:
                step = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = step
        except OSError as exc:
            os.close(fd)
            raise SandboxUnavailable(
                f"the workspace {workspace} cannot be opened without following a symbolic "
                f"link or is gone ({exc.strerror}); errands binds only the directory it made"
            ) from None
        return fd

    @staticmethod
    def _pin(
        binds: Sequence[tuple[Path, str]], workspace: Path, home: int
    ) -> list[tuple[int, str]]:
        """Each directory of *binds* opened (``O_PATH``, never through a symbolic link;
        one inside *workspace* from its open descriptor *home*) and bound by its
        descriptor: a command running meanwhile cannot swap a link in between the check
        and the bind."""
        pinned = []
        flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        root = Path(os.path.realpath(workspace))
        for source, target in binds:
            inside = source.is_relative_to(root)
            try:
                if inside and len(source.relative_to(root).parts) == 1:
                    pinned.append((os.open(source.name, flags, dir_fd=home), target))
                elif not inside:
                    pinned.append((os.open(source, flags), target))
            except OSError:
                continue  # gone or swapped for a link: not bound
        return pinned

    async def _run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        timeout_s: int,
        limits: Limits,
        fds: Sequence[int] = (),
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> Ran:
        rlimits = _rlimits(limits, timeout_s)
        # the kernel's own cap on the process count, where errands may make one: a
        # process that is root outside the sandbox is exempt from RLIMIT_NPROC
        group = pids_cgroup(limits.processes + PIDS_MARGIN)

        def preexec() -> None:  # in the child, before exec: limits bwrap passes on
            if group is not None:
                with contextlib.suppress(OSError):
                    (group / "cgroup.procs").write_text(str(os.getpid()))
            for which, value in rlimits:
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(which, (value, value))

        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            pass_fds=tuple(fds),
            start_new_session=True,
            preexec_fn=preexec,
        )
        killed: list[str] = []

        def kill(why: str) -> None:
            if not killed:
                killed.append(why)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        out = _Capture(limits, kill, "stdout", on_output)
        err = _Capture(limits, kill, "stderr", on_output)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.ensure_future(out.drain(proc.stdout)),
            asyncio.ensure_future(err.drain(proc.stderr)),
        ]
        watchdog = asyncio.ensure_future(_watch_processes(proc.pid, limits.processes, kill))
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout_s)
        except TimeoutError:
            kill(f"it ran longer than {timeout_s} s")
            await proc.wait()
        finally:
            watchdog.cancel()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*readers), timeout=5)
        for reader in readers:
            reader.cancel()
        if group is not None:
            await asyncio.to_thread(remove_cgroup, group)
        return Ran(
            returncode=None if killed else proc.returncode,
            stdout=bytes(out.kept),
            stderr=bytes(err.kept),
            stdout_total=out.total,
            stderr_total=err.total,
            seconds=time.monotonic() - started,
            killed=killed[0] if killed else "",
            limits=limits,
        )


class _Capture:
    def __init__(
        self,
        limits: Limits,
        kill: Callable[[str], None],
        name: str = "",
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.limits = limits
        self.kill = kill
        self.name = name
        self.on_output = on_output
        self.kept = bytearray()
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            self.total += len(chunk)
            if self.on_output is not None:
                try:
                    self.on_output(self.name, chunk)
                except Exception:  # the live view's fault: the capture goes on without it
                    self.on_output = None
            room = self.limits.output - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]
            if self.total > self.limits.output_hard:
                self.kill(f"it wrote more than {self.limits.output_hard >> 20} MB of output")


PIDS_MARGIN = 8  # processes beyond the cap the cgroup allows: bwrap, the sandbox's init
CGROUP_PARENTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))  # v1, then v2


def pids_cgroup(most: int) -> Path | None:
    """A new pids cgroup allowing *most* processes, or None where errands cannot make
    one (not root, no pids controller): RLIMIT_NPROC and the watchdog then hold."""
    for parent in CGROUP_PARENTS:
        if not (parent / "cgroup.procs").exists():
            continue
        group = parent / f"errands-sandbox-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            (group / "pids.max").write_text(str(most))
            return group
        except OSError:
            remove_cgroup(group)
    return None


def remove_cgroup(group: Path) -> None:
    """Remove *group* once its processes are gone (they were killed; give them a moment)."""
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _sandbox_init(outer: int) -> int | None:
    """bwrap's child under *outer*: the sandbox's init (PID 1 in its namespace)."""
    try:
        own = os.readlink(f"/proc/{outer}/ns/pid")
        children = Path(f"/proc/{outer}/task/{outer}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/ns/pid") != own:
                return int(child)
    return None


def _count_under(init: int, most: int) -> int:
    """Processes in the tree under *init* (orphans are re-parented to it), counting
    stops past *most*: the cost grows with the sandbox, never with the machine."""
    count, todo = 0, [init]
    while todo and count <= most:
        pid = todo.pop()
        count += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    todo.extend(int(k) for k in kids)
    return count


async def _watch_processes(outer: int, most: int, kill: Callable[[str], None]) -> None:
    """Kill the sandbox when it holds more than *most* processes."""
    init: int | None = None
    while True:
        await asyncio.sleep(0.02)
        if init is None:
            init = _sandbox_init(outer)
            continue
        if await asyncio.to_thread(_count_under, init, most) > most:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(init, signal.SIGKILL)  # PID 1 of its namespace: all of it goes
            kill(f"it started more than {most} processes")
            return


def _write_etc(etc: Path) -> None:
    uid = SANDBOX_UID
    files = {
        "passwd": f"sandbox:x:{uid}:{uid}:errands sandbox:{WORKSPACE}:/bin/sh\n",
        "group": f"sandbox:x:{uid}:\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
        "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    }
    for name, text in files.items():
        (etc / name).write_text(text, encoding="utf-8")
        (etc / name).chmod(0o644)
    etc.chmod(0o755)
