"""Durable approvals: decide a pending action, exactly once, bound to its arguments.

An ``ask`` from the policy is logged as an ``approval_requested`` event; the errand
waits as rows in the store (no task, no timeout). A decision is one more event,
appended under a guard that runs *inside the store's transaction*, so the checks and
the write are atomic even with several processes deciding at once:

- the approval must still be pending (a replayed or second decision is refused);
- the errand must not be cancelled or finished;
- the arguments the person saw must be the ones bound to the request (their
  canonical hash); edited arguments are re-validated against the tool's schema and
  preconditions, and the grant is bound to the hash of the edited arguments.

The loop then runs the approved call from the log -- once, with its intent (the
outbox record) durable before it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from errands.core import events as ev
from errands.core.canonical import canonical_hash
from errands.core.faults import switch
from errands.core.states import TERMINAL, ErrandState, ErrandView, PendingApproval
from errands.store.base import Store, StoreError
from errands.tools.registry import Registry, ToolContext, ToolError

__all__ = ["ApprovalRefused", "EditRefused", "approve", "deny", "parse_approval_id"]


class ApprovalRefused(StoreError):
    """The decision cannot be recorded; the message says why. Nothing was written."""


class EditRefused(ApprovalRefused):
    """The edited arguments fail the tool's schema or preconditions (a bad request, not
    a conflict): nothing was written."""


def parse_approval_id(approval_id: str) -> tuple[str, int]:
    errand_id, dot, seq = approval_id.strip().rpartition(".")
    if not dot or not errand_id or not seq.isdigit():
        raise ApprovalRefused(
            f"bad approval id {approval_id!r}: it looks like ERRAND.SEQ (see errands approvals)"
        )
    return errand_id, int(seq)


def _pending_guard(seq: int, expected_hash: str | None) -> Any:
    def guard(view: ErrandView) -> None:
        if view.cancel_requested or view.state is ErrandState.cancelled:
            raise ApprovalRefused(f"errand {view.id} was cancelled; its approvals are void")
        if view.state in TERMINAL:
            raise ApprovalRefused(f"errand {view.id} is {view.state.value}")
        pending = view.pending.get(seq)
        if pending is None and not switch("no_replay_guard"):
            raise ApprovalRefused(
                f"approval {view.id}.{seq} is not pending: it was decided already, or never asked"
            )
        if (
            pending is not None
            and expected_hash is not None
            and pending.args_hash != expected_hash
            and not switch("no_arg_binding")
        ):
            raise ApprovalRefused(
                f"approval {view.id}.{seq} is for different arguments than the ones you saw; "
                "look at it again (errands approvals)"
            )

    return guard


async def _pending(store: Store, errand_id: str, seq: int) -> tuple[ErrandView, PendingApproval]:
    view = await store.view(errand_id)
    pending = view.pending.get(seq)
    if pending is None and switch("no_replay_guard"):  # negative control only
        for stored in await store.read(errand_id, after=seq - 1):
            e = stored.event
            if stored.seq == seq and isinstance(e, ev.ApprovalRequested):
                pending = PendingApproval.of(errand_id, seq, e)
            break
    if pending is None:
        if view.cancel_requested:
            raise ApprovalRefused(f"errand {errand_id} was cancelled; its approvals are void")
        raise ApprovalRefused(
            f"approval {errand_id}.{seq} is not pending: it was decided already, or never asked"
        )
    return view, pending


async def approve(
    store: Store,
    registry: Registry,
    approval_id: str,
    *,
    by: str,
    channel: str,
    edited_arguments: dict[str, Any] | None = None,
    always: bool = False,
    always_pattern: dict[str, str] | None = None,
    seen_hash: str | None = None,
) -> ev.ApprovalGranted:
    """Grant a pending approval; returns the logged grant.

    *seen_hash* is the canonical hash of the arguments the person was shown; when
    given, the grant is refused if the request is bound to anything else.
    """
    errand_id, seq = parse_approval_id(approval_id)
    view, pending = await _pending(store, errand_id, seq)
    args = pending.arguments
    if edited_arguments is not None:
        args = _validate_edit(registry, view, pending, edited_arguments)
    pattern = None
    if always:
        pattern = always_pattern if always_pattern is not None else _exact_pattern(args)
    grant = ev.ApprovalGranted(
        request_seq=seq,
        args_hash=canonical_hash(args),
        edited_arguments=args if edited_arguments is not None else None,
        always=always,
        always_pattern=pattern,
        by=by,
        channel=channel,
    )
    await store.append(errand_id, [grant], guard=_pending_guard(seq, seen_hash))
    return grant


async def deny(
    store: Store, approval_id: str, *, reason: str, by: str, channel: str
) -> ev.ApprovalDenied:
    errand_id, seq = parse_approval_id(approval_id)
    if not reason.strip():
        raise ApprovalRefused("say why you deny it: the reason goes back to the model")
    await _pending(store, errand_id, seq)
    denial = ev.ApprovalDenied(request_seq=seq, reason=reason, by=by, channel=channel)
    await store.append(errand_id, [denial], guard=_pending_guard(seq, None))
    return denial


def _validate_edit(
    registry: Registry, view: ErrandView, pending: PendingApproval, edited: dict[str, Any]
) -> dict[str, Any]:
    try:
        tool = registry.get(pending.tool)
        args = tool.validate(edited)
        tool.check_preconditions(
            args,
            ToolContext(
                errand_id=pending.errand_id,
                seq=pending.seq,
                idempotency_key="",
                workspace=Path(view.workspace),
            ),
        )
    except ToolError as exc:
        raise EditRefused(f"the edited arguments are not valid: {exc}") from None
    return args


def _exact_pattern(args: dict[str, Any]) -> dict[str, str]:
    """'Arguments like these' by default means: these same values (globs escaped)."""
    out = {}
    for name, value in args.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out[name] = "".join(f"[{c}]" if c in "*?[" else c for c in text)
    return out
