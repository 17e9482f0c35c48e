"""A real PostgreSQL server for the tests: Debian's binaries, ``initdb`` and ``pg_ctl``
in a temporary directory, listening on a Unix socket in it (no TCP port to clash with
another run). Started once per test session, on first use; stopped at exit.

Each store a test opens gets a database of its own, made with ``CREATE DATABASE ...
TEMPLATE`` from one already migrated -- a file copy, fast. When the binaries are
missing the tests that need them fail saying so (never skip): install Debian's
``postgresql`` package, or choose ``ERRANDS_TEST_BACKENDS=sqlite``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import queue
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg

__all__ = ["PostgresServer", "server"]

TEMPLATE = "errands_template"
READY_AHEAD = 3  # databases made ahead of the tests that will ask for them


def _bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError(
        "the postgres tests need PostgreSQL's server binaries (initdb, pg_ctl): apt-get"
        " install postgresql (ERRANDS_TEST_BACKENDS=sqlite keeps the parametrised suites"
        " off PostgreSQL; tests/test_store_postgres.py needs it whatever you choose)"
    )


class PostgresServer:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="errands-pg-"))
        self.data = self.root / "data"
        self.port = 5432
        # initdb refuses to run as root: as root, the cluster is the postgres user's
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            os.chown(self.root, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, "--auth=trust",
            "--locale=C", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
            "-o", f"-k {self.root} -c listen_addresses='' -p {self.port}"
            " -c max_connections=300 -c shared_buffers=32MB",
            "start",
        )  # fmt: skip
        atexit.register(self.stop)
        self._ready: queue.Queue[str] | None = None
        self.admin = psycopg.connect(self.url("postgres"), autocommit=True)
        self.admin.execute(f"CREATE DATABASE {TEMPLATE}")
        from errands.store.postgres import PostgresStore

        store = PostgresStore(self.url(TEMPLATE))  # migrated once: every test db copies it
        store._close()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "log"
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}"
                + (log.read_text() if log.exists() else "")
            )

    def restart(self) -> None:
        """Stop the server (fast: sessions are ended) and start it again."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-m", "fast", "-w",
            "-o", f"-k {self.root} -c listen_addresses='' -p {self.port}", "restart",
        )  # fmt: skip
        self.admin = psycopg.connect(self.url("postgres"), autocommit=True)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@/{database}?host={self.root}&port={self.port}"

    def new_database(self) -> str:
        """A fresh, migrated database; its name. (A CREATE DATABASE takes ~0.3 s, mostly
        its fsyncs: a thread keeps a few made ahead while the tests run.)"""
        if self._ready is None:
            self._ready = queue.Queue(maxsize=READY_AHEAD)
            threading.Thread(target=self._make_ahead, name="pg-databases", daemon=True).start()
        return self._ready.get(timeout=120)

    def _make_ahead(self) -> None:
        assert self._ready is not None
        try:
            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                while True:
                    name = "t_" + os.urandom(12).hex()
                    conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
                    self._ready.put(name)  # (waits while READY_AHEAD are ready)
        except psycopg.Error:  # the server stopped (the session is over)
            return

    def disconnect(self, url: str) -> None:
        """End every session on *url*'s database, as the death of its client processes
        would (their open transactions roll back)."""
        database = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # (at exit: best effort)
            self.admin.close()
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


_server: PostgresServer | None = None
_starting = threading.Lock()


def server() -> PostgresServer:
    """The session's server, started on first use."""
    global _server
    with _starting:
        if _server is None:
            _server = PostgresServer()
        return _server
