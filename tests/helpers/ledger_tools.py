"""A tool module for ``[tools] modules`` in the multi-host tests (tests/test_multihost.py):
the ledger tools, and an observer of what the worker's store acknowledged.

Everything goes to the journal ``$ERRANDS_TEST_LEDGER``, a file outside errands' store
(every host's processes see the same file system): one ``os.write`` per line on an
``O_APPEND`` descriptor, framed ``^ FIELDS $`` (a SIGKILL can tear a line; the reader
skips what is torn). Lines:

``effect TOOL ERRAND KEY IKEY PID``  a ledger tool ran (fsynced before it returns)
``ack ERRAND SEQ TYPE HASH OWNER PID T``  ``store.append`` returned: the event is
    committed (T: ``time.monotonic()``, one clock for every process of the machine)

- ``ledger_once`` (external, not idempotent, ignores keys): every run is an effect --
  two ``effect`` lines for one call are the duplicate the outbox exists to prevent;
- ``ledger_idem`` (idempotent): may run again after a crash.

Loaded by a worker (``$ERRANDS_TEST_LEDGER`` set), the module wraps
``PostgresStore.append`` in that process (test code in
the worker, as the crash torture's Acking store is): each acknowledged event is noted
before the caller learns of it. ``ERRANDS_TEST_UNFENCED=1`` is the negative control:
this worker's store checks no lease on its appends.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from errands.core import events as ev
from errands.core.events import EffectClass
from errands.store import AppendCheck
from errands.store.postgres import PostgresStore
from errands.store.writer import Tx
from errands.tools.tool import ToolContext
from errands.tools.toolset import FunctionToolset

__all__ = ["errands_tools", "event_hash", "read_journal"]

_fds: list[int] = []  # the journal, opened at the first line written


def _write(*fields: object, sync: bool = False) -> None:
    if not _fds:
        path = os.environ["ERRANDS_TEST_LEDGER"]
        _fds.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    body = " ".join(str(f).replace(" ", "_").replace("\n", "_") for f in fields)
    os.write(_fds[0], f"^ {body} $\n".encode())
    if sync:
        os.fsync(_fds[0])


def event_hash(event: ev.Event) -> str:
    return hashlib.sha256(event.model_dump_json().encode()).hexdigest()[:16]


def read_journal(text: str) -> list[list[str]]:
    """The journal's whole lines, split (torn ones skipped)."""
    lines = []
    for raw in text.splitlines():
        start = raw.rfind("^ ")
        if start >= 0 and raw.endswith(" $"):
            lines.append(raw[start + 2 : -2].split())
    return lines


errands_tools = FunctionToolset()


@errands_tools.tool(effect=EffectClass.external)
def ledger_once(key: str, ctx: ToolContext) -> str:
    """Send KEY: every run is an effect, keys or not.

    Args:
        key: What to send.
    """
    _write("effect", "ledger_once", ctx.errand_id, key, ctx.idempotency_key, os.getpid(), sync=True)
    return f"sent {key}"


@errands_tools.tool(effect=EffectClass.write_local, idempotent=True)
def ledger_idem(key: str, ctx: ToolContext) -> str:
    """Record KEY (idempotent: recording twice is harmless).

    Args:
        key: What to record.
    """
    _write("effect", "ledger_idem", ctx.errand_id, key, ctx.idempotency_key, os.getpid(), sync=True)
    return f"recorded {key}"


def _acking(append: Callable[..., Any]) -> Callable[..., Any]:
    async def acked(
        self: PostgresStore,
        errand_id: str,
        events: Sequence[ev.Event],
        *,
        owner: str | None = None,
        guard: AppendCheck | None = None,
        stored: list[ev.Event] | None = None,
    ) -> list[int]:
        logged: list[ev.Event] = []
        seqs: list[int] = await append(
            self, errand_id, events, owner=owner, guard=guard, stored=logged
        )
        if stored is not None:
            stored.extend(logged)
        now = time.monotonic()
        for seq, event in zip(seqs, logged, strict=True):
            _write("ack", errand_id, seq, event.type, event_hash(event), owner or "-",
                   os.getpid(), f"{now:.3f}")  # fmt: skip
        return seqs

    return acked


if "ERRANDS_TEST_LEDGER" in os.environ:  # (a worker's, not the test process's import)
    PostgresStore.append = _acking(PostgresStore.append)  # type: ignore[method-assign]


_fenced_batch = PostgresStore._written_elsewhere


def _unfenced_batch(self: PostgresStore, conn: psycopg.Connection[Any]) -> bool:
    self._batch_owned = []  # (no lease rows read FOR SHARE)
    return _fenced_batch(self, conn)


def _unchecked(self: PostgresStore, tx: Tx, errand_id: str, owner: str) -> None:
    return None


if os.environ.get("ERRANDS_TEST_UNFENCED") == "1":
    # the negative control, in this worker only: fencing disabled -- an append made
    # under a lease does not check that the lease is still its owner's
    PostgresStore._written_elsewhere = _unfenced_batch  # type: ignore[method-assign]
    PostgresStore._check_lease = _unchecked  # type: ignore[method-assign]
