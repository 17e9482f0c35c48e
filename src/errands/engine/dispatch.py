"""Tool dispatch: route a call through validation and the policy, then run it.

:meth:`Dispatcher.route` turns a model's tool call into the event that decides its
fate -- a :class:`~errands.core.events.ToolIntent` (allowed: it will run), an
:class:`~errands.core.events.ApprovalRequested` (a person must say yes) or a
:class:`~errands.core.events.ToolResult` (refused: bad arguments, unknown tool, denied).
:meth:`Dispatcher.execute` runs a logged intent and returns its result event. Neither
raises for anything the model sent or the tool did: routing that fails unexpectedly
(a tool's validator or the policy choking on an argument) refuses the call -- it fails
closed -- and the model reads why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from errands.config import Settings
from errands.core import events as ev
from errands.core.canonical import canonical_hash
from errands.core.faults import fault
from errands.core.labels import BOTTOM, Confidentiality, Integrity, Label, Provenance
from errands.core.plan import EXTRACT
from errands.core.progress import CallState, Progress
from errands.engine.replies import REFUSED_PREFIX
from errands.policy.hook import Decision, PolicyCall, PolicyHook, Verdict
from errands.policy.preview import preview_of
from errands.tools.tool import AskModel, Tool, ToolContext, ToolError
from errands.tools.toolset import ToolList, Toolset

__all__ = ["MAX_RESULT_CHARS", "Dispatcher", "OutputListener", "ShowsOutput", "idempotency_key"]

MAX_RESULT_CHARS = 200_000
SYSTEM = Provenance(kind="system", name="errands")

# (errand id, the call's intent seq, stream, text): a tool's output while it runs
OutputListener = Callable[[str, int, str, str], None]


@runtime_checkable
class ShowsOutput(Protocol):
    """A text listener that also shows tools' output live (the server's hub)."""

    def output(self, errand_id: str, seq: int, stream: str, text: str, /) -> None: ...


@lru_cache(maxsize=16_384)  # more than the errands one process runs at once
def _workspace(path: str) -> Path:
    """The workspace as a Path, made once per workspace (perf: ``Path()`` parses its
    argument every time, two of them per step; a Path is immutable, so sharing is safe)."""
    return Path(path)


def idempotency_key(errand_id: str, request_seq: int, index: int) -> str:
    """Stable across re-runs: the errand, the model request that asked, the call's place."""
    return f"{errand_id}.{request_seq}.{index}"


def _error_result(
    call: ev.ToolCall, kind: str, text: str, integrity: Integrity = Integrity.trusted
) -> ev.ToolResult:
    """A call refused before it ran. *integrity* untrusted: the text may quote untrusted
    values (plan mode: a value a handle stood for), so the model gets a handle, not it."""
    return ev.ToolResult(
        call_id=call.call_id,
        tool=call.name,
        ok=False,
        error_kind=kind,
        content=ev.Content(
            text=text,
            provenance=SYSTEM,
            integrity=integrity,
            confidentiality=Confidentiality.private,
        ),
    )


