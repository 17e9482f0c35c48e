"""Arming errands' fault points: SIGKILL at the Nth pass of a point.

``ERRANDS_FAULT=after_intent:7`` (read here, in the tests, never by errands) kills the
process with SIGKILL the 7th time it passes ``after_intent``; several points may be
listed, comma separated. The points are :data:`errands.core.faults.POINTS`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from errands.core import faults

__all__ = ["arm_from_spec", "parse"]


def parse(spec: str) -> dict[str, int]:
    plan: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in faults.POINTS:
            raise ValueError(
                f"ERRANDS_FAULT: unknown point {name!r} (known: {', '.join(faults.POINTS)})"
            )
        plan[name] = int(count or "1")
    return plan


def arm_from_spec(spec: str, on_hit: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Arm the fault points as *spec* says; *on_hit(point, n)* runs just before the kill.
    Returns the plan (empty: nothing armed)."""
    plan = parse(spec)
    if not plan:
        faults.arm(None)
        return plan
    passes: dict[str, int] = {}
    lock = threading.Lock()

    def hook(point: str) -> None:
        target = plan.get(point)
        if target is None:
            return
        with lock:
            n = passes[point] = passes.get(point, 0) + 1
        if n == target:
            if on_hit is not None:
                on_hit(point, n)
            os.kill(os.getpid(), signal.SIGKILL)

    faults.arm(hook)
    return plan
