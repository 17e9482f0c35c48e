"""What a person does to errands -- start, tell, cancel -- shared by the CLI and the server.

Each operation validates everything first and then writes one durable append; on
bad input it raises a :class:`UserError` (or a subclass from the layer that found
the problem) and writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from errands.config import Settings
from errands.core import events as ev
from errands.core.ids import new_errand_id
from errands.core.labels import Confidentiality, Integrity, Provenance
from errands.core.plan import PLAN
from errands.core.progress import Progress
from errands.core.states import TERMINAL, ErrandState, ErrandView
from errands.engine.delegate import cancel_children, settle_worktrees, title_for
from errands.engine.limits import exceeded
from errands.errors import StoreError, UserError
from errands.models.spec import check_spec
from errands.store import Store
from errands.store.resume import resume
from errands.tools.workspace import make_workspace

__all__ = [
    "UserError",
    "cancel_errand",
    "continue_errand",
    "create_errand",
    "retry_model",
    "tell_errand",
    "title_for",
]


async def create_errand(
    store: Store,
    settings: Settings,
    text: str,
    *,
    model: str | None = None,
    workspace: str | Path | None = None,
    limits: ev.Limits | None = None,
    max_cost_usd: float | None = None,
    by: str = "local",
    channel: str = "cli",
    parent: str | None = None,
    errand_id: str | None = None,
    mode: str | None = None,
) -> str:
    """Validate, make the workspace, log ``errand_created``; return the id.

    *errand_id* lets a caller choose (and reserve) the id first -- the server does,
    to make creation idempotent. *max_cost_usd*, when given, is the errand's budget in
    place of the one in *limits* (default: the config's ``[limits]``).
    """
    if not text.strip():
        raise UserError("an errand needs some text: say what you want done")
    if mode not in (None, "default", PLAN):
        raise UserError(f"unknown mode {mode!r}: choose default or plan")
    spec = (model or settings.default_model).strip()
    check_spec(spec, settings)
    errand_id = errand_id or new_errand_id()
    path = make_workspace(settings, errand_id, workspace)
    created = ev.ErrandCreated(
        title=title_for(text),
        content=ev.Content(
            text=text,
            provenance=Provenance(kind="user", name=by),
            integrity=Integrity.trusted,
            confidentiality=Confidentiality.private,
        ),
        model=spec,
        timezone=settings.timezone,
        workspace=str(path),
        limits=_limits(limits or settings.limits, max_cost_usd),
        parent=parent,
        by=by,
        channel=channel,
        mode=PLAN if mode == PLAN else None,
    )
    await store.create(errand_id, created)
    return errand_id


async def tell_errand(
    store: Store, errand_id: str, text: str, *, by: str = "local", channel: str = "cli"
) -> int:
    """A follow-up from the person: reopens a finished errand or joins a running one.
    An errand that stopped at one of its limits cannot go on with a message alone: that
    is refused, saying how to give it more room."""
    if not text.strip():
        raise UserError("the message is empty")
    view = await store.view(errand_id)  # (the log is read only for an errand that stopped)
    _not_compacted(view)
    if view.state is ErrandState.failed or view.state is ErrandState.needs_attention:
        progress = await _progress(store, errand_id)
        limit = exceeded(view, progress.limits, max(0.0, time.time() - view.created_at))
        if limit is not None:  # (a conflict with the errand as it is now: 409)
            way_out = (
                f"give it more room first: errands resume {errand_id} --more-steps 10"
                if limit.startswith("step limit")
                else "start a new errand for what is left (only the step limit can be raised)"
            )
            raise StoreError(
                f"errand {errand_id} stopped: {limit}; a message cannot continue it -- {way_out}"
            )
    message = ev.UserMessage(
        content=ev.Content(text=text, provenance=Provenance(kind="user", name=by)),
        by=by,
        channel=channel,
    )
    (seq,) = await store.append(errand_id, [message], guard=_not_compacted)
    return seq


def _not_compacted(view: ErrandView) -> None:
    """A compacted errand (retention kept only its result, cost and a summary) cannot go
    on: the conversation it would continue is gone."""
    if view.compacted:
        raise StoreError(
            f"errand {view.id} was compacted by retention: only its result, cost and a "
            "summary are left, so it cannot go on -- start a new errand"
        )


def _cancellable(view: ErrandView) -> None:
    if view.state in TERMINAL:
        raise StoreError(f"errand {view.id} is already {view.state.value}")


async def cancel_errand(
    store: Store, errand_id: str, *, reason: str = "", by: str = "local", channel: str = "cli"
) -> None:
    event = ev.CancelRequested(reason=reason or f"cancelled by {by}", by=by, channel=channel)
    await store.append(errand_id, [event], guard=_cancellable)
    # its sub-errands end with it
    await cancel_children(store, errand_id, f"its parent {errand_id} was cancelled", by, channel)
    await settle_worktrees(store, await store.view(errand_id))  # (git worktrees)


async def _progress(store: Store, errand_id: str) -> Progress:
    return await resume(store, errand_id, Progress)  # (from its fold snapshot)


def _unchanged_since(seen: int) -> Callable[[ErrandView], None]:
    def unchanged(view: ErrandView) -> None:
        if view.last_seq != seen:
            raise StoreError(f"errand {view.id} changed meanwhile; try again")

    return unchanged


async def continue_errand(
    store: Store, errand_id: str, more_steps: int, *, by: str = "local", channel: str = "cli"
) -> None:
    """Give an errand *more_steps* more model turns; one that stopped at a limit goes on."""
    if more_steps < 1:
        raise UserError("--more-steps must be at least 1")
    progress = await _progress(store, errand_id)
    _not_compacted(progress.view)
    state = progress.view.state
    if state is ErrandState.done or state is ErrandState.cancelled:
        raise UserError(
            f"errand {errand_id} is {state.value}: nothing to continue "
            f'(errands tell {errand_id} "..." starts it again with a new message)'
        )
    raised = ev.LimitsRaised(more_steps=more_steps, by=by, channel=channel)
    await store.append(errand_id, [raised], guard=_unchanged_since(progress.last_seq))


async def retry_model(store: Store, errand_id: str) -> bool:
    """Reopen an errand that failed because its model could not answer (a provider
    outage, a timeout): its unanswered request is asked again. False -- and nothing
    written -- for any other errand."""
    progress = await _progress(store, errand_id)
    if progress.view.compacted:
        return False
    if progress.view.state is not ErrandState.failed or not progress.failed_by_model:
        return False
    reason = "resumed: asking the model again"
    await store.append(
        errand_id,
        [ev.StateChanged(state="running", reason=reason)],
        guard=_unchanged_since(progress.last_seq),
    )
    return True


def _limits(limits: ev.Limits, max_cost_usd: float | None) -> ev.Limits:
    if max_cost_usd is None:
        return limits
    return limits.model_copy(update={"max_cost_usd": max_cost_usd})
