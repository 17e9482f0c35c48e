"""Fold snapshots in PostgreSQL (migration ``0005_snapshots``; errands.core.snapshot):
the rows of :mod:`errands.store.sqlite.snapshots` -- ``snapshots``, one per errand, and
``snapshot_parts`` -- in ``bytea`` columns. A new snapshot writes only the parts the kept
one lacks and deletes those it no longer names, in one transaction; an errand's rows go
in the transaction that rewrites its log (purge, compaction)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from errands.store.protocol import Snapshot
from errands.store.snapshots import SnapshotOps, snapshot_from_rows
from errands.store.writer import Tx

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["PostgresSnapshots"]


class PostgresSnapshots(SnapshotOps):
    """Mixed into :class:`~errands.store.postgres.PostgresStore`: the hooks of
    :class:`~errands.store.snapshots.SnapshotOps`."""

    if TYPE_CHECKING:

        def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def _read_snapshot(self, errand_id: str) -> Snapshot | None:
        rows = self._rows(
            "SELECT seq, format, state, parts FROM snapshots WHERE errand_id = %s", (errand_id,)
        )
        if not rows:
            return None
        parts = self._rows(
            "SELECT name, body FROM snapshot_parts WHERE errand_id = %s", (errand_id,)
        )
        return snapshot_from_rows(rows[0], parts)

    def _kept_snapshot_seq(self, tx: Tx, errand_id: str) -> int | None:
        kept = tx.conn.execute(
            "SELECT seq FROM snapshots WHERE errand_id = %s FOR UPDATE", (errand_id,)
        ).fetchone()
        return None if kept is None else int(kept[0])

    def _write_snapshot(self, tx: Tx, errand_id: str, snapshot: Snapshot) -> None:
        names = snapshot.parts
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
