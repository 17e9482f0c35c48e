"""The errand log, read as spans: what each event starts, ends or counts.

Pure (no OpenTelemetry here): :class:`Follower` takes an errand's stored events in order
and hands a :class:`Sink` finished :class:`SpanRecord` s and metric increments. Every
span is made only once it has ended, with its start and end taken from the events'
own times, and the ids that others point at are derived from the errand's id and the
sequence number of the event that began the span (:func:`span_id`) -- so a span that
began before a restart and ends after it gets the same parent and trace as if nothing
had happened, and nothing has to be held open in memory meanwhile.

The tree, one trace per errand (its id derived from the errand's):

    errand.run                       created -> done / failed / cancelled
    ├─ schedule.fire <name>          (a run a schedule or watch started)
    └─ errand.step                   model_requested -> the next step, or a stop
       ├─ chat <model>               model_requested -> model_responded (or its error)
       ├─ approval.wait <tool>       approval_requested -> granted / denied
       └─ execute_tool <tool>        tool_intent (or sleeping) -> tool_result

Attributes follow the OpenTelemetry GenAI semantic conventions where one applies
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.*``,
``gen_ai.tool.name``); the rest are ``errands.*``. What is never put in a span: a tool
call's arguments, a model's or tool's text, an approval's preview, a person's message or
name, an error's message -- only names, classes, counts, decisions and times.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from errands.core import events as ev
from errands.store.protocol import StoredEvent

__all__ = ["FINISHED", "Follower", "Sink", "SpanRecord", "span_id", "trace_id"]

AttrValue = str | int | float | bool
Attrs = dict[str, AttrValue]
FINISHED = frozenset({"done", "failed", "cancelled"})
_STOPS = FINISHED | {"needs_attention"}
KEEP = 10_000  # errands followed before finished ones are forgotten


def trace_id(errand_id: str) -> int:
    """The errand's trace: 128 bits derived from its id."""
    return int.from_bytes(hashlib.sha256(errand_id.encode()).digest()[:16], "big") or 1


def span_id(errand_id: str, seq: int, kind: str) -> int:
    """The span begun by the event *seq* of the errand (``kind``: which of its spans)."""
    digest = hashlib.sha256(f"{errand_id}/{seq}/{kind}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


@dataclass
class SpanRecord:
    """One finished span: what an exporter needs, nothing else."""

    name: str
    trace: int
    span: int | None  # None: any id (no span points at it)
    parent: int | None  # None: the root
    start: float  # seconds since the epoch
    end: float
    attrs: Attrs
    error: str | None = None  # a short kind ("model_error", "failed"), never a message


class Sink(Protocol):
    def span(self, record: SpanRecord) -> None: ...

    def step(self, model: str) -> None: ...

    def spent(self, model: str, usage: ev.Usage) -> None: ...

    def finished(self, state: str) -> None: ...


def _model_attrs(spec: str) -> Attrs:
    provider, sep, name = spec.partition(":")
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider if sep else "unknown",
        "gen_ai.request.model": name if sep else spec,
    }


@dataclass
class _Call:
    """A tool call the model made, until its result: its step, decision, effect."""

    step: int
    tool: str
    decision: str = "allow"
    effect: str | None = None
    began: float | None = None  # when it started running (intent, or the wait began)


@dataclass
class _Errand:
    errand_id: str
    since: float  # events timed before this were reported by an earlier process (or pass)
    created: float | None = None
    root: int = 1  # the seq that began the current run (a finished errand may go on)
    finished: bool = False
    model: str = ""
    seq: int = 0  # the last event followed
    step: int | None = None  # the seq of the current step's model_requested
    step_began: float = 0.0
    step_no: int = 0
    asked: tuple[int, float, str] | None = None  # model_requested: seq, at, model
    calls: dict[str, _Call] = field(default_factory=dict)
    approvals: dict[int, tuple[float, str, str, str]] = field(default_factory=dict)


