"""``errands up --workers N``: errands run in N worker processes, the server answers.

Python runs one thread of bytecode at a time per process, so a server that also runs
hundreds of errands makes a person's approve wait behind their work. With workers, the
server keeps the API, the inbox, the schedules and the notifications; each worker
(``errands worker``, the same command a second host would run against a shared store)
claims runnable errands through the store's leases, exactly as the server's own runner
does, so an errand runs in one process at a time and a worker that dies loses nothing:
its leases are released (a dead process on this host) and another worker takes the
errands up from the log.

- :class:`WorkerPool` starts the workers, starts a worker again when it exits (after a
  pause that doubles up to :data:`RESTART_MAX`), and stops them with the server (SIGTERM,
  then SIGKILL after :data:`STOP_GRACE` seconds). Each worker it starts has a relay to the
  server (:mod:`errands.server.relay`): its errands' live model text and tools' output
  reach the server's streams, and the server tells it to claim at once when a person
  decides, writes or starts an errand (:meth:`WorkerPool.wake`).
- :func:`default_workers` is what ``errands up`` runs without ``--workers``: one worker per
  core this process may use, up to :data:`DEFAULT_CAP`; none (errands run in the server)
  with one core.
- :class:`ChangeFeed` tells the server's listeners (the live streams, the webhook) about
  the commits the workers make: every :data:`FEED_SECONDS` it asks the store which errands
  changed since it last looked (with a margin for clocks and commits that overlap) and
  announces each errand's newest seq; listeners skip what they have seen.
- :func:`run_worker` is ``errands worker``: a runner that serves until SIGTERM/SIGINT (a
  server's worker also when the server is gone: the kernel sends it SIGTERM, its relay
  closes, and its parent pid changes -- whichever it notices first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from errands.config import Settings
from errands.engine.runtime import tune_gc
from errands.harness import build
from errands.server.hub import Hub
from errands.server.relay import Link, WorkerRelay
from errands.server.worker import Wake, serve_through
from errands.store import Store

__all__ = [
    "DEFAULT_CAP",
    "MAX_WORKERS",
    "ChangeFeed",
    "WorkerPool",
    "default_workers",
    "run_worker",
]

MAX_WORKERS = 64
# errands up's default: one worker per core, at most this many. Every worker's commits go
# through the one SQLite file's write lock, one process at a time (group commit batches
# each process's own), so past a few processes more of them add lock hand-overs, polls
# and ~60 MB of memory each rather than steps per second; a bigger machine that wants
# more says --workers N (docs/store.md, "Several processes")
DEFAULT_CAP = 8
RESTART_FIRST, RESTART_MAX = 1.0, 30.0  # seconds before starting a worker that exited
STEADY = 60.0  # a worker that ran this long: the next pause starts short again
STOP_GRACE = 10.0  # seconds a worker has to stop before it is killed
FEED_SECONDS = 0.1  # how often the server looks for the workers' commits
FEED_MARGIN = 5.0  # seconds of updates looked at again (clocks, overlapping commits)
WORKER_POLL = 0.1  # how often a worker looks for runnable errands and wake-ups
WORKER_BATCH = 25  # runnable errands a worker takes per look: the others take theirs
PARENT_POLL = 0.5  # how often a server's worker checks that the server is still there
# a server's workers run this much nicer than the server: a person's request (an approve,
# a page of the inbox) gets a core first, and the workers have every cycle it leaves
WORKER_NICE = 10

log = logging.getLogger("errands.server")


class WorkerPool:
    """N ``errands worker`` processes for the server's home, kept running."""

    def __init__(
        self,
        count: int,
        args: Sequence[str],
        on_exit: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """*args*: the command line that starts one worker (``errands --home H worker``);
        *on_exit*: called when one exits by itself (the server frees its leases at once)."""
        self.count = count
        self.args = list(args)
        self.on_exit = on_exit
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.started = 0  # processes started, restarts included
        self.hub: Hub | None = None  # where the workers' live text and output go
        self.links: dict[int, Link] = {}  # slot -> the relay of the worker running there

    async def run(self, stop: asyncio.Event, hub: Hub | None = None) -> None:
        """Keep the workers running until *stop*; then stop them. Given *hub*, each
        worker's relay tells it what only the worker knows (and the hub tells the workers
        which errands a stream follows)."""
        self.hub = hub
        if hub is not None:
            hub.on_watch = self._watch
        await asyncio.gather(*(self._keep(i, stop) for i in range(self.count)))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.returncode is None]

    def why_down(self) -> str | None:
        """Why no errand can run yet (``/readyz``): none of the workers serves yet (they
        start after the server answers); None once one does, or when the server relays
        to none (``--no-run``, or no hub)."""
        if self.count == 0 or self.hub is None or any(k.serving for k in self.links.values()):
            return None
        return "no worker process serves yet (they are starting)"

    def wake(self) -> None:
        """Something became runnable (a decision, a message, a new errand): every worker
        claims now instead of at its next poll. (On the server's event loop.)"""
        for link in self.links.values():
            link.send("w")

    def _watch(self, errand_id: str, on: bool) -> None:
        for link in self.links.values():
            link.send("+" if on else "-", errand_id)

    def _spawn_args(self) -> tuple[list[str], socket.socket | None, socket.socket | None]:
        """The command line of one worker, and the relay's two ends (none without a hub)."""
        if self.hub is None:
            return self.args, None, None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return [*self.args, "--relay", str(theirs.fileno())], ours, theirs

    async def _keep(self, slot: int, stop: asyncio.Event) -> None:
        pause = 0.0
        while not stop.is_set():
            began = time.monotonic()
            args, ours, theirs = self._spawn_args()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *args,
                    stdin=asyncio.subprocess.DEVNULL,
                    pass_fds=() if theirs is None else (theirs.fileno(),),
                )
            except BaseException:
                for end in (ours, theirs):
                    if end is not None:
                        end.close()
                raise
            relaying = None
            if theirs is not None and ours is not None:
                theirs.close()  # (the worker has its own copy)
                assert self.hub is not None
                link = self.links[slot] = Link(ours)
                relaying = asyncio.create_task(link.serve(self.hub, self.hub.watched_errands))
            self.procs[slot] = proc
            self.started += 1
            exited = asyncio.ensure_future(proc.wait())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not exited.done():  # (the server stops)
                    await self._stop(proc, exited)
                if relaying is not None:
                    self.links.pop(slot, None)
                    relaying.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await relaying
            if stop.is_set():
                return
            if self.on_exit is not None:
                try:
                    await self.on_exit()
                except Exception:
                    log.exception("after worker %d exited", slot + 1)
            if time.monotonic() - began >= STEADY:
                pause = 0.0
            pause = min(max(2 * pause, RESTART_FIRST), RESTART_MAX)
            log.warning(
                "worker %d (pid %d) exited with %s; starting it again in %.0f s",
                slot + 1, proc.pid, proc.returncode, pause,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE)
        except TimeoutError:
            log.warning("worker pid %d did not stop in %.0f s: killed", proc.pid, STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await exited


class ChangeFeed:
    """Announces the commits other processes made to this process's store listeners."""

    def __init__(self, store: Store, every: float = FEED_SECONDS) -> None:
        self.store = store
        self.every = every
        self.seen: dict[str, int] = {}  # errand -> the newest seq announced

    async def look(self, since: float) -> float:
        """Announce what changed after *since*; return where to look from next."""
        newest = since
        changed: dict[str, int] = {}
        for errand_id, seq, updated in await self.store.changed_since(since - FEED_MARGIN):
            newest = max(newest, updated)
            if seq > self.seen.get(errand_id, 0):
                self.seen[errand_id] = seq
                changed[errand_id] = seq
        self.store.announce(changed)
        if len(self.seen) > 100_000:  # (only recent ones matter: the margin)
            self.seen = dict(changed)
        return newest

    async def run(self, stop: asyncio.Event) -> None:
        since = time.time()
        while not stop.is_set():
            try:
                since = await self.look(since)
            except Exception:  # a store that cannot be read now: look again later
                log.exception("looking for the workers' commits failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)


def worker_args(home: str, config: str | None) -> list[str]:
    """The command line of one worker of this process (the server) for *home* (and
    *config*): it stops when this process is gone, even after a SIGKILL."""
    args = [sys.executable, "-m", "errands", "--home", home]
    if config:
        args += ["--config", config]
    return [*args, "worker", "--parent", str(os.getpid())]


def default_workers(cores: int | None = None) -> int:
    """``errands up``'s worker processes without ``--workers``: one per core this
    process may run on (its affinity mask: a container's or ``taskset``'s limit, not the
    machine's), at most :data:`DEFAULT_CAP`; 0 -- errands run in the server -- with one
    core, where a worker would only add a process to share it with."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # (not Linux)
            cores = os.cpu_count() or 1
    return 0 if cores <= 1 else min(cores, DEFAULT_CAP)


def run_worker(
    settings: Settings,
    parent: int | None = None,
    *,
    name: str | None = None,
    concurrency: int | None = None,
    relay: int | None = None,
    poll: float = WORKER_POLL,
) -> None:
    """``errands worker``: run errands from the home's store until SIGTERM or SIGINT
    (or, given *parent*, until that process is gone). A server's worker (given *parent*)
    lowers its priority by :data:`WORKER_NICE` first, and asks the kernel for SIGTERM
    when the server dies. *name* ends the worker's lease owner (``HOST:PID:NAME``, what
    ``lease_holder`` shows); *concurrency*: at most that many errands at once; *relay*:
    the file descriptor of its end of the server's relay (:mod:`errands.server.relay`);
    *poll*: seconds between its looks at the store for runnable errands and wake-ups."""
    if parent is not None:
        with contextlib.suppress(OSError):
            os.nice(WORKER_NICE)
        _die_with(parent)
    asyncio.run(_work(settings, parent, name, concurrency, relay, poll))


PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux), then make
    sure the parent had not died already (the watch in :func:`_orphaned` still runs:
    other systems, and a parent that is not the one named)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # (quietly: its stderr is the dead server's)
        raise SystemExit(0)


async def _orphaned(parent: int, stop: asyncio.Event) -> None:
    """Set *stop* once *parent* is no longer this process's parent (it died)."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("worker %d: the server (pid %d) is gone; stopping", os.getpid(), parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_POLL)


async def _work(
    settings: Settings,
    parent: int | None,
    name: str | None = None,
    concurrency: int | None = None,
    relay_fd: int | None = None,
    poll: float = WORKER_POLL,
) -> None:
    harness = build(settings)
    harness.store.share_writes()  # (the server and the other workers write too)
    harness.policy  # noqa: B018  (read policy.toml now: a bad one stops the start)
    if relay_fd is not None:
        # a server's worker takes policy.toml's changes as the server does, and the
        # server says once on the shared stderr what it took or refused (not once a process)
        logging.getLogger("errands.policy").setLevel(logging.ERROR)
    if harness.mcp is not None:  # the MCP servers start and list now, not in an errand
        harness.mcp.warm()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    relay = None if relay_fd is None else WorkerRelay.from_fd(relay_fd)
    # (the pid keeps two processes given one name apart: a lease names one process)
    runner = harness.runner(
        owner=None if name is None else f"{socket.gethostname()}:{os.getpid()}:{name}",
        on_text=relay,
    )
    if relay is not None:  # (the server's end closing: the server is gone)
        relay.on_gone = stop.set
        await relay.open()

    def wake(store: Store) -> Wake:
        """The runner's pause between its looks at the store: the server's wake-up (a
        person's decision, a message, a new errand) ends it, as a notification does."""
        made = Wake(store)
        if relay is not None:
            relay.on_wake = lambda: made.notified("relay", "")
        return made

    runner.claim_batch = WORKER_BATCH
    runner.max_running = concurrency
    tune_gc()
    # the store's writer holds the write gate while it stages and writes a batch; with
    # the interpreter's default 5 ms switch interval it waits that long for the GIL
    # each time the event loop holds it, and a person's decision waits behind it
    sys.setswitchinterval(0.001)
    log.info("worker %d serving %s", os.getpid(), settings.home)
    watch = None if parent is None else asyncio.create_task(_orphaned(parent, stop))
    if relay is not None:
        relay.serving()  # (its first look at the store comes next)
    try:
        await serve_through(runner, stop, poll, wake=wake)
    finally:
        if watch is not None:
            watch.cancel()
        if relay is not None:
            await relay.close()
        await harness.close()
