"""The typed, versioned events of the errand log.

An errand is an append-only sequence of these events; everything else -- its state,
the inbox, the cost report, replays -- is derived from them. Each event carries a
schema version ``v``; an event written by an older version is upgraded on read by
:func:`upgrade` (see ``UPGRADERS``), so a log written by any earlier release replays.

Every content item is a :class:`Content`: text with its provenance and its trust
labels (see :mod:`errands.core.labels`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from errands.core.labels import Confidentiality, Integrity, Label, Provenance, join

__all__ = [
    "EVENT_TYPES",
    "UPGRADERS",
    "ApprovalDenied",
    "ApprovalGranted",
    "ApprovalRequested",
    "CancelRequested",
    "Content",
    "ContextCompacted",
    "EffectClass",
    "ErrandCompacted",
    "ErrandCreated",
    "ErrandPurged",
    "ErrorRaised",
    "Event",
    "EventTooNew",
    "Limits",
    "LimitsRaised",
    "MaskedOutput",
    "ModelRequested",
    "ModelResponded",
    "ModelUsed",
    "Sleeping",
    "StateChanged",
    "ToolCall",
    "ToolIntent",
    "ToolResult",
    "Usage",
    "UserMessage",
    "dump_event",
    "load_event",
]


class EffectClass(StrEnum):
    """What a tool call can do to the world, from harmless to irreversible."""

    none = "none"
    read = "read"
    network = "network"  # reaches the network without meaning to change anything (can leak via URL)
    write_local = "write_local"
    external = "external"  # changes something outside: a send, a POST
    spend = "spend"
    irreversible = "irreversible"


class Content(BaseModel):
    """One content item: its text, where it came from, and its trust labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    provenance: Provenance
    integrity: Integrity = Integrity.trusted
    confidentiality: Confidentiality = Confidentiality.private

    @property
    def label(self) -> Label:
        return Label.of(self.integrity, self.confidentiality)

    @classmethod
    def labelled(cls, text: str, provenance: Provenance, label: Label) -> Content:
        return cls(
            text=text,
            provenance=provenance,
            integrity=label.integrity,
            confidentiality=label.confidentiality,
        )

    @classmethod
    def derived(cls, text: str, provenance: Provenance, sources: Iterable[Content]) -> Content:
        """Content made from *sources* -- a summary, a memory, a child errand's answer --
        carries the join of their labels: an untrusted page summarised is still untrusted,
        a private file quoted is still private. (The label-join API memory, sub-errands
        and compaction use.)"""
        return cls.labelled(text, provenance, join(s.label for s in sources))


class Usage(BaseModel):
    """One normalised usage record per model call."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0  # all input tokens, cached ones included
    cached_input_tokens: int = 0  # input tokens read from the provider's cache
    cache_write_tokens: int = 0
    output_tokens: int = 0  # reasoning tokens included
    reasoning_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        a, b = self.__dict__, other.__dict__
        return _usage(
            {
                "input_tokens": a["input_tokens"] + b["input_tokens"],
                "cached_input_tokens": a["cached_input_tokens"] + b["cached_input_tokens"],
                "cache_write_tokens": a["cache_write_tokens"] + b["cache_write_tokens"],
                "output_tokens": a["output_tokens"] + b["output_tokens"],
                "reasoning_tokens": a["reasoning_tokens"] + b["reasoning_tokens"],
                "cost_usd": a["cost_usd"] + b["cost_usd"],
            },
            _USAGE_FIELDS,
        )

    def costing(self, cost_usd: float) -> Usage:
        """This usage with its cost (as ``model_copy(update={"cost_usd": ...})``)."""
        return _usage({**self.__dict__, "cost_usd": cost_usd}, self.__pydantic_fields_set__ | _COST)


# perf: a sum or a copy of usages is built without validation -- its values are sums of
# validated ones, of the same types -- the way model_construct() builds a model, at a
# third of Usage()'s cost (folded twice per model call: the loop's view and the store's)
_USAGE_FIELDS = frozenset(Usage.model_fields)
_COST = frozenset({"cost_usd"})
_set = object.__setattr__


def _usage(values: dict[str, Any], fields_set: frozenset[str] | set[str]) -> Usage:
    usage = Usage.__new__(Usage)
    _set(usage, "__dict__", values)
    _set(usage, "__pydantic_fields_set__", set(fields_set))
    _set(usage, "__pydantic_extra__", None)
    _set(usage, "__pydantic_private__", None)
    return usage


class Limits(BaseModel):
    """Per-errand limits; ``None`` means no limit."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = 50
    max_wall_seconds: float | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    call_id: str
    name: str
    arguments: dict[str, Any]
    # the raw text when the model sent arguments that are not a JSON object
    raw_arguments: str | None = None


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    VERSION: ClassVar[int] = 1

    v: int = 1
    at: float = Field(default_factory=time.time)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)


