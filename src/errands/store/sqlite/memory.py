"""Memory across errands in SQLite (migration ``0012_memory``; docs/memory.md).

- ``memories``: one row per memory -- its scope, text, tags, the label of what it was
  derived from, when, and the errand and sequence number of the ``remember`` call
  (unique: a call run again after a crash keeps nothing twice);
- ``memories_fts``: an FTS5 index over text and tags (external content: the text is
  kept once, in ``memories``), ranked by bm25.

:meth:`forget` is a purge: the row and its index entry are deleted in one transaction,
the index is merged (``optimize``: FTS5 keeps a deleted document's terms in its older
segments until a merge, and SQLite 3.40 has no ``secure-delete`` option), the freed
pages are zeroed (``secure_delete``) and the WAL is checkpointed and truncated.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from errands.errors import NotFound
from errands.store.memory import check_limit, check_query, check_scope
from errands.store.memory_ops import MemoryOps, memory_from_row
from errands.store.protocol import Memory
from errands.store.writer import Tx

__all__ = ["MIGRATION", "SQLiteMemory"]

MIGRATION = """
CREATE TABLE memories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    text TEXT NOT NULL,
    tags TEXT NOT NULL,
    integrity TEXT NOT NULL,
    confidentiality TEXT NOT NULL,
    at REAL NOT NULL,
    errand_id TEXT,
    seq INTEGER
);
CREATE INDEX memories_scope ON memories(scope, id);
CREATE UNIQUE INDEX memories_call ON memories(errand_id, seq) WHERE errand_id IS NOT NULL;
CREATE VIRTUAL TABLE memories_fts USING fts5(
    text, tags, content='memories', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
)
"""

_COLUMNS = "m.id, m.scope, m.text, m.tags, m.integrity, m.confidentiality, m.at, m.errand_id, m.seq"


def _match(words: Sequence[str]) -> str:
    """An FTS5 query matching any of *words*, each quoted: a person's or a model's words
    are never read as query syntax."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


class SQLiteMemory(MemoryOps):
    """Mixed into :class:`~errands.store.sqlite.SQLiteStore`: the reads, the hooks of
    :class:`~errands.store.memory_ops.MemoryOps`, and forget."""

    if TYPE_CHECKING:

        def _reader(self) -> sqlite3.Connection: ...
        async def _submit(self, fn: Any) -> Any: ...
        async def _after_purge(self) -> None: ...

    def _memory_rows(self, sql: str, params: Sequence[Any]) -> list[Memory]:
        try:
            rows = self._reader().execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as exc:  # a read-only store from before 0012
            if "no such table" in str(exc):
                return []
            raise
        return [memory_from_row(r) for r in rows]

    async def memories(
        self, scope: str | None = None, query: str | None = None, limit: int = 50
    ) -> list[Memory]:
        check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if scope is not None:
            where.append("m.scope = ?")
            params.append(check_scope(scope))
        if query is None:
            sql = f"SELECT {_COLUMNS} FROM memories m"
            order = " ORDER BY m.id DESC LIMIT ?"
        else:
            sql = f"SELECT {_COLUMNS} FROM memories_fts f JOIN memories m ON m.id = f.rowid"
            where.insert(0, "memories_fts MATCH ?")
            params.insert(0, _match(check_query(query)))
            order = " ORDER BY f.rank, m.id DESC LIMIT ?"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._memory_rows(sql + order, [*params, limit])

    async def memory(self, memory_id: int) -> Memory:
        found = self._memory_rows(f"SELECT {_COLUMNS} FROM memories m WHERE m.id = ?", [memory_id])
        if not found:
            raise NotFound(f"no memory {memory_id}: see errands memory ls")
        return found[0]

    def _memory_of_call(self, tx: Tx, errand_id: str, seq: int | None) -> Memory | None:
        row = tx.conn.execute(
            f"SELECT {_COLUMNS} FROM memories m WHERE m.errand_id = ? AND m.seq IS ?",
            (errand_id, seq),
        ).fetchone()
        return None if row is None else memory_from_row(row)

    def _insert_memory(self, tx: Tx, memory: Memory) -> int:
        cursor = tx.conn.execute(
            "INSERT INTO memories(scope, text, tags, integrity, confidentiality, at,"
            " errand_id, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                memory.scope,
                memory.text,
                json.dumps(list(memory.tags), ensure_ascii=False),
                memory.label.integrity.value,
                memory.label.confidentiality.value,
                memory.at,
                memory.errand_id,
                memory.seq,
            ),
        )
        mid = int(cursor.lastrowid or 0)
        tx.conn.execute(
            "INSERT INTO memories_fts(rowid, text, tags) VALUES (?, ?, ?)",
            (mid, memory.text, " ".join(memory.tags)),
        )
        return mid

    async def forget(self, memory_id: int) -> None:
        def op(tx: Tx) -> None:
            row = tx.conn.execute(
                "SELECT text, tags FROM memories WHERE id = ?", (memory_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no memory {memory_id}: see errands memory ls")
            text, tags = row
            tx.conn.execute(
                "INSERT INTO memories_fts(memories_fts, rowid, text, tags)"
                " VALUES ('delete', ?, ?, ?)",
                (memory_id, text, " ".join(json.loads(tags))),
            )
            tx.conn.execute("DELETE FROM memories WHERE id = ?", (memory_id,))
            # merge the index's segments: the deleted terms leave its pages
            tx.conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")

        await self._submit(op)
        await self._after_purge()  # the WAL's old page images: copied in and truncated
