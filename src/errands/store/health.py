"""Is the store's file whole, readable, and of a schema this errands knows?

Three depths, by what each costs:

- :func:`header_problem` -- on **every** open: the first 100 bytes and the file's size.
  A file that is not an SQLite database, or that is shorter than its header says (a
  truncated copy), is refused before anything reads it. O(1).
- :func:`verify` -- at ``errands up`` (and on a backup before ``errands restore`` uses
  it): SQLite's ``PRAGMA quick_check`` (every page and record, not the indexes' contents)
  and the schema version. O(size of the file): on a 108 MB store 0.07 s with the file
  in the page cache, 1.7 s cold -- paid once per server start (which then has the file
  cached), never by ``errands ls``.
- :func:`check` with ``full=True`` -- ``errands doctor``: ``PRAGMA integrity_check``
  (indexes against their tables too), the schema, the permissions.

A damaged file is refused with :class:`~errands.errors.StoreDamaged`, whose message names
the file and the way out: restore a backup (``errands restore PATH``) or move the file
aside to start empty. SQLite errors that mean the same thing when met later, on a read
(``SQLITE_CORRUPT``, ``SQLITE_NOTADB``), are explained the same way (:func:`explain`).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from errands.errors import ErrandsError, SchemaTooNew, StoreDamaged, StoreError
from errands.store.migrations import to_apply

__all__ = [
    "Report",
    "check",
    "damaged",
    "explain",
    "header_problem",
    "not_writable",
    "open_readonly",
    "reader",
    "verify",
]

MAGIC = b"SQLite format 3\x00"
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_NO_ACCESS = (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM)
_SHOWN = 5  # problems of an integrity check shown, at most


def damaged(path: str | Path, detail: str) -> StoreDamaged:
    """The refusal of a damaged store: what is wrong, and the way out."""
    return StoreDamaged(
        f"the store {path} is damaged ({detail}); restore a backup with "
        f"`errands restore PATH`, or move the file aside to start empty "
        f"(`errands doctor` checks it in full)"
    )


def not_writable(path: str | Path, detail: str) -> StoreError:
    """The refusal to write a store this user may not write."""
    home = Path(path).parent
    return StoreError(
        f"cannot write the store {path} ({detail}); run errands as the user who owns "
        f"{home}, or make it writable, or choose another home with --home "
        "(errands ls, show and cost can read it as it is)"
    )


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def explain(path: str | Path, exc: BaseException, *, writing: bool = True) -> ErrandsError | None:
    """The error a person should see for *exc*, an SQLite error met on *path*; None if
    it is not one this module explains (a full disk or a busy lock is another story)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = _code(exc)
    if code in _DAMAGED:
        return damaged(path, str(exc))
    if writing and code in _NO_ACCESS:
        return not_writable(path, str(exc))
    return None