class ErrandCreated(_Event):
    VERSION: ClassVar[int] = 2
    type: Literal["errand_created"] = "errand_created"
    v: int = 2
    title: str
    content: Content  # the person's request
    model: str
    workspace: str
    limits: Limits = Limits()
    parent: str | None = None
    by: str = "local"
    channel: str = "cli"
    # the person's time zone: the model is told the date in it (None: an errand from
    # before errands told models the date -- its transcript stays as it was)
    timezone: str | None = None
    # a run of a schedule: its name, and the schedule's daily cap (every run's spend on
    # one day counts against it)
    schedule: str | None = None
    schedule_daily_usd: float | None = None
    # the only tools the errand may use (None: every tool errands has)
    tools: list[str] | None = None
    # "plan": plan-then-execute -- the model never reads untrusted content, it handles
    # it by reference and has typed values extracted from it (errands.core.plan)
    mode: Literal["plan"] | None = None


class Sleeping(_Event):
    """The model called ``wait``: the errand sleeps until *wake_at* (wall time, seconds
    since the epoch) or until a message comes, whichever is first; the call's result
    says which. A durable timer: no task, thread or model call meanwhile."""

    type: Literal["sleeping"] = "sleeping"
    call_id: str
    tool: str
    wake_at: float
    reason: str = ""


class LimitsRaised(_Event):
    """A person gave the errand more room (it reached a limit, or was about to): it
    goes on from where it stopped."""

    type: Literal["limits_raised"] = "limits_raised"
    more_steps: int = 0
    by: str = "local"
    channel: str = "cli"


class UserMessage(_Event):
    type: Literal["user_message"] = "user_message"
    content: Content
    by: str = "local"
    channel: str = "cli"


class ModelRequested(_Event):
    """Written before the model is called; its context is the log before this event."""

    VERSION: ClassVar[int] = 2
    type: Literal["model_requested"] = "model_requested"
    v: int = 2
    model: str
    tools_hash: str
    max_tokens: int | None = None


class ModelResponded(_Event):
    VERSION: ClassVar[int] = 2
    type: Literal["model_responded"] = "model_responded"
    v: int = 2
    request_seq: int
    model: str
    content: Content | None = None  # the model's text, labelled with its context's join
    tool_calls: list[ToolCall] = []
    usage: Usage = Usage()
    stop_reason: str = "end"
    # opaque provider state the API needs back with this turn (signed thinking blocks,
    # thought signatures, encrypted reasoning items), tagged with the client's kind and
    # model; see errands.models.protocol.  Optional: older logs have none.
    replay: dict[str, Any] | None = None


class ToolIntent(_Event):
    """The outbox record: written (durably) before the tool runs."""

    type: Literal["tool_intent"] = "tool_intent"
    call_id: str
    tool: str
    arguments: dict[str, Any]
    effect: EffectClass
    idempotent: bool
    idempotency_key: str
    approval_seq: int | None = None  # the approval request this call runs under


class ToolResult(_Event):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    tool: str
    intent_seq: int | None = None  # None when the call never ran (bad arguments, denied)
    ok: bool
    content: Content
    # why it failed: bad_arguments, unknown_tool, precondition, postcondition,
    # tool_error, denied, in_doubt
    error_kind: str | None = None


class ApprovalRequested(_Event):
    type: Literal["approval_requested"] = "approval_requested"
    call_id: str
    tool: str
    arguments: dict[str, Any]
    args_hash: str  # canonical hash of the arguments this approval is bound to
    effect: EffectClass
    reason: str
    rule: str
    preview: str = ""


class ApprovalGranted(_Event):
    type: Literal["approval_granted"] = "approval_granted"
    request_seq: int
    args_hash: str  # the hash the person saw and approved (of the edited arguments if edited)
    edited_arguments: dict[str, Any] | None = None
    always: bool = False
    # with always: argument name -> glob; later calls of the tool whose arguments match
    # run without asking, for this errand only
    always_pattern: dict[str, str] | None = None
    by: str
    channel: str


class ApprovalDenied(_Event):
    type: Literal["approval_denied"] = "approval_denied"
    request_seq: int
    reason: str
    by: str
    channel: str


class StateChanged(_Event):
    type: Literal["state_changed"] = "state_changed"
    state: str
    reason: str = ""
    result: Content | None = None


class ModelUsed(_Event):
    """A model call that is not a turn of the errand's conversation -- plan mode's
    quarantined extractor (:mod:`errands.core.plan`) -- booked like any: what it cost."""

    type: Literal["model_used"] = "model_used"
    call_id: str  # the tool call it served
    model: str
    usage: Usage
    purpose: str = "extract"


class ErrorRaised(_Event):
    type: Literal["error"] = "error"
    kind: str
    message: str
    retryable: bool = False


class CancelRequested(_Event):
    type: Literal["cancel_requested"] = "cancel_requested"
    reason: str = ""
    by: str = "local"
    channel: str = "cli"


