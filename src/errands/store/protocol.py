"""The store interface: what every caller may use, whatever the backend.

The server, the CLI, the engine and the tests reach the store only through these two
protocols. :class:`StoreReader` is what reads need (a server's inbox, ``errands ls``,
the cost report); :class:`Store` adds what the engine and a person's decisions write.
Both are async; code without an event loop uses the one sync bridge,
:class:`errands.store.sync.BlockingStore`.

The backend-neutral part of an implementation lives in :mod:`errands.store.base`; the
SQLite backend (:mod:`errands.store.sqlite`) fills in the SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from errands.core import events as ev
from errands.core.labels import Label
from errands.core.schedules import ScheduleSpec, ScheduleStatus
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.costs.spend import CapReached
from errands.store.retention import Compacted, RetentionPlan

__all__ = [
    "AppendCheck",
    "BudgetStatus",
    "CommitListener",
    "Fired",
    "Firing",
    "Listening",
    "McpPin",
    "Memory",
    "NewRun",
    "RunRow",
    "ScheduleRow",
    "Snapshot",
    "Store",
    "StoreReader",
    "StoredEvent",
    "UsageRow",
]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    errand_id: str
    seq: int
    event: ev.Event


class UsageRow(NamedTuple):
    """One logged model call, for the cost report."""

    errand_id: str
    at: float
    model: str  # the model that answered
    usage: ev.Usage


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Today's spend against the daily budget, with what calls in flight hold."""

    day: str  # the local date, YYYY-MM-DD
    spent_usd: float
    reserved_usd: float
    calls_in_flight: int
    daily_usd: float | None  # the daily cap (None: no daily budget)
    left_usd: float | None  # what new calls may still reserve today (None: no cap)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class McpPin:
    """An MCP tool's approved definition (:mod:`errands.tools.mcp.pins`): its digest, the
    definition it was taken over (for diffs), and who approved it when."""

    server: str
    tool: str  # its name on the server
    digest: str
    definition: dict[str, Any]
    pinned_by: str = ""
    pinned_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Memory:
    """A memory kept across errands (docs/memory.md): its text and tags, the scope it
    belongs to (``person``, or ``schedule:NAME``), the label of what it was derived from
    (an untrusted page stays untrusted when recalled), and where it came from -- the
    errand and the sequence number of the ``remember`` call (None: a person's own)."""

    id: int  # given by the store, increasing, never reused
    scope: str
    text: str
    tags: tuple[str, ...]
    label: Label
    at: float  # when it was kept (wall time)
    errand_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule as the store keeps it."""

    spec: ScheduleSpec
    paused: bool
    next_at: float | None  # its next slot (None: it is over -- an ``at`` that ran)
    due_at: float | None  # when the scheduler looks at it next (slot + jitter, or a retry)
    status: ScheduleStatus
    updated_at: float
    version: int = 0  # +1 at every write: what a firing checks nobody changed meanwhile


@dataclass(frozen=True, slots=True)
class RunRow:
    """A slot handled: a run started (*errand_id*), or slots skipped (*count*, *reason*)."""

    schedule: str
    slot: float
    outcome: str  # started | skipped
    errand_id: str | None
    count: int  # skipped: how many slots; started: how many were missed before it
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to start: the errand, created with *more* events in the same commit."""

    slot: float
    missed: int
    errand_id: str
    created: ev.ErrandCreated
    more: tuple[ev.Event, ...] = ()


@dataclass
class Firing:
    """What the scheduler asks of one schedule, done in one transaction: start *runs*
    (each keyed by (schedule, slot): a slot that already has a row starts nothing), log
    *skips*, and move the schedule on. Refused as a whole (``Fired.stale``) unless the
    schedule is still unpaused and at version *expect_version* (``check_version``):
    otherwise another process, or a person's edit, got there first.

    A watch's check passes the keys of the *items* it extracted; in the transaction the
    store finds which were not seen in the last ``keep_seconds`` and records them all.
    The first check only records the baseline (its *runs* are dropped); a later one is
    refused as a whole unless the new keys are *expect_new* (what the caller read with
    :meth:`StoreReader.seen_items` and built its runs from)."""

    name: str
    expect_version: int
    next_at: float | None
    due_at: float | None
    status: ScheduleStatus
    runs: list[NewRun] = field(default_factory=list)
    skips: list[tuple[float, int, str]] = field(default_factory=list)
    items: list[str] | None = None
    expect_new: list[str] | None = None
    keep_seconds: float = 7 * 86400.0
    check_version: bool = True


