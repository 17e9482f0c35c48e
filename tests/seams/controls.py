"""Negative controls: variants of errands that each break exactly one guarantee.

A guarantee's test runs once against errands and once against its control, and the
control must make the test's check fail -- proof that the check can fail, and fails
for the reason the guarantee names. Each control is a subclass of the production part
(passed in by the test: ``Runner(loop_class=...)``, a policy or store object) or, for
a child process, installed by name (:func:`install`, through ``seams.child_env``).

| control             | guarantee it breaks                                        |
|---------------------|------------------------------------------------------------|
| ``no_intent``       | an effect runs once: its intent is durable before it runs  |
| ``memory_approvals``| pending approvals survive SIGKILL                          |
| ``no_approval_gate``| no ``ask`` call runs without a person's yes                |
| ``no_arg_binding``  | a grant runs only the arguments it is bound to             |
| ``no_seen_check``   | a person's yes is for the arguments they were shown        |
| ``no_replay_guard`` | a replayed or second decision is refused                   |
| ``no_replay``       | provider reasoning state survives a restart (in the log)   |
| ``no_budget_wait``  | a call that fits beside what was spent waits, not stops    |
| ``no_budget_holds`` | calls in flight hold their worst case against every cap    |
| ``no_text_reset``   | a retried reply's discarded text is taken back             |
| ``no_confinement``  | file tools never reach outside the errand's workspace      |
| ``forgetful_idempotency`` | a creation retried after a crash completes the dead attempt, under its id |
| ``no_step_guard``   | a step's unexpected failure is logged, never a paid loop   |
| ``no_proxy_token``  | a server answering to a name beyond loopback asks for its token |
| ``open_to_proxies`` | a server without a token refuses what a proxy forwarded    |
| ``token_anywhere``  | the token is printed to a terminal only, never into a log  |
| ``no_workspace_roots`` | a named workspace lies under a workspace root           |
| ``no_server_registry`` | no errands process reaches any errands server's port    |
| ``loose_modes``     | the home, store and workspaces are made 0700/0600          |
| ``blind_doctor``    | errands doctor names the loose files and the chmod         |
| ``raw_terminal``    | no escape sequence from outside reaches the terminal       |
| ``split_fire``      | a slot's run and its key are one commit: never started twice |

Not a control but a fault, installed the same way: ``bug_after_reply`` (every model
reply meets a bug before it is logged -- what no test of errands' own code can make).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from errands.core import events as ev
from errands.core.faults import fault
from errands.core.progress import Progress
from errands.core.states import ErrandView, PendingApproval
from errands.costs import spend
from errands.engine.budgets import Budgets
from errands.engine.dispatch import Dispatcher
from errands.engine.loop import Loop
from errands.engine.runner import Runner
from errands.models.streaming import AttemptText
from errands.policy.approvals import ApprovalRefused, Approvals
from errands.policy.hook import Decision, PolicyCall, Verdict
from errands.policy.rules import Policy
from errands.server.idempotency import IdempotencyStore, Reservation
from errands.store import AppendCheck
from errands.store.base import Tx
from errands.store.sqlite import SQLiteStore
from errands.tools.builtin import files
from errands.tools.workspace import Located

__all__ = [
    "LOOPS",
    "MemoryApprovalsLoop",
    "NoBindingLoop",
    "NoGatePolicy",
    "NoIntentLoop",
    "NoReplayLoop",
    "NoWaitLoop",
    "ReplayableApprovals",
    "SpendOnlyStore",
    "UnseenApprovals",
    "install",
    "reset_nothing",
    "unconfined_locate",
]


# -- the loop ------------------------------------------------------------------------------


class NoIntentLoop(Loop):
    """What a framework without an outbox does: run the tool, then log its intent and
    its result together. A crash after the effect and before the log repeats it."""

    async def _route_and_run(
        self, p: Progress, routed: Sequence[ev.Event], first: Sequence[ev.Event] = ()
    ) -> None:
        ran: list[ev.Event] = []
        for event in routed:
            ran.append(event)
            if isinstance(event, ev.ToolIntent):
                fault("after_intent")
                ran.extend(await self.dispatch.execute(p, 0, event))
        await super()._route_and_run(p, ran, first)


class MemoryApprovalsLoop(Loop):
    """Approval requests held in this process's memory, as in-memory approval queues
    hold them: while the process lives a person sees them and can decide
    (:meth:`pending`, :meth:`grant`), and the errand waits for the decision; they die
    with the process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: dict[str, list[ev.ApprovalRequested]] = {}

    async def _append(
        self, p: Progress, events: Sequence[ev.Event], guard: AppendCheck | None = None
    ) -> list[int]:
        asked = [e for e in events if isinstance(e, ev.ApprovalRequested)]
        if asked:
            self.held.setdefault(p.errand_id, []).extend(asked)
            events = [e for e in events if not isinstance(e, ev.ApprovalRequested)]
        return await super()._append(p, events, guard) if events else []

    async def _step(self, p: Progress) -> bool:
        if self.held.get(p.errand_id):
            return False  # waits for a decision that only this process can take
        return await super()._step(p)

    def pending(self) -> list[str]:
        """What a person can decide now: ``ERRAND.CALL_ID`` of every held request."""
        return [f"{e}.{r.call_id}" for e, asked in self.held.items() for r in asked]

    async def grant(self, errand_id: str, by: str = "t") -> None:
        """A person says yes (through this process): log the request and its grant."""
        for asked in self.held.pop(errand_id, []):
            (seq,) = await self.store.append(errand_id, [asked])
            grant = ev.ApprovalGranted(
                request_seq=seq, args_hash=asked.args_hash, by=by, channel="cli"
            )
            await self.store.append(errand_id, [grant])


