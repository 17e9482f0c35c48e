"""``errands up``: one long-running process that runs errands and serves the inbox and API.

Start-up: take the home's exclusive lock (``ERRANDS_HOME/errands.lock``, held for the
server's life: one server per home) or refuse; refuse a store that fails SQLite's
``quick_check``; load (or create) the token when one is needed (:func:`token_reason`:
a name beyond loopback, or ``require_token``); bind; publish the port in the
machine's registry (:mod:`errands.registry`: no errands process's network tools reach
it); open the store and build the app; start the HTTP server; build the toolset (the
tools' modules and schemas, the plugins, ``[tools] modules``) and read the policy, on a
thread while the first requests are answered -- a bad one stops the start here, before
any errand runs; release leases left by dead local processes; start the runner (which
claims every runnable errand); write
``ERRANDS_HOME/server.json`` (url, pid) so the CLI can find the server; print the start
message. The token is printed only to a terminal (never into a service's log); otherwise
the start message names its 0600 file.

``GET /api/health`` answers 200 as soon as the HTTP server accepts connections: the store
is open and every route is there (neither the engine nor the tools are imported yet:
``tests/test_startup.py``). What only the errands need comes just after (a request that
needs the toolset or the policy waits for it; an errand created meanwhile is claimed when
the runner starts), and what only the start message
needs -- whether a model is connected, which may ask the OS keyring -- is looked up
off the event loop, once serving.

Shutdown on SIGINT/SIGTERM: stop accepting connections and end the live streams, let
in-flight requests finish, stop the runner (its loops stop and release their leases;
nothing is lost -- everything that happened is in the store), flush notifications,
close the store, remove ``server.json``. A second signal skips the waiting. After a
crash ``server.json`` is stale (its pid is dead) and the next start replaces it; a
restart resumes every errand from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from errands import __version__, observe, registry
from errands.config import Settings
from errands.core.states import ErrandState
from errands.engine.runtime import tune_gc
from errands.harness import build
from errands.private import private_dir
from errands.server.app import create_app
from errands.server.auth import Security, remote_names
from errands.server.context import ServerContext, model_help
from errands.server.files import (
    SERVER_FILE,
    TOKEN_FILE,
    ServerRefused,
    live_server,
    load_token,
)
from errands.server.hub import Hub, LiveText
from errands.server.idempotency import IdempotencyStore
from errands.server.worker import RunnerThread
from errands.server.workers import MAX_WORKERS, ChangeFeed, WorkerPool
from errands.store import Store, health
from errands.store.lock import HomeLock, try_lock

if TYPE_CHECKING:  # (the engine is imported once the HTTP side answers)
    from errands.engine.runner import Runner
    from errands.harness import Harness

__all__ = ["release_dead_leases", "run_server", "token_reason"]

REAP_SECONDS = 30.0

log = logging.getLogger("errands.server")


async def release_dead_leases(store: Store) -> int:
    """Free the leases of runnable errands whose owner died on this host (a SIGKILL):
    the runner then claims them at once instead of waiting for the leases to expire."""
    found = []
    for view in await store.list_errands(
        states=[ErrandState.queued, ErrandState.running], limit=1_000_000
    ):
        holder = await store.lease_holder(view.id)
        if holder is None:
            continue
        from errands.engine.runner import dead_local_owner  # (only when a lease is held)

        if dead_local_owner(holder[0]):
            found.append((view.id, holder[0]))
    for errand_id, owner in found:
        await store.release(errand_id, owner)
    if found:
        log.info("released %d lease(s) left by processes that died", len(found))
    return len(found)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerRefused(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerRefused(
                f"port {port} on {host} is in use (another errands up, or another program); "
                "choose another with --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise ServerRefused(
                f"not allowed to listen on {host} port {port}; choose a port above 1023"
            ) from None
        raise ServerRefused(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _Server(uvicorn.Server):
    """uvicorn, without its own signal handling: ``errands up`` handles the signals and
    shuts the runner and the store down after the HTTP side."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def run_server(
    settings: Settings,
    host: str,
    port: int,
    *,
    echo: Callable[[str], None] = print,
    workers: Sequence[str] = (),
    count: int = 0,
    run: bool = True,
) -> None:
    """Run until SIGINT/SIGTERM. Raises :class:`ServerRefused` if it cannot start.
    *count* > 0: errands run in that many worker processes, each started with the
    command line *workers* (:mod:`errands.server.workers`); else in this process --
    unless not *run* (``--no-run``): then only in ``errands worker`` processes started
    elsewhere (docs/scale-out.md)."""
    home = settings.home
    if count < 0 or count > MAX_WORKERS:
        raise ServerRefused(f"--workers: from 0 to {MAX_WORKERS}, not {count}")
    lock = _claim_home(home)  # held for the server's life; the kernel drops it at exit
    try:
        health.verify(settings.db_path)  # quick_check and the schema: refuse a damaged store
        observe.configured()  # a malformed OTEL_* variable stops the start, before serving
        pool = WorkerPool(count, workers) if count or not run else None  # (0: none of its own)
        _serve(settings, host, port, echo, pool)
    finally:
        lock.release()


