"""The backend-neutral store: everything about keeping errand logs that is not SQL.

:class:`BaseStore` implements the :class:`~errands.store.protocol.Store` protocol up to
a set of small hooks -- each a few SQL statements -- that a backend fills in
(:class:`errands.store.sqlite.SQLiteStore`; a PostgreSQL store beside it). What lives
here:

- **group commit**: callers enqueue an operation and await a future; one writer thread
  drains everything queued, runs it in *one* transaction with *one* commit, and only
  then resolves the futures -- an append returns once its event is durable, and a
  thousand concurrent errands share a commit. A batch that fails as a whole is retried
  one operation at a time, so one bad operation refuses only itself;
- **staging and fold**: events are serialised and redacted in the caller's thread
  (:meth:`_prepare`), then numbered and folded into the errand's view
  (:func:`errands.core.states.apply`) inside the transaction; the view is the
  projection row, written in the same commit and rebuildable from the log;
- **the projection cache**: views of running errands stay in memory, and a row whose
  indexed columns did not change is updated without touching them; an errand that
  stops (waits, finishes) leaves the cache -- waiting costs nothing;
- **spend booking and admission**: budgets (:mod:`errands.costs.spend`) are booked in
  the same transaction as the events that change them, and a call is admitted only if
  every cap that applies holds its worst case;
- **purge rules** (:mod:`errands.store.purge`), the rebuild, and the integrity check.

The writer thread is the one serial part, so what it does per event is kept small.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol

from errands.clock import SYSTEM, Clock
from errands.core import events as ev
from errands.core.contracts import enabled, ensure, invariant, require
from errands.core.states import (
    RUNNABLE,
    TERMINAL,
    ErrandState,
    ErrandView,
    PendingApproval,
    apply,
)
from errands.costs import spend
from errands.errors import ErrandExists, LeaseLost, NotFound, StoreError
from errands.store.compaction import RetentionOps
from errands.store.protocol import (
    AppendCheck,
    BudgetStatus,
    Listening,
    Snapshot,
    StoredEvent,
    UsageRow,
)
from errands.store.purge import purged
from errands.store.redact import Redactor
from errands.store.schedules import ScheduleOps
from errands.store.writer import GroupCommit, Op, Prepared, Tx, WriterStats

__all__ = [
    "BLOB_THRESHOLD",
    "COLUMNS",
    "BaseStore",
    "Prepared",
    "ProjectionRow",
    "SpendTables",
    "Tx",
    "WriterStats",
]

BLOB_THRESHOLD = 16 * 1024  # event bodies above this go to content-addressed blobs
VIEW_CACHE_MAX = 20_000  # views the writer keeps in memory
_CHECK = enabled()

# The projection row: these columns, and (as JSON, defaults left out) the rest of the view
COLUMNS = ("id", "state", "title", "created_at", "updated_at", "last_seq", "parent")
_COLUMN_SET = set(COLUMNS)
_EXTRA_FIELDS = tuple(f for f in ErrandView.model_fields if f not in _COLUMN_SET)
_extras = operator.attrgetter(*_EXTRA_FIELDS)
_ENDS = frozenset({"state_changed", "cancel_requested"})  # what may end an errand
# a sub-errand in one of these wakes its parent: it ended, or it needs a person
_STOPPED = TERMINAL | {ErrandState.needs_attention}
_BOOKED = frozenset(
    {"model_responded", "model_used", "state_changed"}
)  # events that touch the budgets

# (id, state, title, created_at, updated_at, last_seq, parent, pending_count, view JSON)
ProjectionRow = tuple[str, str, str, float, float, int, str | None, int, str]
# (title, updated_at, last_seq, parent, view JSON, id): a row whose state and pending
# count did not change -- the common case, a running errand logging its steps
ProjectionUpdate = tuple[str, float, int, str | None, str, str]


class SpendTables(Protocol):
    """The budget tables' SQL (``spend``, ``budget_holds``): a backend's module of
    functions (:mod:`errands.store.sqlite.spend`, :mod:`errands.store.postgres.spend`),
    each run in the caller's transaction on *conn*."""

    def spent(self, conn: Any, scope: str, now: float) -> int: ...
    def held(self, conn: Any, scope: str, now: float, hold: str) -> int: ...
    def place(
        self,
        conn: Any,
        hold: str,
        caps: Sequence[spend.Cap],
        amount: int,
        now: float,
        expires_at: float,
    ) -> None: ...
    def settle(self, conn: Any, hold: str) -> None: ...
    def release(self, conn: Any, errand_id: str) -> None: ...
    def add(self, conn: Any, scopes: Iterable[str], amount: int) -> None: ...
    def rebuild(self, conn: Any) -> None: ...


