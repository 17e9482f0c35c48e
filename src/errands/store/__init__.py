"""The durable store of errand logs: the interface every caller uses, and its backends.

Callers type against :class:`Store` / :class:`StoreReader` (:mod:`.protocol`) and get a
store from :func:`open_store`, the one place a backend is chosen and the secret
redactor attached. :mod:`.base` holds what every backend shares; :mod:`.sqlite` is the
default backend.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from errands.errors import ConfigError, ErrandExists, LeaseLost, NotFound, StoreError
from errands.store.protocol import (
    AppendCheck,
    BudgetStatus,
    Store,
    StoredEvent,
    StoreReader,
    UsageRow,
)
from errands.store.redact import MIN_SECRET_LENGTH, Redactor, secret_env_values

if TYPE_CHECKING:
    from errands.config import Settings

__all__ = [
    "AppendCheck",
    "BudgetStatus",
    "ErrandExists",
    "LeaseLost",
    "NotFound",
    "Store",
    "StoreError",
    "StoreReader",
    "StoredEvent",
    "UsageRow",
    "open_store",
    "writable",
]


def open_store(
    settings: Settings, *, redactor: Redactor | None = None, read_only: bool = False
) -> Store:
    """The store of *settings*' home, opened (and migrated), with every secret the
    environment holds redacted before it reaches the log (or *redactor*'s).

    *read_only*: open it for reading only, without migrating or writing anything, as a
    user who cannot write the home may (:class:`~errands.store.sqlite.readonly.
    ReadOnlySQLiteStore`); every write is refused."""
    # (the mail password's variable is a secret whatever its name: [email] password_env)
    mail = [settings.email.password_env] if settings.email and settings.email.password_env else []
    from errands.config import STORE_URL_ENV

    url = settings.store_url
    if url is not None:  # PostgreSQL: the server's permissions decide who may write
        try:
            from errands.store.postgres.store import PostgresStore, url_password
        except ImportError:
            raise ConfigError(
                "[store] url names a PostgreSQL database, but psycopg is not installed:"
                " pip install 'errands[postgres]'"
            ) from None
        secrets = secret_env_values(extra_names=[*mail, STORE_URL_ENV])
        password = url_password(url)  # (never in the log, whether the URL came from env or file)
        if password and len(password) >= MIN_SECRET_LENGTH:
            secrets["STORE_URL_PASSWORD"] = password
        return PostgresStore(url, redactor=redactor or Redactor(secrets))
    if read_only:
        from errands.store.sqlite.readonly import ReadOnlySQLiteStore

        return ReadOnlySQLiteStore(settings.db_path)
    from errands.store.sqlite import SQLiteStore

    return SQLiteStore(
        settings.db_path, redactor=redactor or Redactor(secret_env_values(extra_names=mail))
    )


def writable(settings: Settings) -> bool:
    """May this process write the home's store: the file and its WAL and shared-memory
    files where they exist, and the directory SQLite makes them in (or the nearest
    existing directory above a home not made yet)? (On PostgreSQL: yes -- the server
    decides.)"""
    if settings.store_url is not None:
        return True
    db = settings.db_path
    where = db.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not os.access(where, os.W_OK | os.X_OK):
        return False
    return all(
        not f.exists() or os.access(f, os.R_OK | os.W_OK)
        for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
    )