def _claim_home(home: Path) -> HomeLock:
    """Make sure *home* is writable and take its exclusive lock (:mod:`errands.store.lock`),
    or refuse: one server per home. Taking the lock is the check: two servers started at
    the same instant cannot both pass it."""
    try:
        private_dir(home)
        probe = home / f".write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
        lock = try_lock(home)
    except OSError as exc:
        raise ServerRefused(
            f"ERRANDS_HOME {home} is not writable: {exc.strerror}; "
            "run errands up as the user who owns it, or choose another with --home"
        ) from None
    if lock is None:
        running = live_server(home)
        if running is not None:
            raise ServerRefused(
                f"errands is already up for {home} at {running['url']} (pid {running['pid']})"
            )
        raise ServerRefused(
            f"errands is already up for {home} (still starting), or errands restore is "
            "running on it; wait for it, or stop it"
        )
    return lock


def token_reason(host: str, settings: Settings) -> str | None:
    """Why a server bound to *host* needs its token, or None: it answers to a name
    beyond loopback (another address, or ``[server] allowed_hosts``: behind a reverse
    proxy, whoever reaches the proxy reaches errands), or ``require_token`` is set.
    Refuses an ``allowed_hosts`` entry that is not a host name, before anything is
    written."""
    names = remote_names(host, settings.server.allowed_hosts)
    if names:
        return f"it answers to {', '.join(names)}, so whoever reaches that name reaches errands"
    if settings.server.require_token:
        return "[server] require_token is set"
    return None


def _to_terminal() -> bool:
    """Is the start message going to a person's terminal (not a file, a pipe, a journal)?"""
    return sys.stdout.isatty()


def _serve(
    settings: Settings,
    host: str,
    port: int,
    echo: Callable[[str], None],
    pool: WorkerPool | None = None,
) -> None:
    home = settings.home
    why = token_reason(host, settings)
    token, created = load_token(home, create=True) if why is not None else (None, False)
    security = Security(
        host=host,
        port=port,
        token=token,
        allowed_hosts=settings.server.allowed_hosts,
        max_body_bytes=settings.server.max_body_bytes,
    )
    sock = _bind(host, port)
    actual = sock.getsockname()[1]
    security.port = actual
    url = _url(host, actual)
    # errands' own network tools must never reach this server (nor any other's: registry)
    settings = settings.model_copy(update={"server_port": actual})
    lines = [f"errands is up: {url}", "  the inbox, and the API (/openapi.json)"]
    if pool is not None and pool.count:
        lines.append(f"  errands run in {pool.count} worker process(es) (errands worker)")
    elif pool is not None:
        lines.append("  errands run in errands worker processes started elsewhere (--no-run)")
    if host in ("0.0.0.0", "::"):
        lines.append(f"  listening on every interface: http://{socket.gethostname()}:{actual}/")
    if token is not None:
        lines.append(f"  a token is required: {why}")
        path = home / TOKEN_FILE
        if created and _to_terminal():
            lines.append(f"  token (shown once, on this terminal only; also in {path}): {token}")
        else:  # never into a file or a service's log
            lines.append(
                f"  the token is in {path} (mode 0600); send it as Authorization: Bearer <token>"
            )
    stops = "  Ctrl-C stops it; every errand keeps its place and resumes on the next start"

    def announce() -> None:  # (after the start: model_help may ask the keyring, ~0.1 s)
        echo("\n".join([*lines, *(f"  {line}" for line in model_help(settings)), stops]))

    try:  # before any errand runs: every errands process refuses this port from now on
        published = registry.publish(actual, host, home)
    except registry.PublishFailed as exc:
        sock.close()
        raise ServerRefused(str(exc)) from None
    try:
        asyncio.run(_main(settings, security, sock, url, announce, pool))
    finally:
        registry.withdraw(published)


