"""The inbox's tree of sub-errands (docs/subagents.md): on a parent's page, each child
(and grandchild) with its state, cost, steps and time, and the approvals it waits for,
grouped under it; ``/fragments/errands/{id}/tree`` gives the same, polled by
``static/subtasks.js`` so the tree is live."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment

from errands.core.errand import ApprovalOut, ErrandSummary
from errands.core.states import TERMINAL
from errands.server.context import ServerContext
from errands.store import StoreReader

__all__ = ["Node", "Tree", "add_tree_routes", "tree_of"]

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


def add_tree_routes(
    router: APIRouter, get_ctx: Callable[[Request], ServerContext], env: Environment
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
