"""Fold snapshots in PostgreSQL (migration ``0005_snapshots``; errands.core.snapshot):
the rows of :mod:`errands.store.sqlite.snapshots` -- ``snapshots``, one per errand, and
``snapshot_parts`` -- in ``bytea`` columns. A new snapshot writes only the parts the kept
one lacks and deletes those it no longer names, in one transaction; an errand's rows go
in the transaction that rewrites its log (purge, compaction)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from errands.store.protocol import Snapshot
from errands.store.writer import Tx

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["PostgresSnapshots"]


class PostgresSnapshots:
    """Mixed into :class:`~errands.store.postgres.PostgresStore`."""

    if TYPE_CHECKING:

        def _holds_secret(self, snapshot: Snapshot) -> bool: ...
        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
        async def _submit(self, fn: Any) -> Any: ...

    async def snapshot(self, errand_id: str) -> Snapshot | None:
        return await asyncio.to_thread(self._read_snapshot, errand_id)

    def _read_snapshot(self, errand_id: str) -> Snapshot | None:
        rows = self._rows(
            "SELECT seq, format, state, parts FROM snapshots WHERE errand_id = %s", (errand_id,)
        )
        if not rows:
            return None
        parts = self._rows(
            "SELECT name, body FROM snapshot_parts WHERE errand_id = %s", (errand_id,)
        )
        seq, fmt, state, names = rows[0]
        data = {str(n): bytes(b) for n, b in parts}
        return Snapshot(int(seq), str(fmt), bytes(state), tuple(str(names).split()), data)

    async def put_snapshot(self, errand_id: str, snapshot: Snapshot) -> bool:
        if self._holds_secret(snapshot):  # (a fold of the redacted log never does)
            return False
        names = snapshot.parts

        def op(tx: Tx) -> bool:
            kept = tx.conn.execute(
                "SELECT seq FROM snapshots WHERE errand_id = %s FOR UPDATE", (errand_id,)
            ).fetchone()
            if kept is not None and int(kept[0]) >= snapshot.seq:
                return False
            with tx.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO snapshot_parts(errand_id, name, body) VALUES (%s, %s, %s)"
                    " ON CONFLICT (errand_id, name) DO UPDATE SET body = EXCLUDED.body",
                    [(errand_id, name, body) for name, body in sorted(snapshot.data.items())],
                )
            tx.conn.execute(
                "DELETE FROM snapshot_parts WHERE errand_id = %s AND NOT (name = ANY(%s))",
                (errand_id, list(names)),
            )
            tx.conn.execute(
                "INSERT INTO snapshots(errand_id, seq, format, state, parts)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (errand_id) DO UPDATE SET"
                " seq = EXCLUDED.seq, format = EXCLUDED.format, state = EXCLUDED.state,"
                " parts = EXCLUDED.parts",
                (errand_id, snapshot.seq, snapshot.format, snapshot.state, " ".join(names)),
            )
            return True

        return bool(await self._submit(op))
