"""What the loop knows about an errand: its transcript and what to do next.

:class:`Progress` is a fold of the errand's log, like the view in
:mod:`errands.core.states` but richer: the transcript exactly as the model saw it, the
tool calls of the latest model turn with where each one stands (routed, waiting for a
decision, intent logged, result logged), and whether the model must be asked next.
Because it is derived from the log alone, a resumed errand picks up exactly where the
crashed one stopped -- including the opaque provider state (``ModelResponded.replay``:
signed thinking, thought signatures, encrypted reasoning) that an assistant message
must carry back to its API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from errands.clock import date_line
from errands.core import events as ev
from errands.core.labels import BOTTOM, Label, join
from errands.core.messages import Message
from errands.core.pieces import Piece
from errands.core.plan import (
    EXTRACT,
    PLAN,
    Value,
    named,
    resolve,
    resolve_text,
    stub,
    value_stub,
)
from errands.core.snapshot import Chain
from errands.core.states import ErrandView, apply

__all__ = ["CallState", "Progress"]


@dataclass
class CallState:
    """One tool call of the latest model turn, and how far it got."""

    call: ev.ToolCall
    index: int
    request_seq: int  # the model request whose reply asked for it (idempotency keys)
    label: Label  # the label of the model output that asked for it
    approval_seq: int | None = None
    decision: str | None = None  # granted | denied
    deny_reason: str = ""
    approved_args: dict[str, Any] | None = None
    approved_hash: str | None = None
    intent_seq: int | None = None
    intent: ev.ToolIntent | None = None
    done: bool = False
    wake_at: float | None = None  # a wait call: when its timer fires

    @property
    def routed(self) -> bool:
        return (
            self.approval_seq is not None
            or self.intent_seq is not None
            or self.done
            or self.wake_at is not None
        )

    @property
    def waiting(self) -> bool:
        return self.approval_seq is not None and self.decision is None and not self.done


@dataclass
class Progress:
    errand_id: str
    view: ErrandView
    created: ev.ErrandCreated | None = None
    messages: list[Message] = field(default_factory=Chain)  # (a Chain: snapshots)
    label: Label = BOTTOM  # join of every content label in the context
    # every labelled piece that entered the context (flow control traces calls to them)
    pieces: list[Piece] = field(default_factory=Chain)
    calls: dict[str, CallState] = field(default_factory=dict)
    held_messages: list[Message] = field(default_factory=list)  # user messages during tool calls
    open_request_seq: int | None = None
    needs_model: bool = False
    final_text: str | None = None
    always_allowed: list[tuple[str, str]] = field(default_factory=list)  # (tool, pattern JSON)
    requested_args: dict[int, dict[str, Any]] = field(default_factory=dict)  # validated, by seq
    last_usage: ev.Usage | None = None  # of the latest model call (budgets estimate from it)
    answered: int = 0  # how many messages the latest model call's context and reply made
    # the seq of the event each message (each held message) came from: a masked output's
    # handle (errands.engine.context)
    origins: list[int] = field(default_factory=list)
    held_origins: list[int] = field(default_factory=list)
    # after a context compaction (errands.engine.context): its token estimate, and how
    # many messages the transcript then had
    compacted_tokens: int | None = None
    compacted_len: int = 0
    # the provider has been failing since this wall time (retryable errors, no reply yet)
    outage_since: float | None = None
    outage_errors: int = 0
    # the same unexpected failure, this many times in a row with no progress in between
    failures: int = 0
    last_failure: str = ""
    failed_by_model: bool = False  # the errand failed because its model could not answer
    dated: str = ""  # the latest date line the model was given ("": never told the date)
    more_steps: int = 0  # steps a person added to the errand's limit
    slept: bool = False  # a call of the latest turn is (or was) a wait (perf: for _step)
    limits: ev.Limits = field(default_factory=ev.Limits)  # the errand's, with what was added
    # plan mode (errands.core.plan): untrusted content reaches the model as a handle;
    # ``label`` is then the join of what the model saw, and ``values`` what handles stand for
    plan: bool = False
    values: dict[str, Value] = field(default_factory=dict)
    # the latest fold snapshot written or read (errands.core.snapshot); not part of the fold
    snapshot_seq: int = field(default=0, compare=False)

    @classmethod
    def empty(cls, errand_id: str) -> Progress:
        return cls(errand_id=errand_id, view=ErrandView(id=errand_id))

    @property
    def last_seq(self) -> int:
        return self.view.last_seq

    def apply(self, seq: int, event: ev.Event) -> None:
        apply(self.view, seq, event)  # checks the sequence has no gap
        match event:
            # (perf: the events of every step first; a match tries its cases in order)
            case ev.ModelRequested():
                self.open_request_seq = seq
            case ev.ModelResponded():
                self.open_request_seq = None
                self.slept = False
                self.outage_since, self.outage_errors = None, 0
                self.failures, self.failed_by_model = 0, False
                self.last_usage = event.usage
                self.answered = len(self.messages) + 1  # this reply's message included
                label = event.content.label if event.content else self.label
                self.messages.append(
                    Message(
                        role="assistant",
                        text=event.content.text if event.content else "",
                        tool_calls=tuple(event.tool_calls),
                        replay=event.replay,  # provider state, carried by the log
                    )
                )
                self.origins.append(seq)
                self.calls = {
                    c.call_id: CallState(
                        call=c, index=i, request_seq=event.request_seq, label=label
                    )
                    for i, c in enumerate(event.tool_calls)
                }
                self.final_text = (
                    None if event.tool_calls else (event.content.text if event.content else "")
                )
                self.needs_model = False
                if event.content:
                    self.label = self.label.joined(event.content.label)
            case ev.ToolIntent():
                if event.call_id in self.calls:
                    self.calls[event.call_id].intent_seq = seq
                    self.calls[event.call_id].intent = event
            case ev.ToolResult():
                self.failures = 0
                state = self.calls.get(event.call_id)
                if state is not None and not state.done:
                    state.done = True
                    text = event.content.text
                    if self.plan and event.content.integrity == "untrusted":
                        text = self._kept(seq, event)
                    else:
                        self.label = self.label.joined(event.content.label)
                    self.messages.append(
                        Message(
                            role="tool",
                            text=text,
                            tool_call_id=event.call_id,
                            tool_name=event.tool,
                            is_error=not event.ok,
                        )
                    )
                    self.origins.append(seq)
                    self.pieces.append(Piece(seq, event.at, event.content))
                    if all(c.done for c in self.calls.values()):
                        self.needs_model = True
                        self._release_held()
            case ev.ErrandCreated():
                self.created = event
                self.limits = event.limits
                self.plan = event.mode == PLAN
                self.pieces.append(Piece(seq, event.at, event.content, said=True))
                if event.timezone is None:
                    self._user(event.content, seq=seq)
                else:  # the request, headed by the date it was made on
                    self.dated = date_line(event.at, event.timezone)
                    self._user(event.content, heading=self.dated, seq=seq)
            case ev.UserMessage(channel="clock"):
                self.dated = event.content.text
                self._user(event.content, seq=seq)
            case ev.UserMessage():
                self._user(event.content, seq=seq)
                self.pieces.append(Piece(seq, event.at, event.content, said=True))
            case ev.ApprovalRequested():
                if event.call_id in self.calls:
                    self.calls[event.call_id].approval_seq = seq
                    self.requested_args[seq] = event.arguments
            case ev.ApprovalGranted():
                call = self._by_approval(event.request_seq)
                if call is not None:
                    call.decision = "granted"
                    call.approved_args = (
                        event.edited_arguments
                        if event.edited_arguments is not None
                        else self.requested_args.get(event.request_seq, call.call.arguments)
                    )
                    call.approved_hash = event.args_hash
                    if event.always and event.always_pattern is not None:
                        pattern = json.dumps(event.always_pattern, sort_keys=True)
                        self.always_allowed.append((call.call.name, pattern))
            case ev.ApprovalDenied():
                call = self._by_approval(event.request_seq)
                if call is not None:
                    call.decision = "denied"
                    call.deny_reason = event.reason
            case ev.Sleeping():
                self.slept = True
                if event.call_id in self.calls:
                    self.calls[event.call_id].wake_at = event.wake_at
            case ev.ErrorRaised(kind="model"):
                self.failed_by_model = True  # until the model answers again
                if event.retryable:
                    if self.outage_since is None:
                        self.outage_since = event.at
                    self.outage_errors += 1
            case ev.ErrorRaised(kind="internal"):
                same = event.message == self.last_failure
                self.failures = self.failures + 1 if same else 1
                self.last_failure = event.message
            case ev.LimitsRaised():
                self.more_steps += event.more_steps
                if self.limits.max_steps is not None:
                    steps = self.limits.max_steps + event.more_steps
                    self.limits = self.limits.model_copy(update={"max_steps": steps})
                if self.final_text is None and not self.waiting():
                    self.needs_model = not any(not c.done for c in self.calls.values())
                self.failures = 0
            case ev.StateChanged():
                if event.state in ("done", "failed"):
                    self.needs_model = False
                elif event.state == "running":  # reopened: ask again what was not answered
                    self.needs_model = self.needs_model or self.open_request_seq is not None
                    self.failures, self.outage_since, self.outage_errors = 0, None, 0
            case ev.ContextCompacted():
                self._compacted(seq, event)
            case _:
                pass

    def _user(self, content: ev.Content, heading: str = "", seq: int = 0) -> None:
        text = content.text
        if self.plan and content.integrity == "untrusted":  # a watch's change, a mail
            handle = f"$r{seq}"
            where = Piece(seq, self.view.updated_at, content).describe()
            self.values[handle] = Value(text, content.label, where)
            name = content.provenance.name or content.provenance.kind
            text = stub(handle, name, len(content.text))
        else:
            self.label = self.label.joined(content.label)
        text = f"{heading}\n\n{text}" if heading else text
        message = Message(role="user", text=text)
        if any(not c.done for c in self.calls.values()):
            self.held_messages.append(message)  # joins at the next step, after the results
            self.held_origins.append(seq)
        else:
            self.messages.append(message)
            self.origins.append(seq)
            self.needs_model = True
            self.final_text = None

    def _kept(self, seq: int, event: ev.ToolResult) -> str:
        """Plan mode: an untrusted result becomes a handle; the model reads a stub."""
        content = event.content
        if event.tool == EXTRACT and event.ok:
            try:
                extracted = json.loads(content.text)
                value, kind = extracted["value"], str(extracted["type"])
            except (ValueError, TypeError, KeyError):
                pass  # (not the extractor's output: a handle to the text, as any)
            else:
                handle = f"$v{seq}"
                where = Piece(seq, event.at, content).describe()
                self.values[handle] = Value(value, content.label, where)
                state = self.calls.get(event.call_id)
                named = state.call.arguments.get("sources") if state else None
                sources = [str(s) for s in named] if isinstance(named, list) else []
                return value_stub(handle, kind, sources)
        handle = f"$r{seq}"
        where = Piece(seq, event.at, content).describe()
        self.values[handle] = Value(content.text, content.label, where)
        return stub(handle, event.tool, len(content.text), error=not event.ok)

    def resolved(self, arguments: dict[str, Any]) -> tuple[dict[str, Any], Label]:
        """A call's arguments as they will run, and the context it is judged in: what the
        model saw, joined (plan mode) with the labels of the values its handles stand
        for. KeyError: a handle that stands for nothing."""
        if not self.plan:
            return arguments, self.label
        args, used = resolve(arguments, self.values)
        return args, self.label.joined(used)

    def sources(self, arguments: dict[str, Any]) -> list[Value]:
        """The values *arguments* name by handle (plan mode), in order."""
        return named(arguments, self.values) if self.plan else []

    def used(self, arguments: dict[str, Any]) -> Label:
        """The join of the labels of the values *arguments* name by handle (plan mode)."""
        return join(v.label for v in self.sources(arguments))

    def answer(self) -> tuple[str, Label]:
        """The model's final answer for the person (handles replaced), and its label."""
        text = self.final_text or ""
        if not self.plan:
            return text, self.label
        text, used = resolve_text(text, self.values)
        return text, self.label.joined(used)

    def _release_held(self) -> None:
        self.messages.extend(self.held_messages)
        self.origins.extend(self.held_origins)
        self.held_messages.clear()
        self.held_origins.clear()

    def _compacted(self, seq: int, event: ev.ContextCompacted) -> None:
        """The transcript as compacted (errands.engine.context): masked outputs become
        their stubs; a summary takes the place of messages 1..summarised."""
        for masked in event.masked:
            self.messages[masked.index] = replace(self.messages[masked.index], text=masked.stub)
        if event.summary is not None and event.summarised:
            end = 1 + event.summarised
            self.messages[1:end] = [Message(role="user", text=event.summary.text)]
            self.origins[1:end] = [seq]
            self.label = self.label.joined(event.summary.label)
            self.pieces.append(Piece(seq, event.at, event.summary))
        self.answered = 0  # (the last usage no longer measures a prefix of the transcript)
        self.compacted_tokens, self.compacted_len = event.tokens_after, len(self.messages)

    def _by_approval(self, request_seq: int) -> CallState | None:
        for call in self.calls.values():
            if call.approval_seq == request_seq:
                return call
        return None

    # ------------------------------------------------------------ what's next

    def unrouted(self) -> list[CallState]:
        """Calls of the latest turn that have not been through the policy yet."""
        return [c for c in self._ordered() if not c.routed]

    def decided(self) -> list[CallState]:
        """Calls with a decision from a person but no intent or result yet."""
        return [c for c in self._ordered() if c.decision and c.intent_seq is None and not c.done]

    def in_flight(self) -> list[CallState]:
        """Calls whose intent is logged but whose result is not (running, or in doubt)."""
        return [c for c in self._ordered() if c.intent_seq is not None and not c.done]

    def waiting(self) -> list[CallState]:
        return [c for c in self._ordered() if c.waiting]

    def sleeping(self) -> CallState | None:
        """The errand's wait call, while it sleeps (its timer set, no result yet)."""
        for c in self.calls.values():
            if c.wake_at is not None and not c.done:
                return c
        return None

    def _ordered(self) -> list[CallState]:
        calls = self.calls
        if len(calls) < 2:  # (perf: one call a turn is the common case)
            return list(calls.values())
        return sorted(calls.values(), key=_index)


def _index(call: CallState) -> int:
    return call.index
