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

Policy, limits, budgets and tool dispatch are things the loop calls, not branches inside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from errands.config import Settings
from errands.core import events as ev
from errands.core.faults import fault
from errands.core.labels import Provenance
from errands.core.progress import CallState, Progress
from errands.core.states import TERMINAL, ErrandState, ErrandView
from errands.costs.pricing import cost_usd
from errands.engine.budgets import Budgets
from errands.engine.dispatch import Dispatcher
from errands.engine.limits import exceeded
from errands.errors import StoreError
from errands.models.protocol import Model, ModelError, ModelReply, ModelRequest
from errands.models.streaming import ErrandText
from errands.policy.hook import PolicyHook
from errands.store import Store
from errands.tools.toolset import Toolset

__all__ = ["Loop", "TextListener"]

TextListener = Callable[[str, str], None]  # (errand_id, streamed text delta)


def _not_cancelled(view: ErrandView) -> None:
    if view.cancel_requested or view.state in TERMINAL:
        raise StoreError(f"errand {view.id} is {view.state.value}")


class Loop:
    """Drives errands one step at a time. The parts it is built from are class
    attributes, so that a variant (a test's negative control, say) is a subclass that
    names another part -- never a switch the loop reads."""

    progress_class: type[Progress] = Progress
    dispatcher_class: type[Dispatcher] = Dispatcher
    budgets_class: type[Budgets] = Budgets

    def __init__(
        self,
        store: Store,
        models: Callable[[str], Model],
        toolset: Toolset,
        policy: PolicyHook,
        settings: Settings,
        owner: str,
        on_text: TextListener | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.dispatch = self.dispatcher_class(toolset, policy, settings)
        self.settings = settings
        self.budgets = self.budgets_class(store, settings)
        self.owner = owner
        self.on_text = on_text
        self.dirty: set[str] = set()  # errands an outsider wrote to since we last looked
        # perf: what noticed() needs to tell our own appends from an outsider's
        self._live: set[str] = set()  # errands run() is driving
        self._seen: dict[str, int] = {}  # the newest seq a commit reported for each

    async def load(self, errand_id: str) -> Progress:
        p = self.progress_class.empty(errand_id)
        for stored in await self.store.read(errand_id):
            p.apply(stored.seq, stored.event)
        return p

    async def run(self, errand_id: str, p: Progress | None = None) -> ErrandView:
        """Drive the errand until it has to stop; return its view."""
        p = p or await self.load(errand_id)
        self._live.add(errand_id)
        try:
            await self._recover(p)
            while await self._step(p):
                pass
        finally:
            self._live.discard(errand_id)
            self._seen.pop(errand_id, None)
        return p.view

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
        elif p.needs_model:
            await self._ask_model(p)
        elif p.final_text is not None:
            done = ev.StateChanged(
                state="done",
                result=ev.Content.labelled(p.final_text, Provenance(kind="model"), p.label),
            )
            await self._append(p, [done])
            return False
        else:
            return False
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
        reason = exceeded(p.view, p.created.limits, time.time())
        if reason:
            await self._append(p, [ev.StateChanged(state="failed", reason=reason)])
            return
        model = self.models(p.view.model)
        tools = self.dispatch.toolset.tools(p.view)
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
        blocked = await self.budgets.reserve(p, model, request, request_seq)
        if blocked is not None and blocked.wait:
            await asyncio.sleep(blocked.wait)  # calls in flight hold the budget: ask again
            return  # (the next step first folds in what others wrote: a cancel, a message)
        if blocked is not None:
            await self._append(p, [ev.StateChanged(state=blocked.state, reason=blocked.reason)])
            return
        try:
            reply = await self._complete(model, request, p.errand_id)
        except ModelError as exc:
            await self._append(
                p,
                [
                    ev.ErrorRaised(kind="model", message=str(exc), retryable=exc.retryable),
                    ev.StateChanged(state="failed", reason=f"the model failed: {exc}"),
                ],
            )
            return
        content = None
        if reply.text or not reply.tool_calls:
            content = ev.Content.labelled(
                reply.text, Provenance(kind="model", name=model.name), p.label
            )
        usage = reply.usage.model_copy(
            # a chain's spec has no price: the member that answered (reply.model) has
            update={
                "cost_usd": cost_usd((model.name, reply.model), reply.usage, self.settings.prices)
            }
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
        routed = [
            self.dispatch.route(p, call, i, request_seq) for i, call in enumerate(reply.tool_calls)
        ]
        await self._route_and_run(p, routed, first=[response])

    async def _complete(self, model: Model, request: ModelRequest, errand_id: str) -> ModelReply:
        # streamed text, and the resets of retries and fallbacks, go to the listener
        sink = None if self.on_text is None else ErrandText(self.on_text, errand_id)

        # retries, fallback and rate limits are wrappers around the model (models/spec.py)
        return await model.complete(request, sink)

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
        except StoreError:
            await self._catch_up(p)  # cancelled meanwhile: nothing was written, nothing runs
            return
        await self._run_calls(p, [c for c in p.in_flight()])

    async def _run_calls(self, p: Progress, calls: list[CallState]) -> None:
        if not calls:
            return

        async def one(call: CallState) -> None:
            assert call.intent is not None and call.intent_seq is not None
            fault("after_intent")
            result = await self.dispatch.execute(p, call.intent_seq, call.intent)
            await self._append(p, [result, *self._next_request(p, call)])

        if len(calls) == 1:
            await one(calls[0])
        else:
            await asyncio.gather(*(one(c) for c in calls))

    def _next_request(self, p: Progress, finishing: CallState) -> list[ev.Event]:
        """The model request that follows the last result of a turn, to log it in the same
        commit; empty when something else (a decision, a limit, a cancel) comes first."""
        others_done = all(c.done for c in p.calls.values() if c is not finishing)
        if not others_done or p.held_messages or p.view.cancel_requested or p.created is None:
            return []
        if exceeded(p.view, p.created.limits, time.time()):
            return []
        model = self.models(p.view.model)
        return [
            ev.ModelRequested(
                model=model.name, tools_hash=self.dispatch.toolset.tools(p.view).fingerprint
            )
        ]

    async def _append(
        self,
        p: Progress,
        events: Sequence[ev.Event],
        guard: Callable[[ErrandView], None] | None = None,
    ) -> list[int]:
        seqs = await self.store.append(p.errand_id, events, owner=self.owner, guard=guard)
        if seqs[0] > p.last_seq + 1:  # an outsider wrote in between: fold that in first
            for stored in await self.store.read(p.errand_id, after=p.last_seq):
                if stored.seq >= seqs[0]:
                    break
                p.apply(stored.seq, stored.event)
        for seq, event in zip(seqs, events, strict=True):
            if seq > p.last_seq:  # a concurrent call's catch-up may have folded it in already
                p.apply(seq, event)
        return seqs

    async def _catch_up(self, p: Progress) -> None:
        self.dirty.discard(p.errand_id)
        for stored in await self.store.read(p.errand_id, after=p.last_seq):
            p.apply(stored.seq, stored.event)
