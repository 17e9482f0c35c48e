"""The API's bodies: every request and response is one of these pydantic models.

An errand and a pending approval have the shapes every surface shares
(:mod:`errands.core.errand`: :class:`ErrandSummary`, :class:`ApprovalOut`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
)
from pydantic_core import PydanticCustomError

from errands.core import events as ev
from errands.core.errand import ApprovalOut, ErrandSummary
from errands.core.schedules import ScheduleSpec
from errands.textlimit import MAX_TEXT, too_long

__all__ = [
    "APPROVAL_ID",
    "ERRAND_ID",
    "MAX_MORE_STEPS",
    "MAX_SEQ",
    "MAX_TEXT",
    "SCHEDULE_NAME",
    "ApprovalOut",
    "ApproveBody",
    "ArchiveBody",
    "Archived",
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
    "ModelSpec",
    "ResumeBody",
    "ScheduleDetail",
    "ScheduleRunOut",
    "ScheduleSummary",
    "StoredEventOut",
]

# an errand's id; a sub-errand's is its parent's and ".SEQ.CALL.K" (docs/subagents.md)
ERRAND_ID = r"^[A-Za-z0-9_-]{1,64}(\.[0-9]{1,9}){0,12}$"
APPROVAL_ID = r"^[A-Za-z0-9_-]{1,64}(\.[0-9]{1,9}){1,13}$"
SCHEDULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # (errands.core.schedules)
# at least one character that is not white space -- by every definition in play: the JSON
# Schema (ECMAScript) regex of a client, pydantic's (Unicode) regex, and Python's str.strip()
NOT_BLANK = r"[^\s\u0085\ufeff\u001c-\u001f]"
# MAX_TEXT (errands.textlimit): characters; even fully escaped, a body stays under the 1 MiB cap
MAX_SEQ = 2**53
PAGE = 200  # events in a page of GET /api/errands/{id}
MAX_PAGE = 1_000
MAX_MORE_STEPS = 10_000

Channel = Literal["api", "cli", "inbox"]


def _within_limit(value: Any) -> Any:
    """Text over the limit, refused with the message every surface gives (naming the
    limit and the length given), before the schema's own maxLength says less."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise PydanticCustomError("string_too_long", too_long(len(value)))
    return value


# an errand's text or a message: not blank, at most MAX_TEXT characters
Text = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TEXT, pattern=NOT_BLANK),
    BeforeValidator(_within_limit),
]


def _no_control(value: Any) -> Any:
    if isinstance(value, str) and CONTROL.search(value):
        raise PydanticCustomError("model_spec", "a model spec holds no control characters")
    return value


CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# a model spec: one line of printable text (what it names is checked when it is used)
ModelSpec = Annotated[
    str,
    Field(min_length=1, max_length=200, json_schema_extra={"pattern": r"^[^\x00-\x1f\x7f]+$"}),
    AfterValidator(_no_control),
]


class ErrorBody(BaseModel):
    detail: str
    errors: list[dict[str, Any]] | None = None


