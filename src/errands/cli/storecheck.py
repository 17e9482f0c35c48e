"""``errands doctor``'s store line: can the store write right now?

A full disk, another process holding the write lock, an I/O error: conditions of the
world that ``errands up`` waits out (it keeps serving reads and goes on by itself when
they clear). The doctor asks the running server, which knows (``/api/health``); with no
server it tries a write itself -- a row written and taken away again in one
transaction, which reaches the disk and leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from errands.cli import remote
from errands.config import Settings
from errands.errors import ErrandsError, StoreUnavailable
from errands.models.inventory import Check
from errands.store.sqlite.connection import begin_immediate, connect, probe_write, unavailable

__all__ = ["probe_store", "store_check"]

# what to do about each condition, after saying what it is
WAY_OUT = {
    "disk_full": "free some space on the disk holding {path}",
    "locked": "another process holds the write lock on {path}: find it with `fuser {path}`",
    "io_error": "check the disk holding {path} (dmesg shows what the kernel saw)",
}


def probe_store(path: Path) -> StoreUnavailable | None:
    """Try a write on the store at *path*: None if it wrote, else why it could not."""
    try:
        conn = connect(str(path))
    except StoreUnavailable as exc:
        return exc
    try:
        begin_immediate(conn, lambda: None, known_locked=True)  # (a short wait)
        try:
            probe_write(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except (sqlite3.Error, OSError) as exc:
        condition = unavailable(exc, str(path))
        if condition is None:
            raise
        return condition
    finally:
        conn.close()
    return None


def store_check(settings: Settings) -> Check:
    """The doctor's check that the store can write (asking the server, if one runs)."""
    path = settings.db_path
    check = Check("store writes", True)
    server = remote.find(settings)
    if server is not None:
        try:
            health = server.call("GET", "/api/health")
        except ErrandsError as exc:
            check.problems.append(f"store: could not ask errands up: {exc}")
        else:
            store = health.get("store") if isinstance(health, dict) else None
            if isinstance(store, dict):
                since = dt.datetime.fromtimestamp(float(store.get("since", 0))).strftime("%H:%M:%S")
                condition = str(store.get("condition", "io_error"))
                way_out = WAY_OUT.get(condition, WAY_OUT["io_error"]).format(path=path)
                check.problems.append(
                    f"store: errands up cannot write since {since}: {store.get('detail')} "
                    f"-- {way_out}"
                )
            else:
                check.notes.append(f"errands up ({server.url}) writes to {path}")
    elif not path.exists():
        check.notes.append(f"no store at {path} yet (the first errand makes it)")
    else:
        found = probe_store(path)
        if found is None:
            check.notes.append(f"{path} takes a write")
        else:
            check.problems.append(f"store: cannot write: {found}")
    check.ok = not check.problems
    return check
