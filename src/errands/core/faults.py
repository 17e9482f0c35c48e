"""Fault injection for the crash tests, switched on only by environment variables.

``ERRANDS_FAULT=after_intent:7`` kills this process with SIGKILL the 7th time it passes
the point ``after_intent``; several points may be listed, comma separated. Points:

- ``after_intent``      the tool intent is durable, the tool has not run
- ``after_effect``      the tool has run, its result is not logged
- ``mid_batch``         a group-commit batch is written but not committed
- ``mid_stream``        a streamed model response is half received
- ``after_approval``    an approval is durable, the approved action has not run

``ERRANDS_UNSAFE_TEST_SWITCHES`` turns guards *off* for negative-control tests only
(see :func:`switch`); nothing outside the test suite sets it.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "fault", "switch"]

POINTS = ("after_intent", "after_effect", "mid_batch", "mid_stream", "after_approval")


def _parse(spec: str) -> dict[str, int]:
    plan: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"ERRANDS_FAULT: unknown point {name!r} (known: {', '.join(POINTS)})")
        plan[name] = int(count or "1")
    return plan


_PLAN = _parse(os.environ.get("ERRANDS_FAULT", ""))
_PASSES: dict[str, int] = {}
_SWITCHES = frozenset(
    s.strip() for s in os.environ.get("ERRANDS_UNSAFE_TEST_SWITCHES", "").split(",") if s.strip()
)


def fault(point: str) -> None:
    """Pass a fault point: die here with SIGKILL if the plan says so."""
    if not _PLAN:
        return
    target = _PLAN.get(point)
    if target is None:
        return
    n = _PASSES.get(point, 0) + 1
    _PASSES[point] = n
    if n == target:
        os.kill(os.getpid(), signal.SIGKILL)


def switch(name: str) -> bool:
    """True if the test-only switch *name* (a guard turned off) is set."""
    return name in _SWITCHES
