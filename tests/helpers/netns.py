"""Several hosts on one machine, for the multi-host tests: network namespaces
(``ip netns``) joined by a switch, and PostgreSQL servers running in them.

- :class:`Network` makes a *switch* namespace holding a bridge, and one namespace per
  host, each joined to the bridge by a veth pair: the host's side is ``eth0`` with the
  address ``10.213.0.N/24``, the switch's side is ``pN``. Nothing is made in the test
  process's own namespace, so two runs at once (pytest-xdist) cannot clash: every
  namespace's name holds the xdist worker id and this process's pid.
- :meth:`Host.popen` runs a command in the host's namespace and in a UTS namespace of its
  own whose host name is the host's (errands' lease owners are ``HOST:PID:NAME``, and a
  process on *this* host that is gone loses its leases at once: hosts must look apart).
- :meth:`Host.cut` takes the switch's side of the host's link down (a pulled cable: the
  host's packets go nowhere, nothing tells it so); :meth:`Host.heal` brings it back.
- :class:`PgHost` is a PostgreSQL server (Debian's binaries, ``initdb``/``pg_ctl`` in a
  temporary directory) listening on its host's address and on a Unix socket in that
  directory -- the test process, outside every namespace, reads through the socket.
  :meth:`PgHost.replica` makes a streaming replica of it on another host
  (``pg_basebackup -R``).

Everything is torn down by :meth:`Network.close` (every process in every namespace is
SIGKILLed, the namespaces deleted), which the tests call from fixture finalizers, and
at exit; a run that was itself killed leaves its namespaces, which the next run deletes
(their names hold a pid that no longer runs). Without ``ip`` or PostgreSQL's binaries the tests fail saying what to install;
they never skip. The tests must run as root (``.ci/run`` does).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from helpers.postgres import _bin_dir

__all__ = ["SUBNET", "Host", "Network", "PgHost"]

SUBNET = "10.213.0"  # the hosts' addresses: SUBNET.N/24, N = 1, 2, ...
PG_PORT = 5432


def _require() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the multi-host tests make network namespaces: run them as root")
    if shutil.which("ip") is None:
        raise RuntimeError("the multi-host tests need `ip` (apt-get install iproute2)")
    for tool in ("unshare", "runuser"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"the multi-host tests need `{tool}` (apt-get install util-linux)")


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class Host:
    """One host: a network namespace with ``eth0`` on the switch."""

    def __init__(self, net: Network, name: str, number: int) -> None:
        self.net = net
        self.name = name
        self.ns = f"{net.prefix}-{name}"
        self.addr = f"{SUBNET}.{number}"
        self.port = f"p{number}"  # the switch's side of the link
        _ip("netns", "add", self.ns)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", net.switch, "link", "add", self.port, "type", "veth",
            "peer", "name", "eth0", "netns", self.ns)  # fmt: skip
        _ip("-n", net.switch, "link", "set", self.port, "master", "br0", "up")
        _ip("-n", self.ns, "addr", "add", f"{self.addr}/24", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "up")

    def argv(self, argv: Sequence[str]) -> list[str]:
        """*argv* as run on this host (its namespace, its host name). The command keeps
        the pid the Popen reports (each step execs the next)."""
        return [
            "ip", "netns", "exec", self.ns, "unshare", "--uts", "--", "sh", "-c",
            'echo "$0" > /proc/sys/kernel/hostname && exec "$@"', self.name, *argv,
        ]  # fmt: skip

    def popen(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen(
                self.argv(argv), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        finally:
            if log is not None:
                out.close()  # type: ignore[union-attr]

    def run(self, argv: Sequence[str], *, timeout: float = 120) -> str:
        done = subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"on {self.name}: {' '.join(argv)} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def pids(self) -> list[int]:
        """Every process running in this host's namespace."""
        return [int(p) for p in _ip("netns", "pids", self.ns).split()]

    def kill(self, sig: int = signal.SIGKILL) -> list[int]:
        """Send *sig* to every process of this host (SIGKILL: the host is gone); the pids."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def cut(self) -> None:
        """Pull the host's cable: its packets are dropped, no one tells it."""
        _ip("-n", self.net.switch, "link", "set", self.port, "down")

    def heal(self) -> None:
        _ip("-n", self.net.switch, "link", "set", self.port, "up")

    def close(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if not self.kill():
                    break
            except RuntimeError:  # the namespace is gone already
                break
            time.sleep(0.05)
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", self.ns)


def _sweep_stale() -> None:
    """Namespaces an earlier run left (its process killed before it could clean up):
    those whose pid no longer runs lose their processes and go."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) < 4 or parts[0] != "errands" or not parts[2].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[2]}"):
            continue  # (its run goes on)
        with contextlib.suppress(RuntimeError, ProcessLookupError):
            for pid in _ip("netns", "pids", name).split():
                os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", name)


class Network:
    """A switch and the hosts on it; :meth:`close` tears everything down."""

    def __init__(self, tag: str) -> None:
        _require()
        _sweep_stale()
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.prefix = f"errands-{worker}-{os.getpid()}-{tag}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: list[Host] = []
        self.closed = False
        _ip("netns", "add", self.switch)
        atexit.register(self.close)
        _ip("-n", self.switch, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def host(self, name: str) -> Host:
        host = Host(self, name, len(self.hosts) + 1)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for host in self.hosts:
            host.close()
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", self.switch)


class PgHost:
    """A PostgreSQL server on *host*: its cluster in a temporary directory (the
    ``postgres`` user's), listening on ``host.addr:5432`` and on a Unix socket there."""

    def __init__(self, host: Host, *, initdb: bool = True, settings: Sequence[str] = ()) -> None:
        self.host = host
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix=f"errands-{host.name}-"))
        user = pwd.getpwnam("postgres")
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "log"
        self.settings = list(settings)
        if initdb:
            self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                     "--locale=C", "-E", "UTF8", "--no-sync")  # fmt: skip
            with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as hba:
                hba.write(f"host all all {SUBNET}.0/24 trust\n")
                hba.write(f"host replication all {SUBNET}.0/24 trust\n")

    def _pg(self, tool: str, *args: str, timeout: float = 120) -> str:
        return self.host.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], timeout=timeout
        )

    def start(self) -> None:
        options = [
            f"-c listen_addresses={self.host.addr}", f"-k {self.root}", f"-p {PG_PORT}",
            "-c max_connections=200", "-c shared_buffers=16MB",
            # these tests kill processes, not machines: the page cache survives them
            "-c fsync=off", "-c full_page_writes=off", *self.settings,
        ]  # fmt: skip
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                 "-o", " ".join(options), "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def promote(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def url(self, database: str) -> str:
        """The URL over TCP, for a process on a host of the network."""
        return f"postgresql://postgres@{self.host.addr}:{PG_PORT}/{database}"

    def local_url(self, database: str) -> str:
        """The URL over the Unix socket, for the test process (outside the network)."""
        return f"postgresql://postgres@/{database}?host={self.root}&port={PG_PORT}"

    def replica(self, host: Host, *, settings: Sequence[str] = ()) -> PgHost:
        """A streaming replica of this server on *host* (``pg_basebackup -R``), started."""
        standby = PgHost(host, initdb=False, settings=settings)
        standby._pg("pg_basebackup", "-h", self.host.addr, "-p", str(PG_PORT), "-U", "postgres",
                    "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast", "--no-sync")  # fmt: skip
        standby.start()
        return standby

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