@dataclass(frozen=True, slots=True)
class Fired:
    stale: bool = False  # nothing done: the schedule moved on (or went) meanwhile
    started: tuple[str, ...] = ()  # the errands started
    new_items: int = 0  # a watch: items not seen in the last 7 days


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A fold of an errand's log through *seq*, encoded by :mod:`errands.core.snapshot`
    (the store keeps the bytes and never reads them): *state* and the parts it names, in
    order. Read, *data* holds every part the store has; written, only those it lacks
    (the others are the parts of the snapshot it keeps, written with it before)."""

    seq: int
    format: str
    state: bytes
    parts: tuple[str, ...]
    data: Mapping[str, bytes]


# An extra check run inside the append's transaction, on the errand's current view,
# before anything is written: raise StoreError to refuse the append. This is how
# approvals (no double decision, no decision after cancel) stay atomic.
AppendCheck = Callable[[ErrandView], None]

# Called in the subscriber's event loop after each durable commit: (errand, its last seq).
CommitListener = Callable[[str, int], None]


@runtime_checkable
class StoreReader(Protocol):
    """Reading errands: their logs, the views derived from them, and what waits."""

    async def read(self, errand_id: str, after: int = 0) -> list[StoredEvent]:
        """The errand's events after sequence number *after*, in order."""
        ...

    async def read_latest(
        self, errand_id: str, limit: int, before: int | None = None
    ) -> list[StoredEvent]:
        """The errand's newest *limit* events before sequence number *before* (all of
        them: None), in order: a page of a long log, read without the rest of it."""
        ...

    async def snapshot(self, errand_id: str) -> Snapshot | None:
        """The errand's fold snapshot (:meth:`Store.put_snapshot`), if it has one."""
        ...

    async def view(self, errand_id: str) -> ErrandView:
        """The errand's state and summary (a fold of its log); :class:`NotFound` if none."""
        ...

    async def find(self, prefix: str) -> str:
        """The full id of the one errand whose id starts with *prefix*."""
        ...

    async def list_errands(
        self, *, states: Sequence[ErrandState] | None = None, limit: int = 100
    ) -> list[ErrandView]:
        """Errands, newest first (only those in *states*, if given)."""
        ...

    async def children(self, errand_id: str) -> list[ErrandView]:
        """The errands *errand_id* started (its sub-errands), oldest first."""
        ...

    async def pending_approvals(self) -> list[PendingApproval]:
        """Every approval waiting for a person, oldest errand activity first."""
        ...

    async def lease_holder(self, errand_id: str) -> tuple[str, float] | None:
        """Who holds the errand's lease, and until when (None if nobody)."""
        ...

    async def wakeups(self, after: int) -> tuple[int, list[str]]:
        """Errands written to by outsiders since wake-up id *after*; and the newest id."""
        ...

    async def usage(self, *, since: float = 0.0, errand_id: str | None = None) -> list[UsageRow]:
        """Every logged model call since *since* (of one errand, if given)."""
        ...

    async def budget(self, daily_usd: float | None) -> BudgetStatus:
        """Today's spend and reservations against the daily cap *daily_usd*."""
        ...

    async def integrity_check(self) -> list[str]:
        """Compare every derived table with the log; the mismatches, in words."""
        ...

    async def schedules(self) -> list[ScheduleRow]:
        """Every schedule (and watch), by name."""
        ...

    async def schedule(self, name: str) -> ScheduleRow:
        """The schedule called *name*; :class:`NotFound` if there is none."""
        ...

    async def schedule_runs(self, name: str, limit: int = 20) -> list[RunRow]:
        """The schedule's newest handled slots (runs and skips), newest first."""
        ...

    async def due_schedules(self, now: float, limit: int) -> list[ScheduleRow]:
        """Unpaused schedules due at *now* (``due_at <= now``), earliest first."""
        ...

    async def next_due(self) -> float | None:
        """The earliest ``due_at`` of an unpaused schedule (None: none)."""
        ...

    async def schedule_spent(self, name: str, at: float) -> float:
        """What the runs of schedule *name* spent on the (local) date of *at*, in USD."""
        ...

    async def seen_items(self, name: str, keys: Sequence[str], since: float) -> set[str]:
        """Of a watch's item *keys*, those it saw at or after *since*."""
        ...

    async def retention_plan(
        self, cutoff: float, keep_runs: int, items_before: float, wakeups_before: float
    ) -> RetentionPlan:
        """What retention would do now, read without writing: the finished errands to
        compact (finished before *cutoff*, or runs of a schedule past its newest
        *keep_runs*) with their logs' size, the rows :meth:`Store.trim` would delete, and
        the file's size, free pages and vacuum mode (errands.store.retention)."""
        ...

    async def mcp_pins(self, server: str | None = None) -> list[McpPin]:
        """The approved MCP tool definitions (of one server, if given), by server and tool."""
        ...

    async def memories(
        self, scope: str | None = None, query: str | None = None, limit: int = 50
    ) -> list[Memory]:
        """Memories of *scope* (every scope: None). Without *query*, the newest first;
        with one, those matching at least one of its words (case and accents aside; its
        words only, never query syntax), best match first. At most *limit* (1 to 1,000).
        Pre: *scope* and *query* pass :func:`errands.store.memory.check_scope` and
        ``check_query`` (else :class:`~errands.errors.UserError`)."""
        ...

    async def memory(self, memory_id: int) -> Memory:
        """The memory *memory_id*; :class:`NotFound` if there is none."""
        ...

    def subscribe(self, listener: CommitListener) -> None:
        """Call *listener(errand_id, last_seq)* in this event loop after each durable
        commit this process makes."""
        ...

    def share_writes(self, favoured: bool = False) -> None:
        """Other processes write to this store too (``errands up --workers``): take
        turns with them; *favoured*, usually go first (the server, whose writes are a
        person's decisions)."""
        ...

    def announce(self, changed: dict[str, int]) -> None:
        """Tell the listeners of commits other processes made: errand id -> its last
        seq (a server whose errands run in worker processes calls this)."""
        ...

    async def changed_since(self, since: float) -> list[tuple[str, int, float]]:
        """(errand id, last seq, updated at) of every errand updated after *since* (wall
        time), oldest first: what other processes changed, for :meth:`announce`."""
        ...

    def listen(self, notified: Callable[[str, str], None]) -> Listening | None:
        """Call *notified(channel, payload)*, on a thread of its own, as soon as another
        process commits something for this one to do (a wake-up, an errand to claim, a
        timer; PostgreSQL's ``LISTEN/NOTIFY``). None: this store sends no notifications,
        look for work by polling."""
        ...

    async def close(self) -> None: ...