class BaseStore(GroupCommit, ScheduleOps, RetentionOps):
    """A store, up to its SQL. A backend opens its connections, then calls
    :meth:`_start_writer`; it implements the hooks marked abstract below, and names
    its budget tables' SQL (:attr:`_spend`)."""

    _spend: ClassVar[SpendTables]

    def __init__(self, *, redactor: Redactor | None = None, clock: Clock = SYSTEM) -> None:
        # the wall clock stamps what people read (and dates the daily budget); leases and
        # budget holds expire on the lease clock (:meth:`_lease_now`), which never steps
        super().__init__(clock.wall)
        self.time = clock
        self.redact = redactor or Redactor()
        # writer-thread state: caches, dropped whenever a transaction fails or another
        # process has written (:meth:`_written_elsewhere`)
        self._views: dict[str, ErrandView] = {}
        # errand -> what its projection row holds: (state, pending count), and the values
        # of the view column's fields with their JSON (to skip dumping it again)
        self._written: dict[str, tuple[tuple[str, int], tuple[Any, ...], str]] = {}
        self._held: dict[str, str] = {}  # errand -> owner, leases this writer knows are held
        # errands with budget holds this writer made: only their responses and state
        # changes need to touch the holds (one left by a dead process expires, or the
        # run that resumes its errand replaces it)
        self._reserved: set[str] = set()

    def _lease_now(self) -> float:
        """Now on the clock leases and budget holds expire by: the host's steady clock
        (every process on the host reads the same one; a backend whose database has a
        clock of its own -- PostgreSQL -- uses that instead)."""
        return self.time.steady()

    # ================================================================= backend hooks
    # (all run in the writer thread, inside the batch's transaction, unless noted)

    @abc.abstractmethod
    def _load_view(self, tx: Tx, errand_id: str) -> ErrandView | None:
        """The errand's projection row as a view (None: no such errand)."""

    @abc.abstractmethod
    def _exists(self, tx: Tx, errand_id: str) -> bool: ...

    @abc.abstractmethod
    def _write(self, tx: Tx, upserts: list[ProjectionRow], updates: list[ProjectionUpdate]) -> None:
        """Write the batch: ``tx.blobs``, ``tx.rows`` (events), the projection rows, and
        ``tx.wakeups``."""

    @abc.abstractmethod
    def _lease_owner(self, tx: Tx, errand_id: str) -> str | None: ...

    @abc.abstractmethod
    def _set_timer(self, tx: Tx, errand_id: str, wake_at: float) -> None:
        """A sleeping errand's timer (wall time): claiming takes it once it is due."""

    @abc.abstractmethod
    def _take_lease(self, tx: Tx, errand_id: str, owner: str, until: float) -> bool:
        """Take the lease if it is free, expired or *owner*'s; True if taken."""

    def _free_runnable(self, tx: Tx, limit: int) -> list[str]:
        """Runnable errands whose lease is free or expired: queued and running ones,
        least recently active first, then sleeping ones whose timer is due."""
        lease_now = self._lease_now()
        found = self._free_active(tx, lease_now, limit)
        if len(found) < limit:  # and the sleeping errands whose timer is due
            found.extend(self._free_due(tx, self.time.wall(), lease_now, limit - len(found)))
        return found

    @abc.abstractmethod
    def _free_active(self, tx: Tx, lease_now: float, limit: int) -> list[str]:
        """Queued and running errands whose lease is free or expired at *lease_now*,
        least recently updated first."""

    @abc.abstractmethod
    def _free_due(self, tx: Tx, now: float, lease_now: float, limit: int) -> list[str]:
        """Sleeping errands whose timer is due at *now* (wall time) and whose lease is
        free or expired at *lease_now*, soonest timer first."""

    @abc.abstractmethod
    def _renew_leases(self, tx: Tx, owner: str, until: float) -> set[str]:
        """Extend every lease *owner* holds (and its budget holds); return them."""

    @abc.abstractmethod
    def _drop_lease(self, tx: Tx, errand_id: str, owner: str) -> None: ...

    # (budgets: the backend's :class:`SpendTables`, in the batch's transaction)

    def _spent_on(self, tx: Tx, scope: str) -> int:
        """What the log says was spent against *scope* (today's for the daily scope)."""
        return self._spend.spent(tx.conn, scope, tx.now)

    def _held_on(self, tx: Tx, scope: str, hold: str) -> int:
        """What calls in flight hold against *scope*, leaving out the hold *hold*."""
        return self._spend.held(tx.conn, scope, self._lease_now(), hold)

    def _place_hold(
        self, tx: Tx, hold: str, caps: Sequence[spend.Cap], amount: int, ttl: float
    ) -> None:
        """Hold *amount* against every cap (replacing a hold of that name)."""
        now = self._lease_now()
        self._spend.place(tx.conn, hold, caps, amount, now, now + ttl)

    def _settle_hold(self, tx: Tx, hold: str) -> None:
        self._spend.settle(tx.conn, hold)

    def _release_holds(self, tx: Tx, errand_id: str) -> None:
        self._spend.release(tx.conn, errand_id)

    def _add_spend(self, tx: Tx, scopes: Sequence[str], amount: int) -> None:
        self._spend.add(tx.conn, scopes, amount)

    @abc.abstractmethod
    def _log_bodies(self, tx: Tx, errand_id: str) -> list[tuple[int, str, str | None]]:
        """Every event of the errand: (seq, stored JSON body, blob hash or None)."""

    @abc.abstractmethod
    def _rewrite_body(self, tx: Tx, errand_id: str, seq: int, body: str) -> None:
        """Replace an event's body in place (no blob any more)."""

    @abc.abstractmethod
    def _drop_orphan_blobs(self, tx: Tx, hashes: Sequence[str]) -> None: ...

    async def _after_purge(self) -> None:
        """After a purge committed: wipe what the backend still holds of the old pages."""
        return None

    @abc.abstractmethod
    def _errand_ids(self, tx: Tx) -> list[str]:
        """Every errand that has a log."""

    def _rebuild_spend(self, tx: Tx) -> None:
        self._spend.rebuild(tx.conn)

    # reads (called from any thread; no transaction)

    @abc.abstractmethod
    def _read_log(self, errand_id: str, after: int) -> list[StoredEvent]: ...

    @abc.abstractmethod
    def _read_latest(self, errand_id: str, limit: int, before: int | None) -> list[StoredEvent]:
        """The newest *limit* events before *before* (None: the end), in order."""

    @abc.abstractmethod
    def _read_view(self, errand_id: str) -> ErrandView: ...

    @abc.abstractmethod
    def _integrity_extra(self) -> list[str]:
        """The backend's own checks: derived tables not covered by the fold
        (pending counts, spend, orphan rows)."""

    # ================================================================= staging

    def _flush(self, tx: Tx) -> None:
        upserts: list[ProjectionRow] = []
        updates: list[ProjectionUpdate] = []
        written = self._written
        for errand_id, view in tx.dirty.items():
            key = (view.state.value, len(view.pending))
            extras = _extras(view)
            before = written.get(errand_id)
            if before is not None and all(map(operator.is_, before[1], extras)):
                data = before[2]  # apply replaces values, never mutates them: unchanged
            else:
                data = view.model_dump_json(exclude=_COLUMN_SET, exclude_defaults=True)
            written[errand_id] = (key, extras, data)
            if before is not None and before[0] == key:
                updates.append(
                    (view.title, view.updated_at, view.last_seq, view.parent, data, errand_id)
                )
            else:
                upserts.append(
                    (
                        errand_id,
                        key[0],
                        view.title,
                        view.created_at,
                        view.updated_at,
                        view.last_seq,
                        view.parent,
                        key[1],
                        data,
                    )
                )
        self._write(tx, upserts, updates)

    def _committed_tx(self, tx: Tx) -> None:
        # waiting costs nothing: an errand that stopped (waiting, finished) leaves the
        # writer's caches; its row is read back if it is written to again
        for errand_id, view in tx.dirty.items():
            if view.state not in RUNNABLE:
                self._views.pop(errand_id, None)
                self._written.pop(errand_id, None)

    def _forget(self) -> None:
        self._views.clear()
        self._written.clear()
        self._held.clear()

    def _prepare(self, event: ev.Event) -> Prepared:
        """Serialise and redact one event (in the caller's thread, not the writer's).

        When redaction changed the body, the event folded into the projection is the
        one parsed back from the redacted body: the projection is a fold of the log as
        stored, and a secret reaches neither.
        """
        body = event.model_dump_json()
        if self.redact:
            redacted = self.redact(body)
            if redacted != body:
                body = redacted
                event = ev.load_event(body)
        blob = None
        if len(body) > BLOB_THRESHOLD:
            blob = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
        return event, body, blob

    def _view_for(self, tx: Tx, errand_id: str) -> ErrandView:
        view = tx.dirty.get(errand_id)
        if view is not None:
            return view
        view = self._views.get(errand_id)
        if view is not None:
            return view
        view = self._load_view(tx, errand_id)
        if view is None:
            raise NotFound(f"no errand {errand_id}")
        self._cache(view)
        return view

    def _cache(self, view: ErrandView) -> None:
        if len(self._views) >= VIEW_CACHE_MAX:
            self._views.clear()
            self._written.clear()
        self._views[view.id] = view

    def _check_lease(self, tx: Tx, errand_id: str, owner: str) -> None:
        if self._held.get(errand_id) == owner:
            return
        if self._lease_owner(tx, errand_id) != owner:
            raise LeaseLost(f"errand {errand_id} is owned by another process now")
        self._held[errand_id] = owner

    def _stage(self, tx: Tx, view: ErrandView, prepared: Sequence[Prepared]) -> list[int]:
        errand_id = view.id
        rows = tx.rows
        seqs: list[int] = []
        for event, body, blob in prepared:
            seq = view.last_seq + 1
            if blob is None:
                rows.append((errand_id, seq, event.type, event.at, body, None))
            else:
                tx.blobs[blob] = body
                rows.append((errand_id, seq, event.type, event.at, "", blob))
            tx.body_bytes += len(body)
            apply(view, seq, event)
            seqs.append(seq)
            if event.type in _BOOKED:
                self._book(tx, view, event)
            elif event.type == "sleeping":
                assert isinstance(event, ev.Sleeping)
                self._set_timer(tx, errand_id, event.wake_at)
            if view.parent is not None and self._wakes_parent(event.type, view):
                self._wake_parent(tx, view.parent, event.at)
        tx.dirty[errand_id] = view
        if self._listeners:
            tx.appended.append((errand_id, seqs[-1]))
        return seqs

    def _wakes_parent(self, event_type: str, view: ErrandView) -> bool:
        """Whether a sub-errand's event wakes its parent: it ended, or it needs a person
        (``needs_attention``, or an approval asked: a parent that asked to know is told,
        another looks and sleeps on, at no model call)."""
        return (event_type in _ENDS and view.state in _STOPPED) or (
            event_type == "approval_requested"
        )

    def _wake_parent(self, tx: Tx, parent: str, at: float) -> None:
        """A sub-errand stopped (ended, or needs a person): in the same commit, its
        parent's timer is due and a wake-up is recorded (docs/subagents.md)."""
        self._set_timer(tx, parent, at)
        tx.wakeups.append(parent)

    def _book(self, tx: Tx, view: ErrandView, event: ev.Event) -> None:
        """Keep the budget tables in step with the log, in the same transaction."""
        if isinstance(event, ev.ModelResponded | ev.ModelUsed):
            if isinstance(event, ev.ModelResponded) and view.id in self._reserved:
                self._settle_hold(tx, spend.hold_id(view.id, event.request_seq))
            cost = spend.nanos(event.usage.cost_usd)
            if cost:

                def parent_of(errand_id: str) -> str | None:
                    if errand_id == view.id:
                        return view.parent
                    try:
                        return self._view_for(tx, errand_id).parent
                    except NotFound:
                        return None

                self._add_spend(
                    tx, spend.scopes_of(view.id, event.at, parent_of, view.schedule), cost
                )
        elif view.id in self._reserved:  # it changed state: no call of its is in flight
            self._release_holds(tx, view.id)
            self._reserved.discard(view.id)

    # ================================================================= writes

    async def create(self, errand_id: str, created: ev.ErrandCreated) -> None:
        require(bool(errand_id), "an errand id")
        prepared = [self._prepare(created)]

        def op(tx: Tx) -> None:
            if errand_id in self._views or errand_id in tx.dirty or self._exists(tx, errand_id):
                raise ErrandExists(f"errand {errand_id} exists already")
            view = ErrandView(id=errand_id)
            self._stage(tx, view, prepared)
            self._cache(view)

        await self._submit(op)

    async def append(
        self,
        errand_id: str,
        events: Sequence[ev.Event],
        *,
        owner: str | None = None,
        guard: AppendCheck | None = None,
        stored: list[ev.Event] | None = None,
    ) -> list[int]:
        require(len(events) > 0, "at least one event")
        prepared: list[Prepared] = []
        for event in events:
            require(event.type != "errand_created", "errand_created only through create()")
            prepared.append(self._prepare(event))
            if stored is not None:
                stored.append(prepared[-1][0])
        # (the hot path: no closure, and _submit inlined -- fewer objects per append)
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._queue.put(Op(None, future, loop, None, None, None, errand_id, prepared, owner, guard))
        return await future

    def _append_in_tx(self, tx: Tx, op: Op) -> list[int]:
        errand_id, prepared, owner, guard = op.errand_id, op.prepared, op.owner, op.guard
        assert prepared is not None
        view = self._view_for(tx, errand_id)
        if owner is not None:
            self._check_lease(tx, errand_id, owner)
        if guard is not None:
            guard(view)
        first = view.last_seq + 1
        seqs = self._stage(tx, view, prepared)
        ensure(
            seqs[0] == first and seqs[-1] == first + len(prepared) - 1 == view.last_seq,
            "contiguous sequence numbers",
        )
        if owner is None:
            tx.wakeups.append(errand_id)
        return seqs

    def _acquire(self, tx: Tx, errand_id: str, owner: str, ttl: float) -> bool:
        if self._take_lease(tx, errand_id, owner, self._lease_now() + ttl):
            self._held[errand_id] = owner
            return True
        if self._held.get(errand_id) == owner:
            del self._held[errand_id]
        return False

    async def acquire(self, errand_id: str, owner: str, ttl: float) -> bool:
        def op(tx: Tx) -> bool:
            return self._acquire(tx, errand_id, owner, ttl)

        result: bool = await self._submit(op)
        return result

    async def claim_runnable(self, owner: str, ttl: float, limit: int) -> list[str]:
        def op(tx: Tx) -> list[str]:
            return [e for e in self._free_runnable(tx, limit) if self._acquire(tx, e, owner, ttl)]

        result: list[str] = await self._submit(op)
        return result

    async def renew(self, owner: str, ttl: float) -> set[str]:
        def op(tx: Tx) -> set[str]:
            held = self._renew_leases(tx, owner, self._lease_now() + ttl)
            for errand_id in [e for e, o in self._held.items() if o == owner and e not in held]:
                del self._held[errand_id]
            return held

        result: set[str] = await self._submit(op)
        return result

    async def release(self, errand_id: str, owner: str) -> None:
        def op(tx: Tx) -> None:
            self._drop_lease(tx, errand_id, owner)
            if self._held.get(errand_id) == owner:
                del self._held[errand_id]

        await self._submit(op)

    # ================================================================= budgets

    async def reserve(
        self,
        errand_id: str,
        request_seq: int,
        amount_usd: float,
        *,
        daily_usd: float | None,
        ttl: float,
    ) -> spend.CapReached | None:
        """Reserve *amount_usd* for the model call of request *request_seq*, against the
        daily cap and the budget of the errand and of each of its ancestors; or say which
        cap it would pass (nothing written). Settled by the transaction that logs the
        response."""
        require(amount_usd >= 0 and ttl > 0, "a non-negative amount and a positive ttl")

        def op(tx: Tx) -> spend.CapReached | None:
            caps = self._caps(tx, self._view_for(tx, errand_id), daily_usd)
            refusal = self._admit(
                tx, spend.hold_id(errand_id, request_seq), caps, spend.nanos(amount_usd), ttl
            )
            if refusal is None and caps:
                self._reserved.add(errand_id)
            return refusal

        result: spend.CapReached | None = await self._submit(op)
        return result

    def _caps(self, tx: Tx, view: ErrandView, daily_usd: float | None) -> list[spend.Cap]:
        """Every cap a call of *view*'s errand counts against."""
        caps = []
        if daily_usd is not None:
            caps.append(spend.Cap(spend.DAY, spend.nanos(daily_usd), "the daily budget"))
        if view.schedule is not None and view.schedule_daily_usd is not None:
            scope = spend.schedule_scope(view.schedule, tx.now)
            what = f"the daily budget of schedule {view.schedule}"
            caps.append(spend.Cap(scope, spend.nanos(view.schedule_daily_usd), what))
        current: ErrandView | None = view
        depth = 0
        while current is not None and depth < spend.MAX_DEPTH:
            if current.budget_usd is not None:
                what = (
                    "this errand's budget"
                    if current is view
                    else f"the budget of errand {current.id} (an ancestor)"
                )
                caps.append(
                    spend.Cap(spend.tree_scope(current.id), spend.nanos(current.budget_usd), what)
                )
            try:
                current = self._view_for(tx, current.parent) if current.parent else None
            except NotFound:
                current = None
            depth += 1
        return caps

    def _admit(
        self, tx: Tx, hold: str, caps: Sequence[spend.Cap], amount: int, ttl: float
    ) -> spend.CapReached | None:
        """Hold *amount* against every cap, or refuse (writing nothing): a call may start
        only if, for every cap, spent + held by calls in flight + its worst case <= cap.
        A hold of the same name (the same request, asked again) replaces the old one."""
        require(amount >= 0 and ttl > 0, "a non-negative amount and a positive ttl")
        for cap in caps:
            spent = self._spent_on(tx, cap.scope)
            held = self._held_on(tx, cap.scope, hold)
            if spent >= cap.nanos or spent + held + amount > cap.nanos:
                return spend.CapReached(cap, spent, held, amount)
        if caps:
            self._place_hold(tx, hold, caps, amount, ttl)
        if _CHECK:
            for cap in caps:
                ensure(
                    self._spent_on(tx, cap.scope) + self._held_on(tx, cap.scope, "") <= cap.nanos,
                    "spent + held stays within every cap",
                )
        return None

    @abc.abstractmethod
    def _budget_now(self, now: float, lease_now: float, daily: bool) -> tuple[int, int, int]:
        """(spent today, held, calls in flight) -- held against the daily scope when
        *daily*, else by every call in flight whatever its caps. Any thread."""

    async def budget(self, daily_usd: float | None) -> BudgetStatus:
        now = self.clock()
        spent, held, calls = self._budget_now(now, self._lease_now(), daily_usd is not None)
        return BudgetStatus(
            day=spend.day_scope(now).removeprefix("day:"),
            spent_usd=spend.usd(spent),
            reserved_usd=spend.usd(held),
            calls_in_flight=calls,
            daily_usd=daily_usd,
            left_usd=None if daily_usd is None else max(0.0, daily_usd - spend.usd(spent + held)),
        )

    # ================================================================= purge, rebuild

    async def purge(self, errand_id: str) -> None:
        """Remove the errand's private content from the log (and from disk pages).

        Every event is rewritten (upgraded to the current version first) with its
        private text, arguments and free-text fields replaced (:mod:`errands.store.purge`);
        orphaned blobs are deleted; the projection is refolded from the rewritten log;
        and the backend then wipes what it still holds of the old pages.
        """

        def op(tx: Tx) -> None:
            self._view_for(tx, errand_id)  # NotFound before anything is written
            view = ErrandView(id=errand_id)
            blobs: set[str] = set()
            for seq, body, blob in self._log_bodies(tx, errand_id):
                data = purged(ev.upgrade(json.loads(body)))
                cleaned = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
                self._rewrite_body(tx, errand_id, seq, cleaned)
                if blob:
                    blobs.add(blob)
                apply(view, seq, ev.parse_event(data))
            self._drop_orphan_blobs(tx, sorted(blobs))
            self._views[errand_id] = view
            self._stage(tx, view, [self._prepare(ev.ErrandPurged())])

        await self._submit(op)
        await self._after_purge()

    async def rebuild_projections(self) -> int:
        """Refold every log and rewrite the projection and spend; return the errand count."""

        def op(tx: Tx) -> int:
            ids = self._errand_ids(tx)
            for errand_id in ids:
                view = ErrandView(id=errand_id)
                for stored in self._read_log(errand_id, 0):
                    apply(view, stored.seq, stored.event)
                tx.dirty[errand_id] = view
                self._written.pop(errand_id, None)  # rewrite every column
                self._cache(view)
            self._rebuild_spend(tx)
            return len(ids)

        result: int = await self._submit(op)
        return result

    def _integrity(self) -> list[str]:
        problems = []
        for errand_id in self._all_ids():
            view = ErrandView(id=errand_id)
            for stored in self._read_log(errand_id, 0):
                apply(view, stored.seq, stored.event)
            try:
                cached = self._read_view(errand_id)
            except NotFound:
                problems.append(f"{errand_id}: no projection")
                continue
            if cached.model_dump() != view.model_dump():
                problems.append(f"{errand_id}: projection differs from the fold")
        return problems + self._integrity_extra()

    @abc.abstractmethod
    def _all_ids(self) -> list[str]:
        """Every errand that has a log (any thread)."""

    async def integrity_check(self) -> list[str]:
        """Compare every projection with a fresh fold of its log (and the backend's other
        derived tables with what the log says); return the mismatches."""
        return await asyncio.to_thread(self._integrity)

    # ================================================================= reads

    async def read(self, errand_id: str, after: int = 0) -> list[StoredEvent]:
        return await asyncio.to_thread(self._checked_log, errand_id, after)

    async def read_latest(
        self, errand_id: str, limit: int, before: int | None = None
    ) -> list[StoredEvent]:
        require(limit >= 0, "a page holds zero or more events")
        return await asyncio.to_thread(self._read_latest, errand_id, limit, before)

    def _checked_log(self, errand_id: str, after: int) -> list[StoredEvent]:
        out = self._read_log(errand_id, after)
        if out:
            invariant(
                [s.seq for s in out] == list(range(out[0].seq, out[0].seq + len(out))),
                f"no gaps in the log of {errand_id}",
            )
        return out

    async def view(self, errand_id: str) -> ErrandView:
        # a point lookup: run here, a hop to a thread and back costs more than the read
        return self._read_view(errand_id)

    async def snapshot(self, errand_id: str) -> Snapshot | None:
        """(A backend that keeps no fold snapshots: every resume folds the whole log.)"""
        return None

    async def put_snapshot(self, errand_id: str, snapshot: Snapshot) -> bool:
        return False

    def _holds_secret(self, snapshot: Snapshot) -> bool:
        """Do *snapshot*'s bytes hold a secret this store redacts? (A backend refuses to
        keep such a snapshot; a fold of the redacted log never holds one.)"""
        if not self.redact:
            return False
        for data in (snapshot.state, *snapshot.data.values()):
            text = data.decode("utf-8", "surrogateescape")
            if self.redact(text) != text:
                return True
        return False

    @abc.abstractmethod
    async def find(self, prefix: str) -> str: ...

    async def list_errands(
        self, *, states: Sequence[ErrandState] | None = None, limit: int = 100
    ) -> list[ErrandView]:
        return await asyncio.to_thread(self._list, states, limit)

    @abc.abstractmethod
    def _list(self, states: Sequence[ErrandState] | None, limit: int) -> list[ErrandView]:
        """The newest *limit* errands (in those *states*), newest first (any thread)."""

    @abc.abstractmethod
    async def children(self, errand_id: str) -> list[ErrandView]: ...

    async def pending_approvals(self) -> list[PendingApproval]:
        return await asyncio.to_thread(self._pending)

    @abc.abstractmethod
    def _pending(self) -> list[PendingApproval]:
        """Every approval asked and not answered, least recently updated errand first."""

    @abc.abstractmethod
    async def lease_holder(self, errand_id: str) -> tuple[str, float] | None: ...

    @abc.abstractmethod
    async def wakeups(self, after: int) -> tuple[int, list[str]]: ...

    @abc.abstractmethod
    async def changed_since(self, since: float) -> list[tuple[str, int, float]]: ...

    def share_writes(self, favoured: bool = False) -> None:
        """(A backend whose writers contend across processes takes turns.)"""

    def listen(self, notified: Callable[[str, str], None]) -> Listening | None:
        return None  # (a backend with notifications between processes sends them)

    async def usage(self, *, since: float = 0.0, errand_id: str | None = None) -> list[UsageRow]:
        return await asyncio.to_thread(self._usage, since, errand_id)

    @abc.abstractmethod
    def _usage(self, since: float, errand_id: str | None) -> list[UsageRow]:
        """The cost events since *since* (of one errand, if given) as usage rows."""
