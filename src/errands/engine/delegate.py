"""Sub-errands: what the loop does for ``delegate``, ``wait_for`` and ``read_errand_result``
(docs/subagents.md).

Routing turned the call into a ``sleeping`` event due at once; :meth:`Delegation.joined`
carries it out from the store each time the errand wakes:

- ``delegate`` starts one child per task, with the id :meth:`Delegation.child_id` derives
  from the parent's id, the model request's sequence number and the call's and the
  task's places. Creating an id that exists is a no-op, so a crash between two children
  and the resume that follows start each child exactly once. A child sees only its
  task, labelled as the parent's call was (never more trusted), works in a folder of the
  parent's workspace, with at most the parent's tools, limits and budget (the tree's
  budget is enforced in the store), under the same policy.
- Until every child has ended the parent sleeps again (no task; a child's end sets the
  parent's timer due and wakes it: :meth:`errands.store.base.BaseStore._stage`), then
  the call's result gives each child's state, cost and answer, cut to
  ``[subagents] result_chars``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from errands.config import Settings
from errands.core import events as ev
from errands.core.faults import fault
from errands.core.labels import Confidentiality, Integrity, Label, Provenance
from errands.core.progress import CallState, Progress
from errands.core.states import TERMINAL, ErrandState, ErrandView
from errands.engine import worktrees
from errands.errors import ErrandExists, ErrandsError, NotFound, StoreError
from errands.models.spec import check_spec
from errands.store import Store, StoredEvent
from errands.tools.toolset import Toolset
from errands.tools.workspace import make_workspace

__all__ = [
    "PERSON",
    "STOPPED",
    "WAITING",
    "Delegation",
    "cancel_children",
    "children_in",
    "settle_worktrees",
    "sweep_worktrees",
    "title_for",
]

log = logging.getLogger(__name__)

_TOOL = Provenance(kind="tool", name="delegate")
WAITING = "waiting for its sub-errands"  # the reason a parent sleeps with
_OPEN = [s for s in ErrandState if s not in TERMINAL]
# a child in one of these is reported to its parent: it ended, or it needs a person
STOPPED = TERMINAL | {ErrandState.needs_attention}
# a child in one of these waits for a person (delegate's wake_on_person reports it)
PERSON = frozenset({ErrandState.waiting_approval, ErrandState.needs_attention})


def title_for(text: str, limit: int = 72) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def children_in(errand_id: str, log: Iterable[StoredEvent]) -> list[str]:
    """The ids of the children the errand's delegate calls asked for (whether or not
    they were all made: a refused call made none), from its log."""
    out: list[str] = []
    for stored in log:
        event = stored.event
        if isinstance(event, ev.ModelResponded):
            for i, call in enumerate(event.tool_calls):
                tasks = call.arguments.get("tasks") if call.name == "delegate" else None
                if isinstance(tasks, list):
                    out.extend(
                        Delegation.child_id(errand_id, event.request_seq, i, k)
                        for k in range(len(tasks))
                    )
    return out


class _Refused(Exception):
    """A delegate call that cannot be carried out: the model reads why; nothing made."""


class Delegation:
    """The loop's part for sub-errands. A variant (a test's control) is a subclass."""

    # merges the children's branches into the parent's (a test's control swaps it)
    merge_branches = staticmethod(worktrees.merge)

    def __init__(self, store: Store, settings: Settings, toolset: Toolset) -> None:
        self.store = store
        self.settings = settings
        self.toolset = toolset

    @staticmethod
    def child_id(parent: str, request_seq: int, index: int, k: int) -> str:
        """The id of the *k*-th child of the call at *index* of the reply to request
        *request_seq*: the same on every resume, so a child is never started twice."""
        return f"{parent}.{request_seq}.{index}.{k}"

    def ids_for(self, p: Progress, call: CallState, n: int) -> list[str]:
        return [self.child_id(p.errand_id, call.request_seq, call.index, k) for k in range(n)]

    async def joined(
        self, p: Progress, call: CallState, by_message: bool, now: float
    ) -> ev.ToolResult | float:
        """The call's result, or when to wake next (its children still run)."""
        args = call.call.arguments
        try:
            if call.call.name == "read_errand_result":
                view = await self._child(p, str(args.get("id")))
                return self._result(call, view.result or f"(no answer: {view.state.value})")
            if call.call.name == "merge_children":
                return await self.merge(p, call, [str(i) for i in args["ids"]])
            if call.call.name == "delegate":
                ids = self.ids_for(p, call, len(args["tasks"]))
                found = await self._found(ids)
                if None in found:  # the first pass, or a crash cut it short
                    await self.spawn(
                        p, call, args["tasks"], ids, fresh=found.count(None) == len(ids)
                    )
                if not args.get("wait", True):
                    text = "started, running now; collect them with wait_for: " + ", ".join(ids)
                    return self._result(call, text)
                views = [await self.store.view(i) for i in ids]
            else:
                views = [await self._child(p, str(i)) for i in args["ids"]]
        except _Refused as exc:
            return self._result(call, str(exc), ok=False)
        if by_message or all(v.state in STOPPED for v in views):
            return self.report(call, views, by_message)
        if args.get("wake_on_person") and any(v.state in PERSON for v in views):
            return self.report(call, views, by_message)  # it asked to know at once
        return now + self.settings.subagents.recheck_seconds

    async def orphaned(self, p: Progress) -> ev.CancelRequested | None:
        """A child whose parent was cancelled cancels itself before its next model call
        (what the parent's cancel did not reach: a crash between the two, say)."""
        assert p.view.parent is not None
        try:
            parent = await self.store.view(p.view.parent)
        except NotFound:
            return None
        if parent.state is not ErrandState.cancelled:
            return None
        reason = f"its parent {parent.id} was cancelled"
        return ev.CancelRequested(reason=reason, by="errands", channel="delegate")

    async def _child(self, p: Progress, child_id: str) -> ErrandView:
        try:
            view = await self.store.view(child_id)
        except NotFound:
            view = None
        if view is None or view.parent != p.errand_id:
            raise _Refused(f"{child_id} is not a sub-errand this errand started")
        return view

    async def _found(self, ids: Sequence[str]) -> list[ErrandView | None]:
        out: list[ErrandView | None] = []
        for child_id in ids:
            try:
                out.append(await self.store.view(child_id))
            except NotFound:
                out.append(None)
        return out

    async def spawn(
        self, p: Progress, call: CallState, tasks: Sequence[Any], ids: Sequence[str], fresh: bool
    ) -> None:
        """Start the call's children *ids* (those a crash left unmade). Every check comes
        before the first child is made: a refused call makes none. The limits are checked
        for a *fresh* call only: a call some of whose children exist was admitted."""
        if fresh:
            await self._admit(p, ids)
        home = self._subtasks(p)
        made = [self._created(p, call, ids[k], task, home) for k, task in enumerate(tasks)]
        parent = Path(p.view.workspace)
        for child_id, created in zip(ids, made, strict=True):
            # (a folder or worktree that cannot be made now is a step's failure: tried again)
            await self.worktree(parent, Path(created.workspace), child_id)
            make_workspace(self.settings, child_id, created.workspace)
            fault("child_folder")
            await self.create(child_id, created)
            fault("child_created")

    def _subtasks(self, p: Progress) -> Path:
        """``WORKSPACE/subtasks``, where the children's folders go: made, and refused if
        it leads out of the parent's workspace (a link the parent made, say)."""
        workspace = Path(os.path.realpath(p.view.workspace))
        home = workspace / "subtasks"
        try:
            os.makedirs(home, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _Refused(f"delegate: {home} cannot be made: {exc.strerror}") from None
        if Path(os.path.realpath(home)) != home or not home.is_dir():
            raise _Refused(f"delegate: {home} is not a folder of this errand's workspace")
        return home

    async def worktree(self, parent: Path, child: Path, child_id: str) -> bool:
        """Make the child's folder a git worktree on its own branch when the parent's
        workspace is a git repository (made once: a resume finds it)."""
        branch = worktrees.branch_for(child_id)
        return await asyncio.to_thread(worktrees.add, parent, child, branch)

    async def merge(self, p: Progress, call: CallState, ids: Sequence[str]) -> ev.ToolResult:
        """``merge_children``: commit each ended child's work to its branch and merge the
        branches into the parent's, one after the other; a conflict is reported with
        its files and hunks (and aborted: the parent's files stay as they were)."""
        views = [await self._child(p, i) for i in ids]
        running = [v.id for v in views if v.state not in TERMINAL]
        if running:
            raise _Refused(
                f"merge_children: {', '.join(running)} have not ended; wait_for them first"
            )
        parent = Path(p.view.workspace)
        if await asyncio.to_thread(worktrees.repo_of, parent) is None:
            raise _Refused(
                "merge_children: this errand's workspace is not a git repository; the "
                "sub-errands' files are in its subtasks folder"
            )
        try:
            for v in views:
                await asyncio.to_thread(worktrees.commit, parent, Path(v.workspace), _message(v))
            merged = await asyncio.to_thread(
                self.merge_branches, parent, [worktrees.branch_for(v.id) for v in views]
            )
        except worktrees.GitFailed as exc:
            raise _Refused(f"merge_children: {exc}") from None
        return self._result(call, _merge_report(views, merged), ok=all(not m.error for m in merged))

    async def _admit(self, p: Progress, ids: Sequence[str]) -> None:
        """Refuse a fan-out over ``[subagents]``'s limits."""
        limits = self.settings.subagents
        if len(ids) > limits.max_parallel:
            raise _Refused(
                f"delegate: {len(ids)} tasks, but at most {limits.max_parallel} sub-errands "
                "may run at once ([subagents] max_parallel); split the work"
            )
        depth = await self._depth(p.view)
        if depth + 1 > limits.max_depth:
            raise _Refused(
                f"delegate: this errand is at depth {depth}; sub-errands may nest at most "
                f"{limits.max_depth} deep ([subagents] max_depth) -- do the work yourself"
            )
        running = await self.store.list_errands(states=_OPEN, limit=limits.max_total + len(ids))
        others = sum(1 for v in running if v.parent is not None and v.id not in ids)
        if others + len(ids) > limits.max_total:
            raise _Refused(
                f"delegate: {others} sub-errands are open on this server and at most "
                f"{limits.max_total} may be ([subagents] max_total); wait for some to end"
            )

    async def create(self, child_id: str, created: ev.ErrandCreated) -> None:
        """Create the child; one that exists (made before a crash) is left as it is."""
        with contextlib.suppress(ErrandExists):
            await self.store.create(child_id, created)

    async def _depth(self, view: ErrandView) -> int:
        depth, parent = 0, view.parent
        while parent is not None and depth < 64:
            depth += 1
            try:
                parent = (await self.store.view(parent)).parent
            except NotFound:
                break
        return depth

    def _created(
        self, p: Progress, call: CallState, child_id: str, task: Any, home: Path
    ) -> ev.ErrandCreated:
        """The child's first event: only its task, labelled as the parent's call (never
        more trusted), at most the parent's tools and budget."""
        assert p.created is not None
        text = str(task["task"])
        spec = str(task.get("model") or p.view.model).strip()
        try:
            check_spec(spec, self.settings)
        except ErrandsError as exc:
            raise _Refused(f"delegate: {exc}") from None
        mine = self.toolset.tools(p.view).names
        wanted = task.get("tools")
        if wanted is not None:
            unknown = sorted(set(wanted) - set(mine))
            if unknown:
                raise _Refused(f"delegate: tools {unknown} are not among this errand's tools")
        tools = list(wanted) if wanted is not None else p.view.tools
        cost = task.get("max_cost_usd")
        cap = p.limits.max_cost_usd
        if cost is not None and cap is not None:
            cost = min(float(cost), cap)
        limits = p.limits.model_copy(update={"max_cost_usd": cost if cost is not None else cap})
        workspace = home / child_id.removeprefix(p.errand_id + ".")
        return ev.ErrandCreated(
            title=title_for(text),
            content=ev.Content.labelled(
                text, Provenance(kind="model", name=f"errand {p.errand_id}"), self.label(call)
            ),
            model=spec,
            timezone=p.created.timezone,
            workspace=str(workspace),
            limits=limits,
            parent=p.errand_id,
            by=p.created.by,
            channel="delegate",
            tools=tools,
            mode=p.view.mode,
        )

    def label(self, call: CallState) -> Label:
        """The label of a child's task: the label of the call that asked for it, so a
        child is never more trusted than its parent was when it delegated."""
        return call.label

    def report(
        self, call: CallState, views: Sequence[ErrandView], by_message: bool
    ) -> ev.ToolResult:
        """Each child's state, cost and answer (cut), and how to read it whole."""
        cut = self.settings.subagents.result_chars
        ended = sum(1 for v in views if v.state in TERMINAL)
        head = f"{ended} of {len(views)} sub-errands ended"
        if waiting := sum(1 for v in views if v.state is ErrandState.needs_attention):
            head += f", {waiting} need a person (errands show ID says why)"
        if asking := sum(1 for v in views if v.state is ErrandState.waiting_approval):
            head += f", {asking} wait for a person's approval (the inbox, errands approve)"
        if by_message:
            head = f"woken early: a message came (it follows); {head}"
        lines = [head + ":"]
        untrusted = False
        for v in views:
            lines.append(f"\n## {v.id}: {v.state.value} (${v.usage.cost_usd:.4f}, {v.steps} steps)")
            if v.state is not ErrandState.done and v.reason:
                lines.append(f"reason: {v.reason}")
            for asked in v.pending.values():
                lines.append(f"waits for approval {asked.id}: {asked.tool} ({asked.reason})")
            answer = v.result or ""
            untrusted = untrusted or v.result_untrusted
            if len(answer) > cut:
                answer = (
                    answer[:cut] + f"\n[cut: {len(answer)} characters in all; "
                    f'read_errand_result("{v.id}") gives the whole answer]'
                )
            if answer:
                lines.append(answer)
            elif v.state not in TERMINAL:
                lines.append(f'(still {v.state.value}: wait_for(["{v.id}"]) collects it)')
        return self._result(call, "\n".join(lines), untrusted=untrusted)

    def _result(
        self, call: CallState, text: str, ok: bool = True, untrusted: bool = False
    ) -> ev.ToolResult:
        return ev.ToolResult(
            call_id=call.call.call_id,
            tool=call.call.name,
            ok=ok,
            error_kind=None if ok else "refused",
            content=ev.Content(
                text=text,
                provenance=_TOOL,
                integrity=Integrity.untrusted if untrusted else Integrity.trusted,
                confidentiality=Confidentiality.private,
            ),
        )


async def cancel_children(store: Store, errand_id: str, reason: str, by: str, channel: str) -> None:
    """Cancel the open children of *errand_id* (and theirs): a parent's cancel ends its
    tree."""
    for view in await store.children(errand_id):
        if view.state not in TERMINAL:
            event = ev.CancelRequested(reason=reason, by=by, channel=channel)
            with contextlib.suppress(StoreError):  # (it ended meanwhile)
                await store.append(view.id, [event], guard=_open)
        await cancel_children(store, view.id, reason, by, channel)


def _message(view: ErrandView) -> str:
    return f"errands: sub-errand {view.id} ({view.state.value}): {view.title}"


def _merge_report(views: Sequence[ErrandView], merged: Sequence[worktrees.Merged]) -> str:
    lines = []
    for v, m in zip(views, merged, strict=True):
        if m.merged:
            lines.append(f"{v.id}: merged ({m.branch})")
        elif m.up_to_date:
            lines.append(f"{v.id}: nothing to merge ({m.branch} is already in this branch)")
        elif m.error:
            lines.append(f"{v.id}: not merged: {m.error}")
        else:
            files = ", ".join(c.path for c in m.conflicts)
            lines.append(
                f"{v.id}: CONFLICT in {files}: not merged, your files are as they were; "
                f"its work stays on branch {m.branch} (its files: {v.workspace}). Resolve "
                "by editing the files yourself, or delegate again with the hunks below."
            )
            for c in m.conflicts:
                lines.extend(f"--- {c.path}\n{h}" for h in c.hunks)
    conflicted = sum(1 for m in merged if m.conflicts)
    head = f"{sum(1 for m in merged if m.merged)} of {len(merged)} merged"
    if conflicted:
        head += f", {conflicted} with conflicts"
    return head + ":\n" + "\n".join(lines)


async def settle_worktrees(store: Store, view: ErrandView) -> None:
    """When an errand has ended: a sub-errand's work is committed to its branch (and its
    worktree removed if its parent has ended too); the worktrees of its own ended
    children are removed (their work committed first; a branch is deleted only if it is
    merged). Git failures are logged, not raised: the next end tries again."""
    jobs: list[tuple[Path, ErrandView, bool]] = []  # (parent's workspace, child, remove?)
    if view.parent is not None:
        with contextlib.suppress(NotFound):
            parent = await store.view(view.parent)
            # its parent still runs: keep the worktree (merge_children needs the branch)
            jobs.append((Path(parent.workspace), view, parent.state in TERMINAL))
    jobs.extend(
        (Path(view.workspace), c, True)
        for c in await store.children(view.id)
        if c.state in TERMINAL
    )
    for parent_ws, child, removed in jobs:
        child_ws, message = Path(child.workspace), _message(child)
        try:
            if not removed:
                await asyncio.to_thread(worktrees.commit, parent_ws, child_ws, message)
            else:
                branch = worktrees.branch_for(child.id)
                await asyncio.to_thread(worktrees.remove, parent_ws, child_ws, branch, message)
        except (worktrees.GitFailed, OSError) as exc:
            log.warning("sub-errand %s: its worktree was not settled: %s", child.id, exc)


async def sweep_worktrees(store: Store, limit: int = 1000) -> int:
    """Settle what a crash left: the worktrees of the *limit* newest ended sub-errands
    whose worktree is still there and whose parent has ended (``errands up`` does this
    as it starts). Returns how many parents it settled."""
    settled = 0
    try:
        ended = await store.list_errands(states=sorted(TERMINAL), limit=limit)
        parents = {
            v.parent
            for v in ended
            if v.parent is not None and (Path(v.workspace) / ".git").is_file()
        }
        for parent_id in sorted(p for p in parents if p is not None):
            with contextlib.suppress(NotFound):
                parent = await store.view(parent_id)
                if parent.state in TERMINAL:
                    await settle_worktrees(store, parent)
                    settled += 1
    except StoreError as exc:  # (best effort: the next start looks again)
        log.warning("the sweep of sub-errands' worktrees stopped: %s", exc)
    return settled


def _open(view: ErrandView) -> None:
    if view.state in TERMINAL:
        raise StoreError(f"errand {view.id} has ended")
