"""Real `errands up` processes and a real HTTP endpoint for errands to call, for tests.

- :class:`ServerProc` starts ``python -m errands up`` in a subprocess against one
  ERRANDS_HOME, waits for ``server.json`` and ``/api/health``, and stops it with
  SIGTERM (graceful) or SIGKILL (a crash).
- :class:`Sink` is a small threaded HTTP server errands reach with ``http_request``.
  Like an API that honours ``Idempotency-Key``, it performs each key's effect once:
  ``effects`` is the ledger of what really happened, ``requests`` every request seen.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

_RUNS = itertools.count(1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(home: Path, extra: str = "") -> None:
    """errands.toml letting the network tools reach 127.0.0.1 (where the Sink listens)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "errands.toml").write_text(
        '[network]\nallow_private = ["127.0.0.1"]\n' + (extra and "\n" + extra + "\n")
    )


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ERRANDS_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_", "PYTEST_"))
    }
    # no model keys from this machine: the tests see what a fresh machine sees
    env.update(ERRANDS_HOME=str(home), ERRANDS_NO_KEYRING="1", NO_COLOR="1", COLUMNS="200")
    env.update(extra)
    return env


class ServerProc:
    def __init__(
        self,
        home: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.home = home
        self.args = args or []  # more options of errands up, e.g. --workers 2
        self.host = host
        self.port = port
        self.env = env or clean_env(home)
        self.prefix = prefix or []  # e.g. setpriv ... to run as another user
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token: str | None = None
        self.runs = 0
        self.started_in = 0.0

    @property
    def out_path(self) -> Path:
        return self.home.parent / f"server-{self.home.name}-{self.runs}.out"

    @property
    def err_path(self) -> Path:
        return self.home.parent / f"server-{self.home.name}-{self.runs}.err"

    def start(self, timeout: float = 60.0, *, ready: bool = True) -> ServerProc:
        """Start ``errands up``; return once ``/api/health`` answers 200 and ``/readyz``
        too (errands run: with workers, once one serves). A test whose server is meant to
        die early (a fault at a schedule's slot, which may come before the first answer on
        a loaded machine) passes ``ready=False``: it returns once server.json is written."""
        self.runs = next(_RUNS)
        cmd = [*self.prefix, sys.executable, "-m", "errands", "up", "--host", self.host]
        cmd += ["--port", str(self.port), *self.args]
        t0 = time.monotonic()
        self.home.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.home.parent,
            )
        deadline = t0 + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"errands up exited with {self.proc.returncode}:\n{self.output()}"
                )
            try:
                info = json.loads((self.home / "server.json").read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("pid") == self.proc.pid:
                break
            time.sleep(0.05)
        else:
            self.kill()
            raise RuntimeError(f"errands up did not start in {timeout}s:\n{self.output()}")
        self.url = str(info["url"]).rstrip("/")
        self.port = int(info["port"])
        if info.get("token_required"):
            self.token = (self.home / "server-token").read_text().strip()
        if not ready:
            self.started_in = time.monotonic() - t0
            return self
        last = "no answer yet"  # what /api/health said last
        with httpx.Client(base_url=self.url, headers=self.auth()) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"errands up exited with {self.proc.returncode} before /api/health "
                        f"answered ({last}); the end of its stderr:\n{self.stderr_tail()}"
                    )
                try:  # (then /readyz: errands run -- with workers, once one serves)
                    response = client.get("/api/health")
                    if response.status_code == 200:
                        response = client.get("/readyz")
                    if response.status_code == 200:
                        break
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    self.kill()
                    raise RuntimeError(
                        f"errands up wrote server.json but {self.url}/api/health did not "
                        f"answer 200 within {timeout}s (last: {last}); "
                        f"the end of its stderr:\n{self.stderr_tail()}"
                    )
                time.sleep(0.05)
        self.started_in = time.monotonic() - t0
        return self

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {**self.auth(), **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    def output(self) -> str:
        parts = []
        for path in (self.out_path, self.err_path):
            with suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stderr_tail(self, lines: int = 40) -> str:
        """The last *lines* the server wrote to stderr (where a traceback would be)."""
        try:
            text = self.err_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no stderr: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(stderr is empty)"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and wait: a graceful shutdown."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash nobody cleans up after."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


@contextmanager
def running(home: Path, **kwargs: Any) -> Iterator[ServerProc]:
    server = ServerProc(home, **kwargs).start()
    try:
        yield server
    finally:
        server.kill()


class Sink:
    """A local HTTP endpoint; performs each Idempotency-Key's effect once."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0) -> None:
        self.delay = delay
        self.fail_first = fail_first  # answer 503 to this many requests first
        self.requests: list[dict[str, Any]] = []
        self.effects: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        self.lock = threading.Lock()
        self.status = 200
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                key = self.headers.get("idempotency-key")
                entry = {"method": self.command, "path": self.path, "body": body, "key": key}
                with sink.lock:
                    sink.requests.append(entry)
                    failing = len(sink.requests) <= sink.fail_first
                    if not failing and (key is None or all(e["key"] != key for e in sink.effects)):
                        sink.effects.append(entry)
                sink.arrived.set()
                if sink.delay:
                    time.sleep(sink.delay)
                reply = json.dumps({"ok": not failing, "path": self.path}).encode()
                self.send_response(503 if failing else sink.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_POST = do_PUT = do_GET = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def post_script(path: Path, url: str, body: str = "hello", latency_ms: float = 0) -> str:
    """A scripted model: POST *body* to *url* (needs approval), then finish; on a
    denial it says so instead."""
    from helpers.kit import call, write_script

    return write_script(
        path,
        {
            "text": "I will post the note now.",
            "tool_calls": [call("http_request", method="POST", url=url, body=body)],
        },
        {
            "cases": [
                {"when_contains": "denied", "text": "Understood: I did not send it."},
                {"text": "Sent: the note is posted."},
            ]
        },
        latency_ms=latency_ms,
    )
