"""The API's bodies: every request and response is one of these pydantic models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from errands.core import events as ev
from errands.core.states import ErrandState, ErrandView, PendingApproval

__all__ = [
    "APPROVAL_ID",
    "ERRAND_ID",
    "MAX_SEQ",
    "ApprovalOut",
    "ApproveBody",
    "CancelBody",
    "Channel",
    "CreateErrand",
    "Created",
    "Decision",
    "DenyBody",
    "ErrandDetail",
    "ErrandSummary",
    "ErrorBody",
    "Health",
    "Message",
    "MessageSent",
    "StoredEventOut",
    "approval_out",
    "summary",
]

ERRAND_ID = r"^[A-Za-z0-9_-]{1,64}$"
APPROVAL_ID = r"^[A-Za-z0-9_-]{1,64}\.[0-9]{1,9}$"
# at least one character that is not white space -- by every definition in play: the JSON
# Schema (ECMAScript) regex of a client, pydantic's (Unicode) regex, and Python's str.strip()
NOT_BLANK = r"[^\s\u0085\ufeff\u001c-\u001f]"
MAX_TEXT = 50_000  # characters; even fully escaped, a body stays under the 1 MiB cap
MAX_SEQ = 2**53

Channel = Literal["api", "cli", "inbox"]


class ErrorBody(BaseModel):
    detail: str
    errors: list[dict[str, Any]] | None = None


class CreateErrand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT, pattern=NOT_BLANK)
    model: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.-]+:\S",
        description="PROVIDER:MODEL, e.g. scripted:demo; default from errands.toml",
    )
    workspace: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=r"\S",
        description="a directory the errand may work in (default: a new one in ERRANDS_HOME)",
    )
    max_cost_usd: float | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="budget in USD for this errand and the errands it starts (default: "
        "[limits] max_cost_usd in errands.toml); each model call reserves its worst case "
        "first, so the errand stops before passing it",
    )


class Budget(BaseModel):
    """Today's spend against the daily budget (``[budget] daily_usd``)."""

    day: str = Field(description="the local date, YYYY-MM-DD")
    spent_usd: float = Field(description="logged cost of today's model calls")
    reserved_usd: float = Field(description="worst cases held by model calls in flight")
    calls_in_flight: int
    daily_usd: float | None = Field(description="the daily budget; null: none configured")
    left_usd: float | None = Field(description="what new calls may still reserve today")


class Created(BaseModel):
    id: str


class ErrandSummary(BaseModel):
    id: str
    status: ErrandState
    title: str
    model: str
    parent: str | None
    created_at: float
    updated_at: float
    steps: int
    usage: ev.Usage
    cost_usd: float
    result: str | None
    reason: str | None
    pending_approvals: int
    last_seq: int


class ApprovalOut(BaseModel):
    id: str = Field(description="ERRAND.SEQ")
    errand_id: str
    errand_title: str
    seq: int
    call_id: str
    tool: str
    arguments: dict[str, Any]
    args_hash: str = Field(description="canonical hash of the arguments; send it back as seen")
    effect: str
    reason: str = Field(description="why it needs your approval")
    rule: str = Field(description="the policy rule that asked")
    preview: str = Field(description="what will happen: the diff, the request, the message")
    at: float


class StoredEventOut(BaseModel):
    seq: int
    event: ev.Event


class ErrandDetail(ErrandSummary):
    workspace: str
    approvals: list[ApprovalOut]
    events: list[StoredEventOut]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT, pattern=NOT_BLANK)


class MessageSent(BaseModel):
    errand_id: str
    seq: int


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class ApproveBody(BaseModel):
    # always_pattern only with always: true (said in the schema too, for clients)
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {
                "required": ["always_pattern"],
                "properties": {"always_pattern": {"type": "object"}},
            },
            "then": {"required": ["always"], "properties": {"always": {"const": True}}},
        },
    )

    edited_arguments: dict[str, Any] | None = Field(
        default=None, description="approve these arguments instead (validated like the tool's)"
    )
    always: bool = Field(
        default=False, description="also allow later calls like this one, for this errand"
    )
    always_pattern: dict[str, str] | None = Field(
        default=None, description="with always: argument name -> glob the later calls must match"
    )
    args_hash: str | None = Field(
        default=None,
        max_length=128,
        description="the args_hash you were shown; refused (409) if the request changed",
    )


class DenyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2_000, pattern=NOT_BLANK)


class Decision(BaseModel):
    approval_id: str
    errand_id: str
    decision: Literal["approved", "denied"]
    args_hash: str | None = None


class Health(BaseModel):
    status: Literal["ok"]
    version: str


SUMMARIES: TypeAdapter[list[ErrandSummary]] = TypeAdapter(list[ErrandSummary])
APPROVALS: TypeAdapter[list[ApprovalOut]] = TypeAdapter(list[ApprovalOut])


def summary(view: ErrandView) -> ErrandSummary:
    return ErrandSummary(
        id=view.id,
        status=view.state,
        title=view.title,
        model=view.model,
        parent=view.parent,
        created_at=view.created_at,
        updated_at=view.updated_at,
        steps=view.steps,
        usage=view.usage,
        cost_usd=view.usage.cost_usd,
        result=view.result,
        reason=view.reason or None,
        pending_approvals=len(view.pending),
        last_seq=view.last_seq,
    )


def approval_out(p: PendingApproval, title: str) -> ApprovalOut:
    return ApprovalOut(
        id=p.id,
        errand_id=p.errand_id,
        errand_title=title,
        seq=p.seq,
        call_id=p.call_id,
        tool=p.tool,
        arguments=p.arguments,
        args_hash=p.args_hash,
        effect=p.effect,
        reason=p.reason,
        rule=p.rule,
        preview=p.preview,
        at=p.at,
    )