class ErrandPurged(_Event):
    type: Literal["errand_purged"] = "errand_purged"
    by: str = "local"


class ErrandCompacted(_Event):
    """Retention compacted the finished errand's log (errands.store.retention): what is
    left is its request, its cost rows, its final state and result, and this summary."""

    type: Literal["errand_compacted"] = "errand_compacted"
    summary: str
    events: int  # how many events the full log had
    bytes: int  # and their stored bytes


class MaskedOutput(BaseModel):
    """A tool output taken out of the context: the model reads *stub* in its place, and
    ``recall_output`` brings the output back by its handle (the result's *seq*)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int  # the tool_result event whose output this is
    index: int  # its place in the transcript when it was masked
    stub: str


class ContextCompacted(_Event):
    """The errand's context was compacted to stay inside its model's window
    (errands.engine.context): old tool outputs *masked*, and/or the *summarised*
    messages after the first replaced by *summary* (labelled with the join of what it
    summarises). Folding it gives the next requests' transcript exactly."""

    type: Literal["context_compacted"] = "context_compacted"
    window: int  # the model's context window, in tokens
    tokens_before: int  # estimates of the context, before and after
    tokens_after: int
    masked: list[MaskedOutput] = []
    summarised: int = 0  # messages 1..summarised (the request, message 0, is kept)
    summary: Content | None = None


Event = Annotated[
    ErrandCreated
    | UserMessage
    | ModelRequested
    | ModelResponded
    | ToolIntent
    | ToolResult
    | ApprovalRequested
    | ApprovalGranted
    | ApprovalDenied
    | StateChanged
    | ErrorRaised
    | CancelRequested
    | ErrandPurged
    | LimitsRaised
    | Sleeping
    | ModelUsed
    | ErrandCompacted
    | ContextCompacted,
    Field(discriminator="type"),
]

EVENT_TYPES: dict[str, type[_Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        ErrandCreated,
        UserMessage,
        ModelRequested,
        ModelResponded,
        ToolIntent,
        ToolResult,
        ApprovalRequested,
        ApprovalGranted,
        ApprovalDenied,
        StateChanged,
        ErrorRaised,
        CancelRequested,
        ErrandPurged,
        LimitsRaised,
        Sleeping,
        ModelUsed,
        ErrandCompacted,
        ContextCompacted,
    )
}

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


# --- upgrades -----------------------------------------------------------------------
# (type, from_version) -> function turning the v-N dict into a v-N+1 dict.


def _errand_created_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 kept the request as bare text; v2 carries it as a labelled content item.
    data = dict(data)
    text = data.pop("text")
    data["content"] = {
        "text": text,
        "provenance": {"kind": "user", "name": data.get("by", "local")},
        "integrity": "trusted",
        "confidentiality": "private",
    }
    data["v"] = 2
    return data


def _model_requested_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 named its context by ``context_seq``, always the sequence number just before
    # the request itself; v2 drops it (the context is the log before the event).
    data = {k: v for k, v in data.items() if k != "context_seq"}
    data["v"] = 2
    return data


def _model_responded_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    # v2 added ``replay`` (optional): a v1 event is a v2 one without it. The bump makes
    # an older errands refuse a new log clearly instead of choking on the field.
    return {**data, "v": 2}


UPGRADERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("errand_created", 1): _errand_created_1_to_2,
    ("model_requested", 1): _model_requested_1_to_2,
    ("model_responded", 1): _model_responded_1_to_2,
}


class EventTooNew(ValueError):
    """An event of a version this errands does not know: a newer errands wrote it."""


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an event dict of any earlier version up to the current one."""
    kind = data.get("type")
    cls = EVENT_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    version = int(data.get("v", 1))
    if version > cls.VERSION:
        raise EventTooNew(
            f"event {kind} v{version} is newer than this errands understands (v{cls.VERSION}); "
            "upgrade errands"
        )
    while version < cls.VERSION:
        data = UPGRADERS[(str(kind), version)](data)
        version = int(data["v"])
    return data


def load_event(raw: str | bytes | dict[str, Any]) -> Event:
    """Parse one stored event, upgrading older versions."""
    if isinstance(raw, (str, bytes)):
        # Fast path: an event of the current version parses straight from JSON.
        try:
            event: Event = _ADAPTER.validate_json(raw)
        except ValidationError:
            pass
        else:
            if event.v == type(event).VERSION:
                return event
        data = json.loads(raw)
    else:
        data = raw
    if int(data.get("v", 1)) != EVENT_TYPES.get(str(data.get("type")), _Event).VERSION:
        data = upgrade(data)
    return _ADAPTER.validate_python(data)


def dump_event(event: _Event) -> str:
    return event.model_dump_json()


def parse_event(data: dict[str, Any]) -> Event:
    return _ADAPTER.validate_python(data)
