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

from errands.core.labels import Label
from errands.errors import NotFound
from errands.store.memory import check_limit, check_memory, check_query, check_scope, query_words
from errands.store.protocol import Memory
from errands.store.sqlite.memory import _memory  # (the same columns: one parser)
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


class PostgresMemory:
    """Mixed into :class:`~errands.store.postgres.PostgresStore`."""

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
        return [_memory(r) for r in self._rows(sql + order, [*params, *order_params])]

    async def memory(self, memory_id: int) -> Memory:
        rows = self._rows(f"SELECT {_COLUMNS} FROM memories WHERE id = %s", (memory_id,))
        if not rows:
            raise NotFound(f"no memory {memory_id}: see errands memory ls")
        return _memory(rows[0])

    async def remember(
        self,
        scope: str,
        text: str,
        tags: Sequence[str],
        label: Label,
        *,
        errand_id: str | None = None,
        seq: int | None = None,
    ) -> Memory:
        text, kept = check_memory(scope, text, tags)
        tags_json = json.dumps(list(kept), ensure_ascii=False)
        words = " ".join(query_words(_plain(f"{text} {' '.join(kept)}")))

        def op(tx: Tx) -> Memory:
            conn = tx.conn
            if errand_id is not None:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM memories WHERE errand_id = %s"
                    " AND seq IS NOT DISTINCT FROM %s",
                    (errand_id, seq),
                ).fetchone()
                if row is not None:  # the same call, run again: nothing twice
                    return _memory(row)
            found = conn.execute(
                "INSERT INTO memories(scope, text, tags, words, integrity, confidentiality,"
                " at, errand_id, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    scope,
                    text,
                    tags_json,
                    words,
                    label.integrity.value,
                    label.confidentiality.value,
                    tx.now,
                    errand_id,
                    seq,
                ),
            ).fetchone()
            assert found is not None
            return Memory(int(found[0]), scope, text, kept, label, tx.now, errand_id, seq)

        memory: Memory = await self._submit(op)
        return memory

    async def forget(self, memory_id: int) -> None:
        def op(tx: Tx) -> None:
            gone = tx.conn.execute("DELETE FROM memories WHERE id = %s", (memory_id,)).rowcount
            if not gone:
                raise NotFound(f"no memory {memory_id}: see errands memory ls")

        await self._submit(op)
        await asyncio.to_thread(self._vacuum, "memories")
