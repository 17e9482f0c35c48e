"""Durable approvals: decide a pending action, exactly once, bound to its arguments.

An ``ask`` from the policy is logged as an ``approval_requested`` event; the errand
waits as rows in the store (no task, no timeout). A decision is one more event,
appended under a guard that runs *inside the store's transaction*, so the checks and
the write are atomic even with several processes deciding at once:

- the approval must still be pending (a replayed or second decision is refused);
- the errand must not be cancelled or finished;
- the arguments the person saw must be the ones bound to the request (their
  canonical hash); edited arguments are re-validated against the tool's schema and
  preconditions, and the grant is bound to the hash of the edited arguments;
- the arguments granted are decided by the policy again (:meth:`Approvals.within_policy`):
  an edit the policy denies -- a URL a deny rule covers, a path outside the workspace --
  is refused with the rule that denies it (deny wins; an ``ask`` is fine, a person is
  approving it). The loop decides them once more before they run
  (:meth:`errands.engine.dispatch.Dispatcher.permitted`), with the policy then in force.

The loop then runs the approved call from the log -- once, with its intent (the
outbox record) durable before it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from errands.core import events as ev
from errands.core.canonical import canonical_hash
from errands.core.progress import Progress
from errands.core.states import TERMINAL, ErrandState, ErrandView, PendingApproval
from errands.errors import ApprovalRefused, EditRefused
from errands.policy.hook import Decision, PolicyCall, PolicyHook, Verdict
from errands.policy.rules import Policy, parse_policy
from errands.policy.standing import add_standing_rule, standing_pattern, standing_rule
from errands.policy.stored import StoredPolicy
from errands.store import AppendCheck, Store
from errands.store.resume import resume
from errands.tools.tool import ToolContext, ToolError
from errands.tools.toolset import Toolset

__all__ = ["ApprovalRefused", "Approvals", "EditRefused", "parse_approval_id"]


def parse_approval_id(approval_id: str) -> tuple[str, int]:
    errand_id, dot, seq = approval_id.strip().rpartition(".")
    if not dot or not errand_id or not seq.isdigit():
        raise ApprovalRefused(
            f"bad approval id {approval_id!r}: it looks like ERRAND.SEQ (see errands approvals)"
        )
    return errand_id, int(seq)


class Approvals:
    """Decisions on pending approvals, for every channel (CLI, API, inbox).

    Each guarantee is one named check, used both before the write (to answer early)
    and inside the store's transaction (to be atomic): :meth:`decidable` (not after a
    cancel or the end), :meth:`pending` (the request still waits: no replayed or second
    decision) and :meth:`as_seen` (the arguments the person saw are the ones bound to
    the request); and before the write, :meth:`within_policy` (the policy does not deny
    the arguments granted).

    *policy* is the one the errands run by (the harness passes its own); without one,
    the built-in votes and the effect-class defaults judge (``Policy()``). *home* is
    where ``policy.toml`` is, for standing approvals (:mod:`errands.policy.standing`).
    """

    def __init__(
        self,
        store: Store,
        toolset: Toolset,
        policy: PolicyHook | None = None,
        home: Path | None = None,
    ) -> None:
        self.store = store
        self.toolset = toolset
        self.policy: PolicyHook = policy if policy is not None else Policy()
        self.home = home

    # -- the checks ----------------------------------------------------------------------

    def decidable(self, view: ErrandView) -> None:
        """Refuse a decision on an errand that was cancelled or has finished."""
        if view.cancel_requested or view.state is ErrandState.cancelled:
            raise ApprovalRefused(f"errand {view.id} was cancelled; its approvals are void")
        if view.state in TERMINAL:
            raise ApprovalRefused(f"errand {view.id} is {view.state.value}")

    def pending(self, view: ErrandView, seq: int) -> PendingApproval:
        """The approval *seq* of *view* if it still waits for a decision; else refuse."""
        self.decidable(view)
        pending = view.pending.get(seq)
        if pending is None:
            raise ApprovalRefused(
                f"approval {view.id}.{seq} is not pending: it was decided already, or never asked"
            )
        return pending

    def as_seen(self, pending: PendingApproval, seen_hash: str | None) -> None:
        """Refuse if the person was shown other arguments than the request is bound to."""
        if seen_hash is not None and pending.args_hash != seen_hash:
            raise ApprovalRefused(
                f"approval {pending.id} is for different arguments than the ones you saw; "
                "look at it again (errands approvals)"
            )

    def within_policy(self, pending: PendingApproval, verdict: Verdict | None) -> None:
        """Refuse a grant of arguments the policy denies (deny wins over a person's yes)."""
        if verdict is not None and verdict.decision is Decision.deny:
            raise EditRefused(
                f"the policy denies {pending.tool} with these arguments (rule "
                f"{verdict.rule}: {verdict.reason or 'not allowed'}); nothing was approved"
            )

    async def decision_for(
        self, approval_id: str, arguments: dict[str, Any] | None = None
    ) -> Verdict | None:
        """What the policy decides now for approval *approval_id* granted with *arguments*
        (default: the requested ones) -- for a card to show before a person says yes.
        None when its tool is gone (the grant would then be refused when it runs)."""
        errand_id, seq = parse_approval_id(approval_id)
        view = await self.store.view(errand_id)
        pending = self.pending(view, seq)
        args = pending.arguments
        if arguments is not None:
            args = _validate_edit(self.toolset, view, pending, arguments)
        return await self._judge(view, pending, args)

    async def _judge(
        self, view: ErrandView, pending: PendingApproval, args: dict[str, Any]
    ) -> Verdict | None:
        try:
            tool = self.toolset.tools(view).get(pending.tool)
        except ToolError:
            return None
        # the context's label, the standing approvals (from its fold snapshot)
        progress = await resume(self.store, view.id, Progress)
        return self.policy.check(
            PolicyCall(
                errand_id=view.id,
                tool=pending.tool,
                arguments=args,
                effect=tool.effect(args),
                workspace=Path(view.workspace),
                context=progress.label,
                always_allowed=tuple(progress.always_allowed),
                roles=tool.arg_roles,
                pieces=progress.pieces,
            )
        )

    def _guard(self, seq: int, seen_hash: str | None) -> AppendCheck:
        def guard(view: ErrandView) -> None:  # inside the append's transaction
            self.as_seen(self.pending(view, seq), seen_hash)

        return guard

    # -- the decisions ---------------------------------------------------------------------

    async def approve(
        self,
        approval_id: str,
        *,
        by: str,
        channel: str,
        edited_arguments: dict[str, Any] | None = None,
        always: bool = False,
        always_pattern: dict[str, str] | None = None,
        seen_hash: str | None = None,
        standing: bool = False,
        standing_pattern: dict[str, str] | None = None,
    ) -> ev.ApprovalGranted:
        """Grant a pending approval; returns the logged grant.

        *seen_hash* is the canonical hash of the arguments the person was shown; when
        given, the grant is refused if the request is bound to anything else.
        *standing*: also write a standing rule allowing later calls like this one, in
        every errand (*standing_pattern*, or one derived from the arguments' roles); it
        is written before the grant, so a refused rule grants nothing.
        """
        errand_id, seq = parse_approval_id(approval_id)
        view = await self.store.view(errand_id)
        pending = self.pending(view, seq)
        self.as_seen(pending, seen_hash)
        args = pending.arguments
        if edited_arguments is not None:
            args = _validate_edit(self.toolset, view, pending, edited_arguments)
        self.within_policy(pending, await self._judge(view, pending, args))
        pattern = None
        if always:
            pattern = always_pattern if always_pattern is not None else _exact_pattern(args)
        if standing:
            self.stand(view, pending.tool, args, standing_pattern, by=by, channel=channel)
        grant = ev.ApprovalGranted(
            request_seq=seq,
            args_hash=canonical_hash(args),
            edited_arguments=args if edited_arguments is not None else None,
            always=always,
            always_pattern=pattern,
            by=by,
            channel=channel,
        )
        await self.store.append(errand_id, [grant], guard=self._guard(seq, seen_hash))
        return grant

    def stand(
        self,
        view: ErrandView,
        tool_name: str,
        args: dict[str, Any],
        pattern: dict[str, str] | None,
        *,
        by: str,
        channel: str,
    ) -> str:
        """Write the standing rule for calls like this one; return its name."""
        if self.home is None:
            raise ApprovalRefused("standing approvals need the home's policy.toml")
        home = self.home
        if pattern is None:
            tool = self.toolset.tools(view).get(tool_name)
            pattern = standing_pattern(tool.arg_roles, args)
        path = home / "policy.toml"
        if isinstance(self.policy, StoredPolicy):  # (kept in the store: a new version)
            names: list[str] = []

            def edit(old: str) -> str:
                name, new = standing_rule(old, tool=tool_name, args=pattern, by=by, channel=channel)
                names.append(name)
                return new

            self.policy.change(edit, by=f"{by} via {channel}")
            return names[-1]
        return add_standing_rule(
            home,
            tool=tool_name,
            args=pattern,
            by=by,
            channel=channel,
            validate=lambda text: parse_policy(text, path),
        )

    async def deny(
        self, approval_id: str, *, reason: str, by: str, channel: str
    ) -> ev.ApprovalDenied:
        """Deny a pending approval; *reason* goes back to the model."""
        errand_id, seq = parse_approval_id(approval_id)
        if not reason.strip():
            raise ApprovalRefused("say why you deny it: the reason goes back to the model")
        self.pending(await self.store.view(errand_id), seq)
        denial = ev.ApprovalDenied(request_seq=seq, reason=reason, by=by, channel=channel)
        await self.store.append(errand_id, [denial], guard=self._guard(seq, None))
        return denial


def _validate_edit(
    toolset: Toolset, view: ErrandView, pending: PendingApproval, edited: dict[str, Any]
) -> dict[str, Any]:
    try:
        tool = toolset.tools(view).get(pending.tool)
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