class Dispatcher:
    def __init__(self, toolset: Toolset, policy: PolicyHook, settings: Settings) -> None:
        self.toolset = toolset
        self.policy = policy
        self.settings = settings
        self.now: Callable[[], float] = time.time  # wall time, for wait's timer (the loop's)
        # a model call outside the conversation, for a tool that needs one (plan mode's
        # extract): the loop's, bounded and with its retries
        self.ask_model: AskModel | None = None
        # where a tool shows its output while it runs (the server's hub): the loop's
        self.on_output: OutputListener | None = None
        # errand -> (what its listing was made for, the listing): see tools()
        self._listed: dict[str, tuple[tuple[Any, ...], ToolList]] = {}

    def tools(self, p: Progress) -> ToolList:
        """The errand's tools for this step: listed through the toolset stack once, then
        the same listing for the request, the routing and the running of its calls
        (perf: the stack is several layers deep, and a step asked it four times).

        A listing depends on the toolsets and on the view's fields that pick tools: the
        errand's model, mode, parent and allow-list (fixed at creation) and its tool
        searches (each ``search_tools`` call adds to what it is offered) -- a change of
        any of these lists it again at once. The toolsets' own changes (an MCP server
        that lists other tools) are seen from the next listing on: the loop drops the
        errand's listing (:meth:`forget`) after every tool run, wake-up and catch-up,
        and at each run's start and end -- the points where time passes or someone
        else wrote. (An MCP call checks its tool's approval again when it runs.)"""
        view = p.view
        key = (view.id, view.model, view.mode, view.parent, view.tools, len(view.tool_searches))
        found = self._listed.get(view.id)
        if found is not None and found[0] == key:
            return found[1]
        listing = self.toolset.tools(view)
        self._listed[view.id] = (key, listing)
        return listing

    def forget(self, errand_id: str) -> None:
        """List the errand's tools afresh next time (see :meth:`tools`)."""
        self._listed.pop(errand_id, None)

    def route(
        self, p: Progress, call: ev.ToolCall, index: int, request_seq: int
    ) -> ev.ToolIntent | ev.ApprovalRequested | ev.ToolResult | ev.Sleeping:
        """Validate the call and ask the policy; return the event that records the outcome."""
        try:
            return self._route(p, call, index, request_seq)
        except Exception as exc:  # fail closed: a call nothing could judge does not run
            return _error_result(
                call,
                "bad_arguments",
                f"refused: errands could not check this call's arguments "
                f"({type(exc).__name__}: {str(exc)[:200]}); send them again in a plainer form",
            )

    def _route(
        self, p: Progress, call: ev.ToolCall, index: int, request_seq: int
    ) -> ev.ToolIntent | ev.ApprovalRequested | ev.ToolResult | ev.Sleeping:
        try:
            tool = self.tools(p).get(call.name)
        except ToolError as exc:
            return _error_result(call, exc.kind, str(exc))
        if call.raw_arguments is not None:
            raw = call.raw_arguments
            why = (
                f"were refused: {raw.removeprefix(REFUSED_PREFIX)}"
                if raw.startswith(REFUSED_PREFIX)
                else f"were not a JSON object: {raw[:300]!r}"
            )
            return _error_result(call, "bad_arguments", f"the arguments for {call.name} {why}")
        try:
            arguments, context = p.resolved(call.arguments)
        except KeyError as exc:
            return _error_result(
                call, "bad_arguments", f"{exc.args[0]} stands for nothing in this errand"
            )
        quoted = (  # what a refusal may quote (plan mode: the values handles stood for)
            Integrity.untrusted
            if p.plan and context.integrity is Integrity.untrusted
            else Integrity.trusted
        )
        try:
            args = tool.validate(arguments)
        except ToolError as exc:
            return _error_result(call, exc.kind, str(exc), quoted)
        effect = tool.effect(args)
        verdict = self.policy.check(
            PolicyCall(
                errand_id=p.errand_id,
                tool=call.name,
                arguments=args,
                effect=effect,
                workspace=_workspace(p.view.workspace),
                context=context,
                always_allowed=tuple(p.always_allowed),
                roles=tool.arg_roles,
                pieces=p.pieces,
            )
        )
        if verdict.decision is Decision.deny:
            return _error_result(
                call,
                "denied",
                f"denied by policy rule {verdict.rule}: {verdict.reason or 'not allowed'}",
                quoted,
            )
        if verdict.decision is Decision.ask:
            return ev.ApprovalRequested(
                call_id=call.call_id,
                tool=call.name,
                arguments=args,
                args_hash=canonical_hash(args),
                effect=effect,
                reason=verdict.reason or f"{effect.value} actions need your approval",
                rule=verdict.rule,
                preview=preview_of(tool, args, _workspace(p.view.workspace)),
            )
        if tool.pauses is not None:  # wait: the errand sleeps (a timer, not a run)
            try:
                wake_at = tool.pauses(args, self.now())
            except ToolError as exc:
                return _error_result(call, exc.kind, str(exc))
            reason = str(args.get("reason") or "")
            return ev.Sleeping(call_id=call.call_id, tool=call.name, wake_at=wake_at, reason=reason)
        return self.intent(p.errand_id, tool, call, index, request_seq, args, effect)

    def woken(self, call: CallState, by_message: bool) -> ev.ToolResult:
        """The result of a wait call: the timer fired, or a message came first."""
        assert call.wake_at is not None
        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(call.wake_at))
        text = (
            f"woken early: a message came before the timer (set for {when}); it follows"
            if by_message
            else f"woken: the timer set for {when} fired"
        )
        return ev.ToolResult(
            call_id=call.call.call_id,
            tool=call.call.name,
            ok=True,
            content=ev.Content(
                text=text, provenance=SYSTEM, confidentiality=Confidentiality.private
            ),
        )

    def intent(
        self,
        errand_id: str,
        tool: Tool,
        call: ev.ToolCall,
        index: int,
        request_seq: int,
        args: dict[str, Any],
        effect: ev.EffectClass,
        approval_seq: int | None = None,
    ) -> ev.ToolIntent:
        return ev.ToolIntent(
            call_id=call.call_id,
            tool=call.name,
            arguments=args,
            effect=effect,
            idempotent=tool.safe_to_retry,
            idempotency_key=idempotency_key(errand_id, request_seq, index),
            approval_seq=approval_seq,
        )

    def decided(self, p: Progress, call: CallState) -> ev.ToolIntent | ev.ToolResult:
        """The event for a call a person has decided: its intent, or the denial."""
        if call.decision != "granted":
            return _error_result(
                call.call, "denied", f"the person denied this call: {call.deny_reason}"
            )
        approved = call.approved_args or {}
        try:
            tool = self.tools(p).get(call.call.name)
            args = tool.validate(approved)
        except ToolError as exc:
            return _error_result(call.call, exc.kind, str(exc))
        # bound as logged: validation may respell them (a canonical URL), not change them
        if not self.bound(call, approved):
            return _error_result(
                call.call,
                "denied",
                "refused: these arguments are not the ones that were approved; ask again",
            )
        context = p.label.joined(p.used(call.call.arguments))
        verdict = self.permitted(p, tool, call.call.name, args, context)
        if verdict.decision is Decision.deny:
            return _error_result(
                call.call,
                "denied",
                f"denied by policy rule {verdict.rule}: {verdict.reason or 'not allowed'} "
                "(a person's yes does not override a deny)",
            )
        return self.intent(
            p.errand_id,
            tool,
            call.call,
            call.index,
            call.request_seq,
            args,
            tool.effect(args),
            approval_seq=call.approval_seq,
        )

    def permitted(
        self, p: Progress, tool: Tool, name: str, args: dict[str, Any], context: Label
    ) -> Verdict:
        """The policy's decision, now, on granted *args* (edited or not): a deny wins over
        the person's yes -- an edit cannot take a call where a deny rule covers, and a
        policy changed since the request applies. An ``ask`` runs: a person approved it."""
        return self.policy.check(
            PolicyCall(
                errand_id=p.errand_id,
                tool=name,
                arguments=args,
                effect=tool.effect(args),
                workspace=_workspace(p.view.workspace),
                context=context,
                always_allowed=tuple(p.always_allowed),
                roles=tool.arg_roles,
                pieces=p.pieces,
            )
        )

    def bound(self, call: CallState, args: dict[str, Any]) -> bool:
        """Are *args* the arguments the grant was bound to (their canonical hash)?"""
        return canonical_hash(args) == call.approved_hash

    async def execute(
        self, p: Progress, seq: int, intent: ev.ToolIntent
    ) -> tuple[ev.ModelUsed | ev.ToolResult, ...]:
        """Run a logged intent: its result (after what a model call it made cost).
        Anything the tool does wrong becomes an error result."""
        state = p.calls.get(intent.call_id)
        # plan mode: what a call made of untrusted values returns is untrusted too
        used = BOTTOM if state is None else p.used(state.call.arguments)
        try:
            tool = self.tools(p).get(intent.tool)
            ctx = ToolContext(
                errand_id=p.errand_id,
                seq=seq,
                label=p.label.joined(used),  # (what remember keeps: docs/memory.md)
                idempotency_key=intent.idempotency_key,
                workspace=_workspace(p.view.workspace),
                settings=self.settings,
                ask_model=self.ask_model,
                model=p.view.model,
                on_output=None
                if self.on_output is None
                else partial(self.on_output, p.errand_id, seq),
            )
            output = await self.toolset.call(tool, intent.arguments, ctx)
        except Exception as exc:  # a tool's error, or its bug: not a crash of the errand
            fault("after_effect")
            known = isinstance(exc, ToolError)
            failed = ev.ToolResult(
                call_id=intent.call_id,
                tool=intent.tool,
                intent_seq=seq,
                ok=False,
                error_kind=exc.kind if isinstance(exc, ToolError) else "tool_error",
                content=ev.Content(
                    text=str(exc)
                    if known
                    else f"{intent.tool} failed: {type(exc).__name__}: {exc}",
                    provenance=Provenance(kind="tool", name=intent.tool),
                    integrity=Integrity.untrusted,
                ),
            )
            return (failed,)
        fault("after_effect")
        text = output.text
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + f"\n[truncated: {len(output.text)} characters in all]"
        label = Label.of(output.integrity, output.confidentiality)
        source = output.source
        if intent.tool == EXTRACT and source is None and state is not None:  # (plan mode)
            source = " and ".join(v.where for v in p.sources(state.call.arguments))[:500]
        result = ev.ToolResult(
            call_id=intent.call_id,
            tool=intent.tool,
            intent_seq=seq,
            ok=True,
            content=ev.Content.labelled(
                text,
                Provenance(kind="tool", name=intent.tool, source=source),
                label if used is BOTTOM else label.joined(used),
            ),
        )
        if output.usage is None:
            return (result,)
        model = output.model or p.view.model
        return ev.ModelUsed(call_id=intent.call_id, model=model, usage=output.usage), result

    def stopped(self, seq: int, intent: ev.ToolIntent, kind: str, why: str) -> ev.ToolResult:
        """The result of a call that was stopped while it ran (a cancel, a deadline)."""
        return ev.ToolResult(
            call_id=intent.call_id,
            tool=intent.tool,
            intent_seq=seq,
            ok=False,
            error_kind=kind,
            content=ev.Content(
                text=f"{intent.tool} was stopped: {why}; it may have partly taken effect",
                provenance=SYSTEM,
                confidentiality=Confidentiality.private,
            ),
        )

    def in_doubt(self, call: CallState) -> ev.ToolResult:
        assert call.intent is not None
        return _error_result(
            call.call,
            "in_doubt",
            f"errands stopped while {call.call.name} was running; it may or may not have taken "
            "effect, and it is not safe to run twice. The person has been asked to check.",
        )
