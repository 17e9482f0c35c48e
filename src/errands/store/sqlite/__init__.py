"""The SQLite store (the default): one file, WAL, group commit. See :mod:`.store`."""

from errands.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