def header_problem(path: str | Path) -> str | None:
    """What is wrong with the file's header, or None: cheap enough for every open.

    A file that does not exist or is empty is a new store (None). Truncation is told
    from the page count the header records; it is judged only when no WAL (or rollback
    journal) may speak for the pages (mid-checkpoint, the header may already count pages
    that are still only in the WAL)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size == 0:
            return None
        with p.open("rb") as f:
            head = f.read(100)
    except OSError:  # (missing: a new store; unreadable: SQLite says so, not as damage)
        return None
    if not head.startswith(MAGIC[: len(head)]):
        return "it is not an SQLite database"
    if len(head) < 100:
        return f"it is {size} bytes, shorter than a database header"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return "its header is damaged (page size)"
    change_counter, pages = head[24:28], int.from_bytes(head[28:32], "big")
    valid_for = head[92:96]
    if pages and valid_for == change_counter and not _journal_speaks_for_pages(p):
        expected = pages * page_size
        if size < expected:
            return (
                f"it is truncated: its header counts {pages} pages ({expected:,} bytes), "
                f"the file has {size:,} bytes"
            )
    return None


def _journal_speaks_for_pages(path: Path) -> bool:
    """Is there a WAL with frames, or a rollback journal (a transaction that crashed in a
    file not in WAL mode), that may hold pages the file does not have yet?"""
    try:
        journal = os.stat(f"{path}-journal").st_size > 0
    except OSError:
        journal = False
    return journal or _wal_has_frames(path)


def _wal_has_frames(path: Path) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size > 32  # (the WAL header is 32 bytes)
    except OSError:
        return False


def open_readonly(path: str | Path, *, immutable: bool = False) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``; or ``immutable=1``, which needs no ``-shm``
    but ignores a WAL, for a file nobody writes)."""
    uri = Path(os.path.abspath(path)).as_uri() + ("?immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def reader(path: str | Path) -> sqlite3.Connection:
    """A read-only connection that has read the schema: ``mode=ro``, or -- where this
    user cannot make the ``-shm`` and there is no WAL to read -- ``immutable=1``."""
    conn = open_readonly(path)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if _code(exc) in _DAMAGED or _wal_has_frames(Path(path)):
            raise
    conn = open_readonly(path, immutable=True)
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn


@dataclass
class Report:
    """What :func:`check` found: problems (one line each, saying what to do), notes,
    and the reasons to refuse the file among the problems: *damage* (what is wrong with
    it) and *newer* (it was written by a newer errands)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damage: str | None = None
    newer: SchemaTooNew | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def refusal(self) -> ErrandsError | None:
        """The error that refuses this file, if any."""
        if self.damage is not None:
            return damaged(self.path, self.damage)
        return self.newer

    def _damaged(self, detail: str) -> None:
        self.damage = detail
        self.problems.append(str(damaged(self.path, detail)))


def _schema(conn: sqlite3.Connection) -> tuple[int, list[str]]:
    """(user_version, the applied migrations' names), read only."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"
    ).fetchone()
    names = (
        [str(r[0]) for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
        if has_table
        else []
    )
    return version, names


def _pages_check(conn: sqlite3.Connection, pragma: str) -> str | None:
    try:
        rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}({_SHOWN + 1})").fetchall()]
    except sqlite3.DatabaseError as exc:  # (a page too damaged to walk stops the check)
        if _code(exc) not in _DAMAGED:
            raise
        return str(exc)
    if rows == ["ok"]:
        return None
    return "; ".join(rows[:_SHOWN]) + (" …" if len(rows) > _SHOWN else "")


def check(path: str | Path, *, full: bool = False) -> Report:
    """Check the store at *path* without writing to it: the header, SQLite's
    ``quick_check`` (``integrity_check`` if *full*), the schema, whether this user may
    read and write it. Never raises for what it finds."""
    from errands.store.sqlite.migrations import MIGRATIONS

    p = Path(path)
    report = Report(p)
    pragma = "integrity_check" if full else "quick_check"
    if not p.exists():
        report.notes.append(f"no store yet; {p} is made on first use")
        return report
    if not os.access(p, os.R_OK):
        report.problems.append(
            f"{p} cannot be read by this user; run errands as the user who owns it "
            f"(or fix its permissions: ls -l {p})"
        )
        return report
    problem = header_problem(p)
    if problem is not None:
        report._damaged(problem)
        return report
    writable = os.access(p, os.W_OK) and os.access(p.parent, os.W_OK)
    try:
        conn = reader(p)
        try:
            found = _pages_check(conn, pragma)
            version, names = _schema(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if _code(exc) in _DAMAGED:
            report._damaged(str(exc))
        else:
            report.problems.append(f"{p} cannot be read: {exc}")
        return report
    if found is not None:
        report._damaged(f"{pragma}: {found}")
    try:
        todo = to_apply(MIGRATIONS, names, version)
    except SchemaTooNew as exc:
        report.newer = exc
        report.problems.append(str(exc))
    else:
        pending = f" ({', '.join(m.name for m in todo)} applied on next open)" if todo else ""
        report.notes.append(f"schema {len(MIGRATIONS) - len(todo)} of {len(MIGRATIONS)}{pending}")
    if found is None:
        report.notes.append(f"{pragma} ok, {p.stat().st_size:,} bytes")
    if not writable:
        report.problems.append(
            f"{p} (or its directory) cannot be written by this user: errands can show what "
            "is there but not run errands; run errands as the user who owns it"
        )
    return report


def verify(path: str | Path) -> None:
    """Refuse a store that fails ``quick_check`` (:class:`StoreDamaged`) or was written
    by a newer errands (:class:`SchemaTooNew`). O(size of the file): for ``errands up``
    and restores, not for every command. (A home this user cannot write is refused
    where it is written.)"""
    refusal = check(path).refusal()
    if refusal is not None:
        raise refusal
