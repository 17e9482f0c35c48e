"""The errand loop: ask the model, run the tools it calls, write every step to the log.

One pass of :meth:`Loop.run` drives one errand until it finishes, fails, or has to
wait (for an approval, a person, a timer). What to do next is always read from the
:class:`~errands.core.progress.Progress` -- a fold of the log -- so a run that resumes after
a crash continues exactly where the log says the last one stopped:

- a model response already logged is never requested again;
- a tool result already logged is never recomputed;
- a call whose intent is logged but whose result is not is re-run only when that is
  safe (idempotent, or the tool honours the idempotency key); otherwise the errand goes
  to ``needs_attention`` naming the call in doubt.

Every model and tool call is bounded: a cancel interrupts it (:meth:`Loop.interrupt`),
and the errand's wall-time limit (and, for tools, ``tool_timeout_seconds``) ends it. A
model reply is tamed (:mod:`errands.engine.replies`) and logged, with its cost, before
anything else reads it; a provider that keeps failing is waited for (``[providers.NAME]
outage_wait_seconds``) before the errand fails.

Policy, limits, budgets and tool dispatch are things the loop calls, not branches inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from errands.clock import SYSTEM, Clock, date_line
from errands.config import Settings
from errands.core import events as ev
from errands.core.faults import fault
from errands.core.labels import Provenance
from errands.core.messages import Message
from errands.core.progress import CallState, Progress
from errands.core.states import TERMINAL, ErrandState, ErrandView
from errands.costs.pricing import cost_usd
from errands.engine.budgets import Budgets
from errands.engine.context import Context
from errands.engine.delegate import WAITING, Delegation
from errands.engine.dispatch import Dispatcher, ShowsOutput
from errands.engine.inflight import InFlight, Interrupted
from errands.engine.limits import exceeded
from errands.engine.replies import tame
from errands.errors import StoreError, StoreUnavailable
from errands.models.protocol import Model, ModelError, ModelReply, ModelRequest
from errands.models.spec import outage_wait_for
from errands.models.streaming import ErrandText
from errands.policy.hook import PolicyHook
from errands.store import Store
from errands.store.resume import maybe_save, resume
from errands.tools.builtin.subagents import JOINS
from errands.tools.tool import ToolError
from errands.tools.toolset import Toolset

__all__ = ["Interrupted", "Loop", "TextListener"]

TextListener = Callable[[str, str], None]  # (errand_id, streamed text delta)


class Stopped(StoreError):
    """The errand was cancelled (or ended) before its calls could be routed."""


def _not_cancelled(view: ErrandView) -> None:
    if view.cancel_requested or view.state in TERMINAL:
        raise Stopped(f"errand {view.id} is {view.state.value}")


class Loop:
    """Drives errands one step at a time. The parts it is built from are class
    attributes, so that a variant (a test's negative control, say) is a subclass that
    names another part -- never a switch the loop reads."""

    progress_class: type[Progress] = Progress
    dispatcher_class: type[Dispatcher] = Dispatcher
    budgets_class: type[Budgets] = Budgets
    delegation_class: type[Delegation] = Delegation
    context_class: type[Context] = Context

    def __init__(
        self,
        store: Store,
        models: Callable[[str], Model],
        toolset: Toolset,
        policy: PolicyHook,
        settings: Settings,
        owner: str,
        on_text: TextListener | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.store = store
        self.clock = clock
        self.models = models
        self.dispatch = self.dispatcher_class(toolset, policy, settings)
        self.settings = settings
        self.budgets = self.budgets_class(store, settings)
        self.delegation = self.delegation_class(store, settings, toolset)  # sub-errands
        # compaction of long contexts (errands.engine.context)
        self.context = self.context_class(settings, self._append_guarded, self._summarise)
        self.owner = owner
        self.on_text = on_text
        self.dirty: set[str] = set()  # errands an outsider wrote to since we last looked
        # perf: what noticed() needs to tell our own appends from an outsider's
        self._live: set[str] = set()  # errands run() is driving
        self._seen: dict[str, int] = {}  # the newest seq a commit reported for each
        self.in_flight = InFlight(lambda: self.clock.steady())  # model and tool calls
        self.dispatch.now = lambda: self.clock.wall()  # wait's timers are wall times
        self.dispatch.ask_model = self._quarantined  # plan mode's extractor
        if isinstance(on_text, ShowsOutput):  # the server's hub: tools' output, live
            self.dispatch.on_output = on_text.output
        self._since: dict[str, tuple[float, float]] = {}  # run start: (wall, steady)
        # (zone, the end of the minute it holds for, the date line): computed once a minute
        self._day_cache: tuple[str, float, str] = ("", 0.0, "")
        # replies the store could not take yet (a full disk): used, not asked for again
        self._unlogged: dict[tuple[str, int], ModelReply] = {}

    async def load(self, errand_id: str) -> Progress:
        return await resume(self.store, errand_id, self.progress_class)  # (its snapshot)

    async def run(self, errand_id: str, p: Progress | None = None) -> ErrandView:
        """Drive the errand until it has to stop; return its view."""
        p = p or await self.load(errand_id)
        self._live.add(errand_id)
        self._since[errand_id] = (self.clock.wall(), self.clock.steady())
        self.dispatch.forget(errand_id)  # (its tools are listed afresh: time has passed)
        try:
            await self._recover(p)
            while await self._step(p):
                pass
        finally:
            self.dispatch.forget(errand_id)
            self._live.discard(errand_id)
            self._seen.pop(errand_id, None)
            self._since.pop(errand_id, None)
        return p.view

    def interrupt(self, errand_id: str) -> bool:
        """Stop the errand's model and tool calls in flight (a cancel came in); the next
        step reads the log and stops there. True if a call was interrupted."""
        self.dirty.add(errand_id)
        return self.in_flight.interrupt(errand_id)

    def _elapsed(self, p: Progress) -> float:
        """Seconds since the errand was created: wall time up to this run's start, then
        the steady clock (a clock step during the run changes nothing)."""
        wall0, steady0 = self._since.get(p.errand_id) or (self.clock.wall(), self.clock.steady())
        return max(0.0, wall0 - p.view.created_at) + (self.clock.steady() - steady0)

    def _time_left(self, p: Progress) -> float | None:
        limit = p.limits.max_wall_seconds
        return None if limit is None else max(0.0, limit - self._elapsed(p))

    def noticed(self, errand_id: str, seq: int) -> None:
        """A commit took the errand's log to *seq* (called after every commit).

        Most commits only hold our own appends, which :meth:`_append` folds in as they
        return; re-reading the log for them would cost a read per step. So remember
        the newest *seq*, and let :meth:`_step` -- which runs only once every append
        of the previous step has returned and been folded in -- catch up only when
        the log has gone beyond what it folded in: that is someone else's event.
        """
        if errand_id not in self._live:
            self.dirty.add(errand_id)
        elif seq > self._seen.get(errand_id, 0):
            self._seen[errand_id] = seq

    async def _step(self, p: Progress) -> bool:
        """Do the next thing the log calls for; False when the errand must stop here."""
        if p.errand_id in self.dirty or self._seen.get(p.errand_id, 0) > p.last_seq:
            await self._catch_up(p)
        if p.view.state in TERMINAL or p.view.state is ErrandState.needs_attention:
            return False
        if decided := p.decided():
            fault("after_approval")
            await self._route_and_run(p, [self.dispatch.decided(p, c) for c in decided])
        elif unrouted := p.unrouted():
            await self._route_and_run(
                p, [self.dispatch.route(p, c.call, c.index, c.request_seq) for c in unrouted]
            )
        elif p.waiting():
            return False  # rows in the store; whoever decides wakes the errand again
        elif p.slept and (sleeper := p.sleeping()) is not None:
            return await self._wake(p, sleeper)  # False: it sleeps on (a timer in the store)
        elif p.needs_model:
            await self._ask_model(p)
        elif p.final_text is not None:
            text, label = p.answer()  # (plan mode: the values its handles name, labelled)
            done = ev.StateChanged(
                state="done", result=ev.Content.labelled(text, Provenance(kind="model"), label)
            )
            await self._append(p, [done])
            return False
        else:
            return False
        return True

    async def _wake(self, p: Progress, call: CallState) -> bool:
        """A sleeping errand wakes when a message came (held until the wait's result) or
        its timer is due; the result says which. False if neither: it sleeps on."""
        assert call.wake_at is not None
        by_message = bool(p.held_messages)
        woken: ev.ToolResult | float
        if call.call.name in JOINS:  # sub-errands: start them, or see if they have ended
            woken = await self.delegation.joined(p, call, by_message, self.clock.wall())
            if not isinstance(woken, ev.ToolResult):  # they still run: sleep on
                again = ev.Sleeping(
                    call_id=call.call.call_id,
                    tool=call.call.name,
                    wake_at=woken,
                    reason=WAITING,
                )
                with contextlib.suppress(Stopped):
                    await self._append(p, [again], guard=_not_cancelled)
                return False
        elif not by_message and self.clock.wall() < call.wake_at:
            return False
        else:
            woken = self.dispatch.woken(call, by_message)
        self.dispatch.forget(p.errand_id)  # (it slept: its tools are listed afresh)
        await self._append(p, [woken, *self._next_request(p, call)])
        return True

    async def _recover(self, p: Progress) -> None:
        """Calls whose intent is logged but not their result: a crash hit them mid-flight."""
        in_flight = p.in_flight()
        if not in_flight or p.view.state in TERMINAL:
            return
        safe = [c for c in in_flight if c.intent is not None and c.intent.idempotent]
        doubtful = [c for c in in_flight if c not in safe]
        if doubtful:
            names = ", ".join(f"{c.call.name} (intent #{c.intent_seq})" for c in doubtful)
            await self._append(
                p,
                [
                    *(self.dispatch.in_doubt(c) for c in doubtful),
                    ev.StateChanged(
                        state="needs_attention",
                        reason=f"in doubt after a crash: {names} may or may not have run; "
                        "check, then tell the errand how to go on",
                    ),
                ],
            )
        await self._run_calls(p, safe)  # safe to run again, under the same idempotency key

    async def _ask_model(self, p: Progress) -> None:
        assert p.created is not None
        limits = p.limits
        elapsed = 0.0 if limits.max_wall_seconds is None else self._elapsed(p)
        reason = exceeded(p.view, limits, elapsed)
        if reason:
            await self._append(p, [ev.StateChanged(state="failed", reason=reason)])
            return
        if p.view.parent is not None and (cancel := await self.delegation.orphaned(p)):
            await self._append(p, [cancel])  # a sub-errand whose parent was cancelled
            return
        if p.created.timezone is not None and not await self._date_told(p, p.created.timezone):
            return  # cancelled meanwhile
        model = self.models(p.view.model)
        tools = self.dispatch.tools(p)
        if p.open_request_seq is None:
            requested = ev.ModelRequested(model=model.name, tools_hash=tools.fingerprint)
            await self._append(p, [requested])
        request_seq = p.open_request_seq
        assert request_seq is not None
        request = ModelRequest(
            system=self.settings.system_prompt,
            messages=tuple(p.messages),
            tools=tools.schemas,
            max_tokens=self.settings.max_tokens,
            reasoning=self.settings.reasoning,
            errand_id=p.errand_id,
            priority=0 if p.view.parent else 1,  # parents before their fan-out
        )
        if self.context.over(p, request):  # compact it into the model's context window
            # a summary call is a model call: its worst case is held first (the request's
            # own hold replaces it below, after the summary's cost is booked)
            summary = self.context.summary_request(p, request)
            if not await self._reserved(p, model, summary, request_seq):
                return
            fitted = await self._fit(p, model, request)
            if fitted is None:
                return
            request = fitted
        if not await self._reserved(p, model, request, request_seq):
            return
        reply = self._unlogged.pop((p.errand_id, request_seq), None)
        if reply is None:
            reply = await self._call_model(p, model, request)
        if reply is None:
            return
        response, routed = self._reply_events(p, model, request_seq, reply)
        try:  # the reply and its routing in one commit, then the calls run
            await self._route_and_run(p, routed, first=[response])
        except StoreUnavailable:
            if p.open_request_seq == request_seq:  # not logged: keep it, never pay twice
                self._unlogged[(p.errand_id, request_seq)] = reply
            raise

    async def _reserved(
        self, p: Progress, model: Model, request: ModelRequest, request_seq: int
    ) -> bool:
        """Hold *request*'s worst case against the budgets; False when it may not be sent
        now (it waits for calls in flight, or the errand stopped: logged)."""
        blocked = await self.budgets.reserve(p, model, request, request_seq)
        if blocked is not None and blocked.wait:
            await asyncio.sleep(blocked.wait)  # calls in flight hold the budget: ask again
            return False  # (the next step first folds in what others wrote: a cancel)
        if blocked is not None:
            await self._append(p, [ev.StateChanged(state=blocked.state, reason=blocked.reason)])
            return False
        return True

    async def _fit(self, p: Progress, model: Model, request: ModelRequest) -> ModelRequest | None:
        """*request*, compacted if it would not fit (errands.engine.context); None when
        the errand must stop here (a cancel, the summary's model failing: logged)."""
        try:
            return await self.context.fit(p, model, request)
        except Stopped:
            await self._catch_up(p)
        except ModelError as exc:
            await self._model_failed(p, exc)
        return None

    async def _summarise(self, p: Progress, model: Model, request: ModelRequest) -> ModelReply:
        """A compaction's summary call, bounded like any model call."""
        call = self._complete(model, request, p.errand_id, stream=False)
        return tame(await self.in_flight.run(p.errand_id, call, self._time_left(p)))

    async def _append_guarded(self, p: Progress, events: Sequence[ev.Event]) -> list[int]:
        return await self._append(p, events, guard=_not_cancelled)

    async def _call_model(
        self, p: Progress, model: Model, request: ModelRequest
    ) -> ModelReply | None:
        """The model's reply, tamed; None when there is none (what happened is logged)."""
        calls = self.in_flight
        entry = calls.enter(p.errand_id, self._time_left(p))
        try:
            return tame(await self._complete(model, request, p.errand_id))
        except asyncio.CancelledError:
            why = calls.why(entry)
            if why is None:
                raise  # the loop itself is being stopped
            if isinstance(why, Interrupted):
                return None  # a cancel: the next step folds it in and stops
            limit = p.limits.max_wall_seconds
            reason = f"wall-time limit reached ({limit:g} s) during a model call"
            await self._append(p, [ev.StateChanged(state="failed", reason=reason)])
        except ModelError as exc:
            await self._model_failed(p, exc)
        finally:
            calls.leave(entry)
        return None

    async def _date_told(self, p: Progress, zone_name: str) -> bool:
        """Tell the model the date when the person's local date has changed since it was
        last told (a line appended to the transcript: the cached prefix stays as it is).
        False if the errand was cancelled meanwhile."""
        wall = self.clock.wall()
        cached_zone, until, line = self._day_cache
        if wall >= until or wall < until - 60 or zone_name != cached_zone:  # (perf)
            line = date_line(wall, zone_name)
            self._day_cache = (zone_name, (wall // 60 + 1) * 60, line)
        if line == p.dated:
            return True
        content = ev.Content(text=line, provenance=Provenance(kind="system", name="clock"))
        told = ev.UserMessage(content=content, by="errands", channel="clock")
        try:
            await self._append(p, [told], guard=_not_cancelled)
        except Stopped:
            await self._catch_up(p)
            return False
        return True

    async def _model_failed(self, p: Progress, exc: ModelError) -> None:
        """After the retries: wait for a provider that is down (within its outage window,
        the errand showing that it waits), else fail the errand saying why."""
        window = outage_wait_for(p.view.model, self.settings)
        now = self.clock.wall()
        since = now if p.outage_since is None else min(p.outage_since, now)
        if exc.retryable and now - since < window:
            pause = min(60.0, 2.0 * 2 ** min(p.outage_errors, 5)) * (0.75 + 0.5 * random.random())
            pause = max(pause, exc.retry_after or 0.0)
            pause = min(pause, max(1.0, window - (now - since)))
            message = (
                f"{exc} -- the provider looks down: trying again in {pause:.0f} s "
                f"(for up to {window / 60:g} min after the first failure)"
            )
            await self._append(p, [ev.ErrorRaised(kind="model", message=message, retryable=True)])
            # (a cancel or the wall-time limit ends the wait: the next step sees to it)
            with contextlib.suppress(Interrupted, TimeoutError):
                await self.in_flight.run(p.errand_id, self.clock.sleep(pause), self._time_left(p))
            return
        waited = f" (after waiting {(now - since) / 60:.0f} min for it)" if p.outage_since else ""
        await self._append(
            p,
            [
                ev.ErrorRaised(kind="model", message=str(exc), retryable=exc.retryable),
                ev.StateChanged(state="failed", reason=f"the model failed: {exc}{waited}"),
            ],
        )

    def _reply_events(
        self, p: Progress, model: Model, request_seq: int, reply: ModelReply
    ) -> tuple[ev.ModelResponded, list[ev.Event]]:
        """The reply as its event (its cost booked), and the routing of its calls."""
        content = None
        if reply.text or not reply.tool_calls:
            content = ev.Content.labelled(
                reply.text, Provenance(kind="model", name=model.name), p.label
            )
        # a chain's spec has no price: the member that answered (reply.model) has
        usage = reply.usage.costing(
            cost_usd((model.name, reply.model), reply.usage, self.settings.prices)
        )
        response = ev.ModelResponded(
            request_seq=request_seq,
            model=reply.model or model.name,
            content=content,
            tool_calls=reply.tool_calls,
            usage=usage,
            stop_reason=reply.stop_reason,
            replay=reply.replay,
        )
        routed: list[ev.Event] = [
            self.dispatch.route(p, call, i, request_seq) for i, call in enumerate(reply.tool_calls)
        ]
        return response, routed

    async def _quarantined(
        self, errand_id: str, spec: str, system: str, text: str
    ) -> tuple[str, Any, str]:
        """A model call outside the errand's conversation, with no tools (plan mode's
        extractor): the reply's text, what it cost, the model that answered. It runs
        inside a tool call, so the call's deadline and a cancel bound it."""
        model = self.models(spec)
        request = ModelRequest(
            system=system,
            messages=(Message(role="user", text=text),),
            tools=(),
            max_tokens=self.settings.max_tokens,
            errand_id=errand_id,
            priority=0,
        )
        try:
            reply = tame(await self._complete(model, request, errand_id))
        except ModelError as exc:
            raise ToolError(f"the extractor's model failed: {exc}") from None
        usage = reply.usage.model_copy(
            update={
                "cost_usd": cost_usd((model.name, reply.model), reply.usage, self.settings.prices)
            }
        )
        return reply.text, usage, reply.model or model.name

    async def _complete(
        self, model: Model, request: ModelRequest, errand_id: str, *, stream: bool = True
    ) -> ModelReply:
        # streamed text, and the resets of retries and fallbacks, go to the listener
        sink = None if self.on_text is None or not stream else ErrandText(self.on_text, errand_id)

        # retries, fallback and rate limits are wrappers around the model (models/spec.py)
        try:
            return await model.complete(request, sink)
        except ModelError:
            raise
        except Exception as exc:  # a reply no code path expected: not a crash of the step
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise ModelError(f"{model.name}: its reply could not be read ({detail})") from None

    async def _route_and_run(
        self,
        p: Progress,
        routed: Sequence[ev.Event],
        first: Sequence[ev.Event] = (),
    ) -> None:
        """Log the routing of calls (intents durable before anything runs), then run them."""
        events = [*first, *routed]
        if not events:
            return
        try:
            await self._append(p, events, guard=_not_cancelled if routed else None)
        except Stopped:
            await self._catch_up(p)  # cancelled meanwhile: nothing was written, nothing runs
            return
        await self._run_calls(p, [c for c in p.in_flight()])

    async def _run_calls(self, p: Progress, calls: list[CallState]) -> None:
        if not calls:
            return

        async def one(call: CallState) -> None:
            assert call.intent is not None and call.intent_seq is not None
            fault("after_intent")
            seq, intent = call.intent_seq, call.intent
            limit = self._time_left(p)
            limit = (
                self.settings.tool_timeout_seconds
                if limit is None
                else min(limit, self.settings.tool_timeout_seconds)
            )
            entry = self.in_flight.enter(p.errand_id, limit)
            try:
                results: Sequence[ev.Event] = await self.dispatch.execute(p, seq, intent)
            except asyncio.CancelledError:
                why = self.in_flight.why(entry)
                if why is None:
                    raise  # the loop itself is being stopped
                results = (
                    self.dispatch.stopped(seq, intent, "cancelled", "a cancel stopped it")
                    if isinstance(why, Interrupted)
                    else self.dispatch.stopped(
                        seq, intent, "timed_out", f"it was still running after {limit:.0f} s"
                    ),
                )
            finally:
                self.in_flight.leave(entry)
                self.dispatch.forget(p.errand_id)  # (a tool ran: the next request lists afresh)
            await self._append(p, [*results, *self._after(p, call, results)])

        if len(calls) == 1:
            await one(calls[0])
        else:
            await asyncio.gather(*(one(c) for c in calls))

    def _after(
        self, p: Progress, finishing: CallState, results: Sequence[ev.Event]
    ) -> list[ev.Event]:
        """What follows a call's result: the next model request -- or, when the tool said
        its effect is in doubt (a send that may or may not have left), a stop in
        ``needs_attention``, as for a call a crash left in doubt: a person checks first."""
        for result in results:
            if isinstance(result, ev.ToolResult) and result.error_kind == "in_doubt":
                return [
                    ev.StateChanged(
                        state="needs_attention",
                        reason=f"in doubt: {result.tool} may or may not have taken effect; "
                        "check, then tell the errand how to go on",
                    )
                ]
        return self._next_request(p, finishing)

    def _next_request(self, p: Progress, finishing: CallState) -> list[ev.Event]:
        """The model request that follows the last result of a turn, to log it in the same
        commit; empty when something else (a decision, a limit, a cancel) comes first."""
        others_done = all(c.done for c in p.calls.values() if c is not finishing)
        if not others_done or p.held_messages or p.view.cancel_requested or p.created is None:
            return []
        limits = p.limits
        elapsed = 0.0 if limits.max_wall_seconds is None else self._elapsed(p)
        if exceeded(p.view, limits, elapsed):
            return []
        model = self.models(p.view.model)
        return [ev.ModelRequested(model=model.name, tools_hash=self.dispatch.tools(p).fingerprint)]

    async def _append(
        self,
        p: Progress,
        events: Sequence[ev.Event],
        guard: Callable[[ErrandView], None] | None = None,
    ) -> list[int]:
        # go on from what was logged: a secret the store redacted is not used either
        logged: list[ev.Event] = []
        seqs = await self.store.append(
            p.errand_id, events, owner=self.owner, guard=guard, stored=logged
        )
        if seqs[0] > p.last_seq + 1:  # an outsider wrote in between: fold that in first
            for stored in await self.store.read(p.errand_id, after=p.last_seq):
                if stored.seq >= seqs[0]:
                    break
                p.apply(stored.seq, stored.event)
        for seq, event in zip(seqs, logged, strict=True):
            if seq > p.last_seq:  # a concurrent call's catch-up may have folded it in already
                p.apply(seq, event)
        await maybe_save(self.store, p, seqs, logged)  # a fold snapshot every 1,000 events
        return seqs

    async def _catch_up(self, p: Progress) -> None:
        self.dirty.discard(p.errand_id)
        self.dispatch.forget(p.errand_id)
        for stored in await self.store.read(p.errand_id, after=p.last_seq):
            p.apply(stored.seq, stored.event)
