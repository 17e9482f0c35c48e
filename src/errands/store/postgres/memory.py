"""Memory across errands in PostgreSQL (migration ``0004_memory``; docs/memory.md).

``memories``: one row per memory, as in SQLite (:mod:`errands.store.sqlite.memory`),
with ``words``: its text and tags, lower case, accents off (done here, so no extension
is needed), indexed as a ``tsvector`` of the ``simple`` configuration. A search matches
any of its words (each quoted: never query syntax), ranked by ``ts_rank``. The pair
(errand, seq) of the ``remember`` call is unique: a call run again keeps nothing twice.

:meth:`forget` deletes the row (and so its index entry) and VACUUMs the table: the old
row versions are marked free for reuse (the server's WAL, and its backups, keep them
until they are recycled -- docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from errands.errors import NotFound
from errands.store.memory import check_limit, check_query, check_scope, query_words
from errands.store.memory_ops import MemoryOps, memory_from_row
from errands.store.protocol import Memory
from errands.store.writer import Tx

__all__ = ["PostgresMemory"]


_COLUMNS = "id, scope, text, tags, integrity, confidentiality, at, errand_id, seq"
_VECTOR = "to_tsvector('simple', words)"


def _plain(text: str) -> str:
    """*text* lower case, accents off: what the index holds and queries match."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _tsquery(words: Sequence[str]) -> str:
    # (words are \w+: no quote or operator inside; quoted anyway)
    return " | ".join("'" + _plain(w).replace("'", "''") + "'" for w in words)


class PostgresMemory(MemoryOps):
    """Mixed into :class:`~errands.store.postgres.PostgresStore`: the reads, the hooks of
    :class:`~errands.store.memory_ops.MemoryOps`, and forget."""

    if TYPE_CHECKING:

        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
        async def _submit(self, fn: Any) -> Any: ...
        def _vacuum(self, *tables: str) -> None: ...

    async def memories(
        self, scope: str | None = None, query: str | None = None, limit: int = 50
    ) -> list[Memory]:
        check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if scope is not None:
            where.append("scope = %s")
            params.append(check_scope(scope))
        if query is None:
            order, order_params = " ORDER BY id DESC LIMIT %s", list[Any]([limit])
        else:
            q = _tsquery(check_query(query))
            where.append(f"{_VECTOR} @@ to_tsquery('simple', %s)")
            params.append(q)
            order = f" ORDER BY ts_rank({_VECTOR}, to_tsquery('simple', %s)) DESC, id DESC LIMIT %s"
            order_params = [q, limit]
        sql = f"SELECT {_COLUMNS} FROM memories"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [memory_from_row(r) for r in self._rows(sql + order, [*params, *order_params])]

    async def memory(self, memory_id: int) -> Memory:
        rows = self._rows(f"SELECT {_COLUMNS} FROM memories WHERE id = %s", (memory_id,))
        if not rows:
            raise NotFound(f"no memory {memory_id}: see errands memory ls")
        return memory_from_row(rows[0])

    def _memory_of_call(self, tx: Tx, errand_id: str, seq: int | None) -> Memory | None:
        row = tx.conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE errand_id = %s AND seq IS NOT DISTINCT FROM %s",
            (errand_id, seq),
        ).fetchone()
        return None if row is None else memory_from_row(row)

    def _insert_memory(self, tx: Tx, memory: Memory) -> int:
        words = " ".join(query_words(_plain(f"{memory.text} {' '.join(memory.tags)}")))
        found = tx.conn.execute(
            "INSERT INTO memories(scope, text, tags, words, integrity, confidentiality,"
            " at, errand_id, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                memory.scope,
                memory.text,
                json.dumps(list(memory.tags), ensure_ascii=False),
                words,
                memory.label.integrity.value,
                memory.label.confidentiality.value,
                memory.at,
                memory.errand_id,
                memory.seq,
            ),
        ).fetchone()
        assert found is not None
        return int(found[0])

    async def forget(self, memory_id: int) -> None:
        def op(tx: Tx) -> None:
            gone = tx.conn.execute("DELETE FROM memories WHERE id = %s", (memory_id,)).rowcount
            if not gone:
                raise NotFound(f"no memory {memory_id}: see errands memory ls")

        await self._submit(op)
        await asyncio.to_thread(self._vacuum, "memories")