class Follower:
    """Reads errands' logs and tells *sink* what they did. Events of an errand timed
    before its *since* (what an earlier process reported, or an earlier run of this
    follower) only rebuild where the errand is."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.errands: dict[str, _Errand] = {}

    def following(self, errand_id: str) -> int | None:
        """The last seq followed of the errand; None if it is not followed (new to this
        follower, or forgotten)."""
        e = self.errands.get(errand_id)
        return None if e is None else e.seq

    def begin(self, errand_id: str, since: float, created: float | None = None) -> None:
        """Follow an errand from here (*created*: when it was, if its creation is not
        among the events that follow). Finished errands are forgotten first when more
        than :data:`KEEP` are followed."""
        if len(self.errands) >= KEEP:
            self.errands = {k: e for k, e in self.errands.items() if not e.finished}
        self.errands[errand_id] = _Errand(errand_id, since, created)

    def follow(self, errand_id: str, events: Iterable[StoredEvent]) -> None:
        e = self.errands.get(errand_id)
        if e is None:
            return
        for stored in events:
            if stored.seq <= e.seq:
                continue
            e.seq = stored.seq
            handler = getattr(self, f"_on_{stored.event.type}", None)
            if handler is not None:  # (an event type errands added later: nothing to report)
                handler(e, stored.seq, stored.event)

    # -- one event ----------------------------------------------------------------------------

    def _emit(
        self,
        e: _Errand,
        name: str,
        *,
        parent: int | None,
        start: float,
        end: float,
        attrs: Attrs,
        span: int | None = None,
        error: str | None = None,
    ) -> None:
        if end >= e.since:
            record = SpanRecord(name, trace_id(e.errand_id), span, parent, start, end, attrs, error)
            self.sink.span(record)

    def _root(self, e: _Errand) -> int:
        return span_id(e.errand_id, e.root, "errand")

    def _on_errand_created(self, e: _Errand, seq: int, event: ev.ErrandCreated) -> None:
        e.created, e.model = event.at, event.model
        if event.schedule is not None:
            self._emit(
                e,
                f"schedule.fire {event.schedule}",
                parent=self._root(e),
                start=event.at,
                end=event.at,
                attrs={
                    "errands.schedule.name": event.schedule,
                    "errands.errand.id": e.errand_id,
                },
            )

    def _end_step(self, e: _Errand, at: float, stopped: str | None = None) -> None:
        if e.step is None:
            return
        attrs: Attrs = {"errands.step": e.step_no, "errands.errand.id": e.errand_id}
        if stopped is not None:
            attrs["errands.state"] = stopped
        self._emit(
            e,
            "errand.step",
            span=span_id(e.errand_id, e.step, "step"),
            parent=self._root(e),
            start=e.step_began,
            end=at,
            attrs=attrs,
        )
        e.step = None

    def _on_model_requested(self, e: _Errand, seq: int, event: ev.ModelRequested) -> None:
        self._end_step(e, event.at)
        e.step, e.step_began, e.step_no = seq, event.at, e.step_no + 1
        e.asked = (seq, event.at, event.model)
        if event.at >= e.since:
            self.sink.step(event.model)

    def _on_model_responded(self, e: _Errand, seq: int, event: ev.ModelResponded) -> None:
        asked, e.asked = e.asked, None
        if event.at >= e.since:
            self.sink.spent(event.model, event.usage)
        step = e.step if e.step is not None else seq
        for call in event.tool_calls:
            e.calls[call.call_id] = _Call(step, call.name)
        if asked is None or asked[0] != event.request_seq:
            return  # (its request is older than what was read: the span is not known)
        usage = event.usage
        attrs = _model_attrs(asked[2])
        attrs.update(
            {
                "gen_ai.response.model": event.model,
                "gen_ai.response.finish_reasons": event.stop_reason,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "errands.usage.cached_input_tokens": usage.cached_input_tokens,
                "errands.cost_usd": usage.cost_usd,
                "errands.tool_calls": len(event.tool_calls),
            }
        )
        self._model_span(e, asked, event.at, attrs)

    def _model_span(
        self,
        e: _Errand,
        asked: tuple[int, float, str],
        at: float,
        attrs: Attrs,
        error: str | None = None,
    ) -> None:
        self._emit(
            e,
            f"chat {attrs['gen_ai.request.model']}",
            span=span_id(e.errand_id, asked[0], "model"),
            parent=span_id(e.errand_id, asked[0], "step"),
            start=asked[1],
            end=at,
            attrs=attrs,
            error=error,
        )

    def _on_model_used(self, e: _Errand, seq: int, event: ev.ModelUsed) -> None:
        if event.at >= e.since:
            self.sink.spent(event.model, event.usage)

    def _on_error(self, e: _Errand, seq: int, event: ev.ErrorRaised) -> None:
        asked, e.asked = e.asked, None
        if asked is not None:  # the model call failed
            attrs = _model_attrs(asked[2])
            attrs["error.type"] = event.kind
            self._model_span(e, asked, event.at, attrs, error=event.kind)

    def _call(self, e: _Errand, call_id: str, tool: str) -> _Call:
        call = e.calls.get(call_id)
        if call is None:  # (routed before what was read)
            call = e.calls[call_id] = _Call(e.step if e.step is not None else 0, tool)
        return call

    def _on_tool_intent(self, e: _Errand, seq: int, event: ev.ToolIntent) -> None:
        call = self._call(e, event.call_id, event.tool)
        call.effect, call.began = event.effect.value, event.at
        if event.approval_seq is not None:
            call.decision = "approved"

    def _on_sleeping(self, e: _Errand, seq: int, event: ev.Sleeping) -> None:
        call = self._call(e, event.call_id, event.tool)
        call.effect, call.began = "none", event.at

    def _on_approval_requested(self, e: _Errand, seq: int, event: ev.ApprovalRequested) -> None:
        call = self._call(e, event.call_id, event.tool)
        call.decision, call.effect = "ask", event.effect.value
        e.approvals[seq] = (event.at, event.call_id, event.effect.value, event.rule)

    def _decided(
        self, e: _Errand, request_seq: int, at: float, decision: str, channel: str
    ) -> None:
        found = e.approvals.pop(request_seq, None)
        if found is None:
            return
        began, call_id, effect, rule = found
        call = self._call(e, call_id, "")
        call.decision = "approved" if decision == "granted" else "denied"
        self._emit(
            e,
            f"approval.wait {call.tool}",
            span=None,
            parent=span_id(e.errand_id, call.step, "step"),
            start=began,
            end=at,
            attrs={
                "gen_ai.tool.name": call.tool,
                "gen_ai.tool.call.id": call_id,
                "errands.tool.effect": effect,
                "errands.approval.rule": rule,
                "errands.approval.decision": decision,
                "errands.approval.channel": channel,
            },
        )

    def _on_approval_granted(self, e: _Errand, seq: int, event: ev.ApprovalGranted) -> None:
        self._decided(e, event.request_seq, event.at, "granted", event.channel)

    def _on_approval_denied(self, e: _Errand, seq: int, event: ev.ApprovalDenied) -> None:
        self._decided(e, event.request_seq, event.at, "denied", event.channel)

    def _on_tool_result(self, e: _Errand, seq: int, event: ev.ToolResult) -> None:
        call = e.calls.pop(event.call_id, None) or _Call(e.step or 0, event.tool)
        if event.intent_seq is None and call.began is None and call.decision == "allow":
            call.decision = "refused"  # never ran: denied by the policy, bad arguments, ...
        began = call.began if call.began is not None else event.at
        attrs: Attrs = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": event.tool,
            "gen_ai.tool.call.id": event.call_id,
            "errands.tool.decision": call.decision,
            "errands.tool.ok": event.ok,
            "errands.tool.duration_ms": round((event.at - began) * 1000, 3),
        }
        if call.effect is not None:
            attrs["errands.tool.effect"] = call.effect
        if event.error_kind is not None:
            attrs["error.type"] = event.error_kind
        self._emit(
            e,
            f"execute_tool {event.tool}",
            span=None,
            parent=span_id(e.errand_id, call.step, "step"),
            start=began,
            end=event.at,
            attrs=attrs,
            error=event.error_kind if not event.ok else None,
        )

    def _on_state_changed(self, e: _Errand, seq: int, event: ev.StateChanged) -> None:
        if event.state not in _STOPS:
            if e.finished:  # a finished errand goes on (more steps, a retry): a new run
                e.root, e.created, e.step_no, e.finished = seq, event.at, 0, False
            return
        self._end_step(e, event.at, event.state)
        if event.state not in FINISHED:
            return
        if event.at >= e.since:
            self.sink.finished(event.state)
        attrs: Attrs = {
            "errands.errand.id": e.errand_id,
            "errands.state": event.state,
            "errands.steps": e.step_no,
        }
        if e.model:
            attrs["gen_ai.request.model"] = e.model
        self._emit(
            e,
            "errand.run",
            span=self._root(e),
            parent=None,
            start=e.created if e.created is not None else event.at,
            end=event.at,
            attrs=attrs,
            error=None if event.state == "done" else event.state,
        )
        e.finished = True
        e.calls.clear()
        e.approvals.clear()