class Listening(Protocol):
    """Notifications being listened for (:meth:`StoreReader.listen`)."""

    @property
    def connected(self) -> bool:
        """False while the connection is down: notifications are lost meanwhile, poll."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Store(StoreReader, Protocol):
    """Append-only errand logs with derived views, leases, wake-ups and budgets.

    Every mutating call returns only after its effect is durable on disk; a refused
    one raises :class:`~errands.errors.StoreError` and writes nothing.
    """

    async def create(self, errand_id: str, created: ev.ErrandCreated) -> None: ...

    async def probe(self) -> None:
        """Write something and take it away again, in one commit: raises what a write
        would raise now (:class:`~errands.errors.StoreUnavailable` when the store cannot
        write). The server's ``/readyz``."""
        ...

    async def append(
        self,
        errand_id: str,
        events: Sequence[ev.Event],
        *,
        owner: str | None = None,
        guard: AppendCheck | None = None,
        stored: list[ev.Event] | None = None,
    ) -> list[int]:
        """Append *events* atomically; return their sequence numbers.

        *stored*, when given, receives the events as the log holds them -- redacted
        (no secret's value, in any common encoding) -- for a caller that goes on from
        what was logged rather than from what it asked to log.

        With *owner*, refuse (:class:`LeaseLost`) unless *owner* holds the lease.
        Without, the append is an outside input (a person's message, a decision) and
        wakes whoever owns the errand. *guard* runs inside the transaction first.
        """
        ...

    async def acquire(self, errand_id: str, owner: str, ttl: float) -> bool:
        """Take (or extend) the errand's lease if it is free, expired or ours."""
        ...

    async def claim_runnable(self, owner: str, ttl: float, limit: int) -> list[str]:
        """Take the leases of up to *limit* runnable errands nobody holds; their ids."""
        ...

    async def renew(self, owner: str, ttl: float) -> set[str]:
        """Extend every lease *owner* holds; return the errand ids it still holds."""
        ...

    async def release(self, errand_id: str, owner: str) -> None: ...

    async def reserve(
        self,
        errand_id: str,
        request_seq: int,
        amount_usd: float,
        *,
        daily_usd: float | None,
        ttl: float,
    ) -> CapReached | None:
        """Hold *amount_usd* for the model call of request *request_seq* against every
        cap that applies (the daily one, the errand's and its ancestors' budgets), or
        return which cap it would pass, writing nothing. The transaction that logs the
        response settles the hold; otherwise it expires after *ttl* seconds."""
        ...

    async def purge(self, errand_id: str) -> None:
        """Remove the errand's private content from its log, and from the disk."""
        ...

    async def add_schedule(self, row: ScheduleRow) -> None:
        """Keep a new schedule; :class:`ScheduleExists` if the name is taken."""
        ...

    async def update_schedule(
        self, name: str, change: Callable[[ScheduleRow, float], ScheduleRow]
    ) -> ScheduleRow:
        """Replace the schedule with *change(row, now)*, read and written in one
        transaction (a person's edit, pause or resume never undoes a slot the
        scheduler fired meanwhile); the new row. *change* must be quick and pure."""
        ...

    async def remove_schedule(self, name: str) -> None:
        """Forget the schedule, its slot keys and its watch items (its runs' errands stay)."""
        ...

    async def fire(self, firing: Firing) -> Fired:
        """Do what *firing* says in one transaction (see :class:`Firing`)."""
        ...

    async def pin_mcp(
        self, server: str, pins: Sequence[McpPin], *, drop: Sequence[str] = (), by: str = ""
    ) -> None:
        """Approve *pins* (replacing the server's pins of those tools) and forget the
        server's pins of the tools *drop* names, in one transaction; each is logged
        with *by* and the time."""
        ...

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
        """Keep a memory; return it, durable. Pre: the arguments pass
        :func:`errands.store.memory.check_memory` (else :class:`UserError`, nothing
        written). Idempotent on (*errand_id*, *seq*): a second call with the same pair
        (a remember call run again after a crash) writes nothing and returns the first."""
        ...

    async def forget(self, memory_id: int) -> None:
        """Purge the memory: its row and its search index entry are gone (not flagged),
        and its text is wiped from the file's free pages and journal before this returns.
        :class:`NotFound` (nothing written) if there is none."""
        ...

    async def rebuild_projections(self) -> int:
        """Refold every log into the derived tables; return the number of errands."""
        ...

    async def compact(self, errand_id: str, guard: AppendCheck) -> Compacted:
        """Rewrite the errand's log as its compacted log -- request, cost rows, final
        state and result, a summary -- in one transaction, if *guard* accepts its
        current view (errands.store.retention.finished_before); else refuse
        (:class:`StoreError`), writing nothing."""
        ...

    async def trim(
        self, keep_runs: int, items_before: float, wakeups_before: float
    ) -> tuple[int, int, int]:
        """Delete each schedule's run rows past its newest *keep_runs*, watch items not
        seen since *items_before* and wake-ups older than *wakeups_before*, in one
        transaction; (runs, items, wake-ups) deleted."""
        ...

    async def reclaim(self) -> int:
        """Give the pages freed back to the file system while the store is in use (when
        the file allows it: ``auto_vacuum``); the bytes of the pages given back."""
        ...

    async def put_snapshot(self, errand_id: str, snapshot: Snapshot) -> bool:
        """Keep *snapshot* as the errand's one snapshot, durably, with the parts it names
        (those not in its *data* must be the kept snapshot's), dropping the parts it no
        longer names; False, writing nothing, if the kept one is as new or newer, or if
        its bytes hold a secret the store redacts. A store drops an errand's snapshot in
        the transaction that rewrites its log (purge, compaction)."""
        ...