async def _main(
    settings: Settings,
    security: Security,
    sock: socket.socket,
    url: str,
    announce: Callable[[], None],
    pool: WorkerPool | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    home = settings.home
    harness = build(settings, tools_later=True)  # (built once the HTTP side answers)
    store = harness.store
    telemetry = harness.observe()  # (None unless OTEL_EXPORTER_OTLP_ENDPOINT is set)
    idempotency = IdempotencyStore(home / "server.sqlite")
    info_path = home / SERVER_FILE
    try:
        hub = Hub(store)
        on_text = LiveText(hub, loop)  # called on the runner's thread

        def make_runner() -> Runner:
            made = harness.runner(on_text=on_text).with_schedules()
            made.claiming = pool is None  # with workers, they run the errands
            return made

        runner = RunnerThread(make_runner, on_stop=harness.close_models)
        ctx = ServerContext(
            harness=harness,
            hub=hub,
            security=security,
            idempotency=idempotency,
            base_url=url,
            # (with workers: each of them claims at once, through its relay)
            nudge_runner=runner.nudge if pool is None else pool.wake,
            runner_down=runner.why_down if pool is None else _either(runner.why_down, pool),
        )
        channels = harness.channels(url)
        config = uvicorn.Config(
            create_app(ctx),
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=3,
            timeout_keep_alive=5,
            ws="none",  # (no WebSocket routes: uvicorn need not import a WebSocket library)
        )
        server = _Server(config)
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                server.force_exit = True  # a second signal: stop waiting
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        server_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not server_task.done():
            await asyncio.sleep(0.01)
        # the HTTP side answers from here on; the tools, the policy and the runner (on its
        # own thread) come after it, so that making them does not hold the first requests
        # up (a request that needs one waits for it). A bad tools module or policy.toml
        # stops the start here, before any errand runs.
        sys.setswitchinterval(0.001)  # (the first requests wait less for what is built)
        try:
            await asyncio.to_thread(_ready_to_run, harness)
        except BaseException:
            server.should_exit = True  # (the HTTP side stops before the error is told)
            await server_task
            raise
        await release_dead_leases(store)
        await runner.started()  # (requests are answered while the runner is built)
        assert runner.finished is not None
        _write_json_atomic(
            info_path,
            {
                "url": url,
                "pid": os.getpid(),
                "host": security.host,
                "port": security.port,
                "token_required": security.token is not None,
                "started_at": time.time(),
                "version": __version__,
            },
        )
        await asyncio.to_thread(announce)  # (requests are answered meanwhile)
        if harness.mcp is not None:  # the MCP servers start and list now, not in an errand
            harness.mcp.warm()
        sys.stdout.flush()
        _tune_runtime()
        reaper = asyncio.create_task(_reap_forever(store))
        retention = asyncio.create_task(_retention(store, settings, stop))
        helpers: list[asyncio.Task[None]] = []
        if pool is not None:  # the workers, and what they commit told to the streams
            pool.on_exit = lambda: release_dead_leases(store)  # (a worker died: at once)
            store.share_writes(favoured=True)  # a person's decisions before the workers' batches
            helpers = [
                asyncio.create_task(pool.run(stop, hub)),  # (the relays: live text, output)
                asyncio.create_task(ChangeFeed(store).run(stop)),
            ]
        stopping = asyncio.create_task(stop.wait())
        watched: list[asyncio.Future[Any]] = [stopping, server_task, runner.finished]
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        hub.close()  # ends the live streams, so connections can close
        server.should_exit = True
        await server_task
        stop.set()  # (the workers stop: their errands keep their place in the store)
        for helper in helpers:
            with contextlib.suppress(Exception):
                await helper
        try:
            await runner.stop()
        finally:
            for task in (reaper, retention, stopping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for channel in channels:
                await channel.close()
        if runner.error is not None:
            raise ServerRefused(f"the runner failed: {runner.error}")
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(info_path.read_text()).get("pid") == os.getpid():
                info_path.unlink()
        idempotency.close()
        if telemetry is not None:  # (what the last commits said, exported)
            await telemetry.close()
        await harness.store.close()  # (the runner's thread closed the models on its loop)


def _ready_to_run(harness: Harness) -> None:
    """Build what the errands need and the HTTP side's first answers do not: the toolset
    (the tools' modules, the plugins, ``[tools] modules``) and the policy (``policy.toml``:
    an invalid one stops the start)."""
    harness.toolset  # noqa: B018
    harness.policy  # noqa: B018


def _either(why_down: Callable[[], str | None], pool: WorkerPool) -> Callable[[], str | None]:
    """Why errands cannot run: the runner's reason (schedules), else the workers'."""
    return lambda: why_down() or pool.why_down()


def _tune_runtime() -> None:
    """Freeze what start-up allocated (the app, its schemas) so the collector stops
    rescanning it (:func:`errands.engine.runtime.tune_gc`), and shorten the interpreter's thread
    switch interval so that a request waits less for the runner's thread. The collector is
    turned on again if ``errands up`` turned it off for the start-up."""
    tune_gc()
    gc.enable()
    sys.setswitchinterval(0.001)


async def _retention(store: Store, settings: Settings, stop: asyncio.Event) -> None:
    """``[retention]``, applied every ``every_minutes`` (errands.engine.retention)."""
    if settings.retention.enabled:
        from errands.engine.retention import Retention

        await Retention(store, settings.retention).serve(stop)


async def _reap_forever(store: Store) -> None:
    while True:
        await asyncio.sleep(REAP_SECONDS)
        try:
            await release_dead_leases(store)
        except Exception:
            log.exception("releasing dead leases failed")
