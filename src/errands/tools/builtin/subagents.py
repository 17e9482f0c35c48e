"""``delegate``, ``wait_for``, ``read_errand_result``, ``merge_children``: sub-errands
(docs/subagents.md).

Like ``wait``, these calls are not run like other tools: routing checks their arguments
(a bad call is a tool error the model reads, and nothing is created), the policy judges
them, and the call becomes a ``sleeping`` event due at once. The loop then carries it
out from the store (:mod:`errands.engine.delegate`): it starts the children (ids derived
from the call, so a resume never starts one twice), and the errand sleeps, at no cost,
until they have all finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from errands.core.events import EffectClass
from errands.tools.tool import Tool, ToolArgumentError, ToolError, make_tool

__all__ = [
    "JOINS",
    "MAX_TASK_CHARS",
    "check_join",
    "delegate",
    "join_tools",
    "merge_children",
    "read_errand_result",
    "wait_for",
]

JOINS = frozenset({"delegate", "wait_for", "read_errand_result", "merge_children"})
MAX_TASK_CHARS = 50_000
_TASK_KEYS = frozenset({"task", "model", "tools", "max_cost_usd"})


def delegate(tasks: list[dict[str, Any]], wait: bool = True, wake_on_person: bool = False) -> str:
    """Start sub-errands that work in parallel, each with a clean context (it sees only
    its task) and its own workspace (a folder inside yours). With wait (the default) you
    sleep until all have finished and get each one's state and answer; with wait=false
    you get their ids at once and collect them later with wait_for.

    Args:
        tasks: One object per sub-errand: {"task": what it must do (self-contained),
            "model"?: a model spec, "tools"?: the names of the tools it may use (a subset
            of yours), "max_cost_usd"?: its budget}.
        wait: Sleep until every sub-errand has finished (true) or return their ids now.
        wake_on_person: Wake as soon as one sub-errand waits for a person (an approval,
            or it needs attention) instead of when all have finished; wait_for(ids)
            then waits for the rest.
    """
    raise ToolError("delegate is carried out by errands itself, not called")


def wait_for(ids: list[str]) -> str:
    """Sleep until the sub-errands you started (their ids) have all finished; the result
    gives each one's state and answer.

    Args:
        ids: The ids of sub-errands this errand started.
    """
    raise ToolError("wait_for is carried out by errands itself, not called")


def read_errand_result(id: str) -> str:
    """The full final answer of a sub-errand you started (results are cut short in
    delegate's and wait_for's answers).

    Args:
        id: The sub-errand's id.
    """
    raise ToolError("read_errand_result is carried out by errands itself, not called")


def merge_children(ids: list[str]) -> str:
    """Merge the work of sub-errands that have ended into your workspace's git branch
    (when your workspace is a git repository, each sub-errand works on its own branch
    in its own worktree). Each is merged in turn; a conflict is not merged (your files
    stay as they were) and is reported with its files and hunks, to resolve yourself.

    Args:
        ids: The ids of sub-errands this errand started, in the order to merge them.
    """
    raise ToolError("merge_children is carried out by errands itself, not called")


def _task(i: int, task: object) -> None:
    if not isinstance(task, Mapping):
        raise ToolArgumentError(f"delegate: tasks[{i}] must be an object with a 'task' text")
    unknown = sorted(set(task) - _TASK_KEYS)
    if unknown:
        raise ToolArgumentError(
            f"delegate: tasks[{i}] has unknown keys {unknown}; use task, model, tools, max_cost_usd"
        )
    text = task.get("task")
    if not isinstance(text, str) or not text.strip():
        raise ToolArgumentError(f"delegate: tasks[{i}].task must be a non-empty text")
    if len(text) > MAX_TASK_CHARS:
        raise ToolArgumentError(f"delegate: tasks[{i}].task is over {MAX_TASK_CHARS} characters")
    model = task.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ToolArgumentError(f"delegate: tasks[{i}].model must be a model spec")
    tools = task.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, str) for t in tools)
    ):
        raise ToolArgumentError(f"delegate: tasks[{i}].tools must be a list of tool names")
    cost = task.get("max_cost_usd")
    if cost is not None and (
        isinstance(cost, bool) or not isinstance(cost, int | float) or not cost > 0
    ):
        raise ToolArgumentError(f"delegate: tasks[{i}].max_cost_usd must be a positive number")


def check_join(name: str, args: Mapping[str, Any]) -> None:
    """A clear :class:`ToolArgumentError` for a call that cannot be carried out as
    written (before anything is logged or created)."""
    if name == "delegate":
        tasks = args.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ToolArgumentError("delegate: tasks must be a non-empty list")
        for i, task in enumerate(tasks):
            _task(i, task)
        for flag in ("wait", "wake_on_person"):
            if not isinstance(args.get(flag, False), bool):
                raise ToolArgumentError(f"delegate: {flag} must be true or false")
    elif name in ("wait_for", "merge_children"):
        ids = args.get("ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ToolArgumentError(f"{name}: ids must be a non-empty list of errand ids")


def join_tools() -> list[Tool]:
    """The four tools, each routed to a ``sleeping`` event due at once (after its
    arguments are checked): the loop carries them out. ``merge_children`` changes the
    workspace (``write_local``); merging again what is merged changes nothing."""

    def due_now(name: str) -> Any:
        def pauses(args: Mapping[str, Any], now: float) -> float:
            check_join(name, args)
            return now

        return pauses

    return [
        *(
            make_tool(fn, effect=EffectClass.none, idempotent=True, pauses=due_now(fn.__name__))
            for fn in (delegate, wait_for, read_errand_result)
        ),
        make_tool(
            merge_children,
            effect=EffectClass.write_local,
            idempotent=True,
            pauses=due_now("merge_children"),
        ),
    ]
