"""The inbox's tree of sub-errands (docs/subagents.md): on a parent's page, each child
(and grandchild) with its state, cost, steps and time, and the approvals it waits for,
grouped under it; ``/fragments/errands/{id}/tree`` gives the same, polled by
``static/subtasks.js`` so the tree is live."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from errands.core.errand import ApprovalOut, ErrandSummary
from errands.core.states import TERMINAL
from errands.errors import StoreError
from errands.server.context import ServerContext
from errands.store import StoreReader

if TYPE_CHECKING:
    from errands.server.inbox import Templates

__all__ = ["Node", "Tree", "add_tree_routes", "grouped", "tree_of"]

MAX_NODES = 500  # a tree bigger than this shows its first 500 (and says so)
_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass
class Node:
    e: ErrandSummary
    depth: int  # 1: a child, 2: a grandchild
    seconds: float  # from its creation to its last event (to now while it runs)
    approvals: list[ApprovalOut] = field(default_factory=list)


@dataclass
class Tree:
    nodes: list[Node] = field(default_factory=list)
    cut: bool = False  # more than MAX_NODES

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.e.status.value] = out.get(n.e.status.value, 0) + 1
        return out

    @property
    def cost_usd(self) -> float:
        return sum(n.e.cost_usd for n in self.nodes)

    @property
    def waiting(self) -> int:
        return sum(len(n.approvals) for n in self.nodes)

    @property
    def open(self) -> int:
        return sum(1 for n in self.nodes if n.e.status not in TERMINAL)


async def tree_of(store: StoreReader, errand_id: str, now: float | None = None) -> Tree:
    """The errand's sub-errands, depth first (each child followed by its own)."""
    now = time.time() if now is None else now
    tree = Tree()

    async def walk(parent: str, depth: int) -> None:
        for view in await store.children(parent):
            if len(tree.nodes) >= MAX_NODES:
                tree.cut = True
                return
            end = view.updated_at if view.state in TERMINAL else now
            approvals = [ApprovalOut.of(p, view.title) for p in view.pending.values()]
            summary = ErrandSummary.of(view)
            tree.nodes.append(Node(summary, depth, max(0.0, end - view.created_at), approvals))
            if depth < 8:
                await walk(view.id, depth + 1)

    await walk(errand_id, 1)
    return tree


async def grouped(store: StoreReader, approvals: list[ApprovalOut]) -> list[ApprovalOut]:
    """The inbox's queue with a sub-errand's approvals grouped under its parent: each
    tree's cards together (the trees ordered by their oldest card, the cards in a tree
    oldest first), a child's card naming ``PARENT › CHILD``. An errand's parent is read
    once per call (the queue is short)."""
    parents: dict[str, str | None] = {}
    titles: dict[str, str] = {}

    async def parent_of(errand_id: str) -> str | None:
        if errand_id not in parents:
            try:
                view = await store.view(errand_id)
            except StoreError:
                parents[errand_id] = None
            else:
                parents[errand_id], titles[errand_id] = view.parent, view.title
        return parents[errand_id]

    async def chain(errand_id: str) -> list[str]:
        out = [errand_id]
        while (up := await parent_of(out[-1])) is not None and len(out) < 8:
            out.append(up)
        return out[::-1]  # the root first

    out: list[tuple[str, ApprovalOut]] = []
    for a in approvals:
        ids = await chain(a.errand_id)
        if len(ids) > 1:
            names = [titles.get(i) or i for i in ids[:-1]]
            a = a.model_copy(update={"errand_title": " › ".join([*names, a.errand_title])})
        out.append((ids[0], a))
    first: dict[str, float] = {}
    for root, a in out:
        first[root] = min(first.get(root, a.at), a.at)
    out.sort(key=lambda pair: (first[pair[0]], pair[0], pair[1].at))
    return [a for _, a in out]


def add_tree_routes(
    router: APIRouter, get_ctx: Callable[[Request], ServerContext], env: Templates
) -> None:
    """``GET /fragments/errands/{id}/tree``: the tree, for the page to poll."""

    @router.get("/fragments/errands/{errand_id}/tree", response_class=HTMLResponse)
    async def tree_fragment(request: Request, errand_id: str) -> Response:
        if not _ID.match(errand_id):
            return Response(status_code=404)
        tree = await tree_of(get_ctx(request).store, errand_id)
        return HTMLResponse(
            env.get_template("_subtasks.html").render(tree=tree, fragment=True),
            headers={"cache-control": "no-store"},
        )
