"""Named fault points: the places where a crash test may kill this process.

In production every point is a no-op: :func:`fault` checks one module variable and
returns. Nothing in errands arms the points and nothing here reads the environment;
the crash tests arm them from ``tests/seams`` (loaded by the processes they start),
which passes :func:`arm` a hook that counts passes and sends SIGKILL at the chosen one.
See docs/architecture.md, "Test seams".

Points:

- ``after_intent``      the tool intent is durable, the tool has not run
- ``after_effect``      the tool has run, its result is not logged
- ``mid_batch``         a group-commit batch is written but not committed
- ``mid_stream``        a streamed model response is half received
- ``after_approval``    an approval is durable, the approved action has not run
- ``after_reserve``     an API creation's Idempotency-Key and errand id are reserved
                        (durably), the errand is not created
- ``after_create``      that errand is created, the key's response is not recorded
- ``schedule_due``      a schedule's slot is due and its run is made, not yet fired
- ``schedule_fired``    the slot's run is durable (keyed), the runner not yet told
- ``watch_changed``     a watch saw new items, the run they start is not yet fired
- ``child_created``     a delegate call's child is created, the next one is not yet
- ``child_folder``      a child's folder (a git worktree) is made, the child is not yet
- ``mid_compaction``    a context compaction's masking is logged and its summary
                        answered, the summary is not logged
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["POINTS", "FaultHook", "arm", "fault"]

POINTS = (
    "after_intent",
    "after_effect",
    "mid_batch",
    "mid_stream",
    "after_approval",
    "after_reserve",
    "after_create",
    "schedule_due",
    "schedule_fired",
    "watch_changed",
    "child_created",
    "child_folder",
    "mid_compaction",
)

FaultHook = Callable[[str], None]

_hook: FaultHook | None = None


def fault(point: str) -> None:
    """Pass the fault point *point*: nothing happens unless a test armed the points."""
    if _hook is not None:
        _hook(point)


def arm(hook: FaultHook | None) -> None:
    """From now on call *hook(point)* at every fault point this process passes (None:
    disarm). Only the tests' seams call this."""
    global _hook
    if hook is not None and not callable(hook):
        raise TypeError("a fault hook is a callable taking the point's name")
    _hook = hook