class NoBindingDispatcher(Dispatcher):
    def bound(self, call: Any, args: dict[str, Any]) -> bool:
        return True  # any grant runs whatever arguments it carries


class NoBindingLoop(Loop):
    """Runs a granted call whatever arguments its grant is bound to."""

    dispatcher_class = NoBindingDispatcher


class NoReplayProgress(Progress):
    """The loop's fold, dropping the provider state (signed thinking, thought
    signatures, encrypted reasoning) an assistant turn must carry back."""

    def apply(self, seq: int, event: ev.Event) -> None:
        super().apply(seq, event)
        if isinstance(event, ev.ModelResponded) and self.messages:
            self.messages[-1] = replace(self.messages[-1], replay=None)


class NoReplayLoop(Loop):
    progress_class = NoReplayProgress


class NoWaitBudgets(Budgets):
    def may_wait(self, refusal: spend.CapReached) -> bool:
        return False  # refused is refused, even when only calls in flight stand in the way


class NoWaitLoop(Loop):
    """Stops a call the budget refuses instead of letting it wait for calls in flight."""

    budgets_class = NoWaitBudgets


class BugAfterReplyLoop(Loop):
    """(A fault, not a control.) Every model reply meets an unexpected exception after
    the model was paid and before the reply is logged."""

    def _reply_events(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug met after the reply")


async def _unguarded(self: Runner, errand_id: str) -> ErrandView | None:
    """The runner before issue 12: an exception in a step ends the errand's task (and,
    in the server, the errand is claimed again at once and its model asked again)."""
    return await self.loop.run(errand_id)


LOOPS: dict[str, type[Loop]] = {
    "bug_after_reply": BugAfterReplyLoop,
    "no_intent": NoIntentLoop,
    "memory_approvals": MemoryApprovalsLoop,
    "no_arg_binding": NoBindingLoop,
    "no_replay": NoReplayLoop,
    "no_budget_wait": NoWaitLoop,
}


# -- the policy and approvals ------------------------------------------------------------


class NoGatePolicy(Policy):
    """The same rules, without the gate: what they would ask about runs."""

    def check(self, call: PolicyCall) -> Verdict:
        verdict = super().check(call)
        if verdict.decision is Decision.ask:
            return Verdict(Decision.allow, "no-approval-gate")
        return verdict


class ReplayableApprovals(Approvals):
    """Checks that an approval was asked for, not that it still waits: a second grant
    (or a replayed one) is recorded again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: dict[tuple[str, int], PendingApproval] = {}

    def pending(self, view: ErrandView, seq: int) -> PendingApproval:
        self.decidable(view)
        found = view.pending.get(seq) or self.asked.get((view.id, seq))
        if found is None:
            raise ApprovalRefused(f"approval {view.id}.{seq} was never asked")
        self.asked[(view.id, seq)] = found
        return found


class UnseenApprovals(Approvals):
    """Records a yes whatever arguments the person was shown."""

    def as_seen(self, pending: PendingApproval, seen_hash: str | None) -> None:
        return None


# -- the store -----------------------------------------------------------------------------


class SpendOnlyStore(SQLiteStore):
    """Admits a call against what was spent alone: calls in flight hold nothing, so a
    fan-out that starts together passes the cap by as much as it runs at once."""

    def _held_on(self, tx: Tx, scope: str, hold: str) -> int:
        return 0

    def _place_hold(
        self, tx: Tx, hold: str, caps: Sequence[spend.Cap], amount: int, ttl: float
    ) -> None:
        return None


# -- text and files (replacements for one function, for in-process and child use) --------


def reset_nothing(self: AttemptText) -> None:
    """AttemptText.reset without telling anyone: the person sees the failed attempt's
    text and then the whole answer."""
    self.streamed = False


@contextmanager
def unconfined_locate(
    workspace: Path, path: str, *, create_parents: bool = False
) -> Iterator[Located]:
    """What a file tool without confinement does: opens whatever *path* names, relative
    to the workspace, following every link."""
    target = Path(os.path.realpath(workspace / path))
    if create_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        yield Located(dir_fd=fd, name=target.name, path=target, relative=path)
    finally:
        os.close(fd)


# -- the server -----------------------------------------------------------------------------

_begin = IdempotencyStore.begin


async def _begin_forgetting(
    self: IdempotencyStore, scope: str, key: str, body: Any, reserve: str
) -> Reservation:
    """Idempotency-Keys that remember answers but not reservations: a retry that finds
    a key without an answer is told nothing was reserved (as a layer caching only
    finished responses would tell it), and creates a second errand."""
    found = await _begin(self, scope, key, body, reserve)
    return found if found.done else replace(found, reserved=None)


# -- by name, for child processes ----------------------------------------------------------


def _patch(owner: Any, name: str, value: Any) -> Callable[[], None]:
    def do() -> None:
        setattr(owner, name, value)

    return do


def _patch_in(module: str, name: str, value: Any) -> Callable[[], None]:
    """:func:`_patch` for a module imported only when the control is installed (the web
    stack, the CLI: not every child process needs them)."""

    def do() -> None:
        import importlib

        setattr(importlib.import_module(module), name, value)

    return do


def _all(*installers: Callable[[], None]) -> Callable[[], None]:
    def do() -> None:
        for install_one in installers:
            install_one()

    return do


async def _fire_in_two(
    self: Any, row: Any, status: Any, next_at: Any, *, runs: Any = None, **rest: Any
) -> None:
    """The control: the run's errand is created in one commit, the slot's key and the
    schedule's next slot in another -- a crash between them starts the slot again."""
    for run in runs or []:
        await self.store.create(run.errand_id, run.created)
        fault("schedule_fired")
    await _SCHEDULER_FIRE(self, row, status, next_at, runs=[], **rest)


def _split_fire() -> None:
    global _SCHEDULER_FIRE
    from errands.engine.scheduler import Scheduler

    _SCHEDULER_FIRE = Scheduler._fire
    Scheduler._fire = _fire_in_two  # type: ignore[method-assign]


_SCHEDULER_FIRE: Any = None


def _as_is(text: str) -> str:
    return text


def _live_unredacted() -> None:
    """A tool's live output shown as the command printed it (its result is still
    redacted): through a worker's relay too, the secret reaches the stream."""
    from errands.tools.sandbox.live import LiveOutput, LiveStream

    class Unredacted(LiveStream):
        def __init__(self, name: str, sink: Any, redact: Any, *rest: Any) -> None:
            super().__init__(name, sink, _as_is, *rest)

    LiveOutput.stream_class = Unredacted


def _loop(name: str) -> Callable[[], None]:
    return _patch(Runner, "loop_class", LOOPS[name])


INSTALLERS: dict[str, Callable[[], None]] = {
    **{name: _loop(name) for name in LOOPS},
    "no_text_reset": _patch(AttemptText, "reset", reset_nothing),
    "no_confinement": _patch(files, "locate_inside", unconfined_locate),
    "forgetful_idempotency": _patch(IdempotencyStore, "begin", _begin_forgetting),
    "no_step_guard": _patch(Runner, "_guarded", _unguarded),
    # the security holes of issue 13, each reopened (see tests/test_security_server.py,
    # test_workspace_roots.py, test_server_ports.py, test_home_permissions.py,
    # test_terminal_escapes.py)
    "no_proxy_token": _patch_in("errands.server.serve", "remote_names", lambda host, names: []),
    "open_to_proxies": _patch_in("errands.server.auth", "FORWARDING_HEADERS", ()),
    "token_anywhere": _patch_in("errands.server.serve", "_to_terminal", lambda: True),
    "no_workspace_roots": _patch_in(
        "errands.tools.workspace", "outside_roots", lambda path, settings: None
    ),
    "no_server_registry": _patch_in("errands.registry", "published_ports", dict),
    "loose_modes": _all(
        _patch_in("errands.private", "DIR_MODE", 0o755),
        _patch_in("errands.private", "FILE_MODE", 0o644),
    ),
    "blind_doctor": _patch_in("errands.cli.permcheck", "loose", lambda home: []),
    "split_fire": _split_fire,
    "live_unredacted": _live_unredacted,
    "raw_terminal": _all(
        *(
            _patch_in(f"errands.cli.{module}", "visible", _as_is)
            for module in ("render", "live", "remote")
        )
    ),
}


def install(names: Iterable[str]) -> None:
    """Install the named controls in this process (a child the test started)."""
    for name in names:
        try:
            INSTALLERS[name]()
        except KeyError:
            raise ValueError(
                f"unknown control {name!r} (known: {', '.join(sorted(INSTALLERS))})"
            ) from None