class CreateErrand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text
    # (no pattern here: a spec that cannot be used -- malformed, an unknown provider, a
    # missing key -- is refused by the same check as everywhere, in one plain line)
    model: ModelSpec | None = Field(
        default=None,
        description="PROVIDER:MODEL (or a chain: A,B or chain:NAME), e.g. scripted:demo; "
        "default from errands.toml. Refused (422, nothing created) when it cannot be used: "
        "malformed, an unknown provider, or a provider whose key is missing",
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
    mode: Literal["default", "plan"] = Field(
        default="default",
        description="plan: plan-then-execute -- the model never reads untrusted content; "
        "it handles it by reference and gets typed values from a tool-less extractor",
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


class StoredEventOut(BaseModel):
    seq: int
    event: ev.Event


class ErrandDetail(ErrandSummary):
    workspace: str
    approvals: list[ApprovalOut]
    events: list[StoredEventOut] = Field(
        description="the newest events (200 by default; ?limit=), those before ?before=SEQ, "
        "or every one after ?after=SEQ"
    )
    events_before: int = Field(
        description="how many older events there are (page back with ?before= the first "
        "event's seq)"
    )
    children: list[ErrandSummary] = Field(
        default_factory=list,
        description="the sub-errands it started with delegate, oldest first (docs/subagents.md)",
    )


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text


class MessageSent(BaseModel):
    errand_id: str
    seq: int


class ResumeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    more_steps: int = Field(
        ge=1, le=MAX_MORE_STEPS, description="model turns to add to the errand's step limit"
    )


class ArchiveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    archived: StrictBool = Field(default=True, description="false: back into the inbox's lists")


class Archived(BaseModel):
    errand_id: str
    archived: bool


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
    standing: bool = Field(
        default=False,
        description="also write a standing rule to policy.toml allowing later calls like this "
        "one in every errand (never for a call made after untrusted content was read)",
    )
    standing_pattern: dict[str, str] | None = Field(
        default=None,
        description="with standing: argument name -> glob (default: from the arguments' roles)",
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


class PolicyPreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    edited_arguments: dict[str, Any] | None = Field(
        default=None, description="the arguments to judge (default: the requested ones)"
    )


class PolicyPreview(BaseModel):
    """What the policy decides now for an approval granted with these arguments: what an
    approval card shows before a person says yes (a deny refuses the approval)."""

    approval_id: str
    decision: Literal["allow", "ask", "deny"] | None  # None: its tool is gone
    rule: str | None = None
    reason: str | None = None


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class ScheduleSummary(BaseModel):
    """A schedule or watch as ``GET /api/schedules`` lists it (times: seconds since the
    epoch, UTC)."""

    name: str
    kind: Literal["cron", "every", "at", "watch"]
    when: str = Field(description="when it runs, in words: cron 0 8 * * 1-5 (Europe/Paris)")
    text: str = Field(description="what each run is asked to do")
    state: Literal["active", "paused", "erroring", "done"] = Field(
        description="paused; erroring (its last check or start failed: last_error says why); "
        "done (a once-only schedule that ran); else active"
    )
    paused: bool
    next_at: float | None = Field(description="its next slot (null: it is over)")
    due_at: float | None = Field(description="when it is looked at next (slot + jitter, or retry)")
    model: str
    max_cost_usd: float | None = Field(description="each run's budget")
    daily_usd: float | None = Field(description="the cap on every run's spend per day")
    mode: Literal["default", "plan"] = Field(
        default="default", description="plan: every run in plan mode"
    )
    spent_today_usd: float = Field(description="what its runs spent today (the person's zone)")
    runs: int = Field(description="runs started")
    skipped: int = Field(description="slots skipped (overlap, catch_up)")
    last_run: str | None = Field(description="the errand of the newest run")
    last_run_state: str | None
    last_run_result: str | None = Field(description="its result (at most 500 characters)")
    last_run_cost_usd: float | None
    last_error: str | None = Field(description="why the last check or start failed")
    errors: int = Field(description="failures in a row")
    retry_at: float | None = Field(description="backing off until then")
    note: str | None = Field(
        default=None, description="a watch's new items that wait (its daily budget is spent)"
    )
    # a watch
    url: str | None = None
    select: str | None = None
    json_path: str | None = None
    checks: int | None = Field(default=None, description="a watch: checks made")
    changes: int | None = Field(default=None, description="a watch: checks that found new items")
    last_check_at: float | None = None


class ScheduleRunRow(BaseModel):
    """A slot handled: a run started, or slots skipped (and why)."""

    slot: float
    outcome: str = Field(description="started | skipped")
    errand_id: str | None
    count: int = Field(description="skipped: how many slots; started: how many it stands for")
    reason: str
    at: float
    state: str | None = Field(description="the run's state")
    cost_usd: float | None


class ScheduleDetail(ScheduleSummary):
    """One schedule in full: its definition and its newest runs."""

    spec: ScheduleSpec
    recent: list[ScheduleRunRow] = Field(description="the newest slots handled, newest first")


class ScheduleRunOut(BaseModel):
    """What ``run now`` did: a run started, or (a watch) what its check found."""

    schedule: str
    errand_id: str | None = Field(description="the run started (null: no errand was started)")
    outcome: Literal["started", "baseline", "unchanged", "skipped", "failed"] = Field(
        description="started; baseline (a watch's first check recorded what is there); "
        "unchanged (a watch found nothing new); skipped (a watch found new items but started "
        "no run: its daily budget is spent); failed (its check failed: detail says why)"
    )
    detail: str = Field(description="what happened, in one line")


SUMMARIES: TypeAdapter[list[ErrandSummary]] = TypeAdapter(list[ErrandSummary])
APPROVALS: TypeAdapter[list[ApprovalOut]] = TypeAdapter(list[ApprovalOut])
APPROVAL: TypeAdapter[ApprovalOut] = TypeAdapter(ApprovalOut)
