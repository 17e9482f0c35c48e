"""Test seams: what the tests inject into errands, and nothing in errands reads.

errands has no test build, so its guarantees are proven against *variants* the tests
build themselves (docs/architecture.md, "Test seams"):

- **negative controls** (:mod:`seams.controls`): a subclass, or a replacement for one
  method or function, that breaks exactly one guarantee -- a loop that runs effects
  before logging their intent, a policy without the approval gate, ... In a test
  process they are passed in (``Runner(loop_class=...)``, ``Policy`` subclasses,
  fixtures); a child process gets them by name through :func:`child_env`.
- **fault points** (:mod:`seams.faults`): errands passes named no-op points
  (:mod:`errands.core.faults`); :func:`seams.faults.arm_from_spec` makes them kill the
  process at the Nth pass of a point.

A child process started with :func:`child_env` loads ``seams/child/sitecustomize.py``
at start-up, which installs what ``ERRANDS_FAULT`` and ``ERRANDS_TEST_CONTROLS`` name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["CHILD_DIR", "TESTS_DIR", "child_env"]

TESTS_DIR = Path(__file__).resolve().parent.parent
CHILD_DIR = Path(__file__).resolve().parent / "child"


def child_env(
    env: Mapping[str, str] | None = None,
    *,
    fault: str | None = None,
    controls: Iterable[str] = (),
) -> dict[str, str]:
    """*env* (default: this process's) for a child process that arms the fault points
    as *fault* says (``POINT:N[,POINT:N]``) and installs the negative *controls*."""
    out = dict(os.environ if env is None else env)
    for name in ("ERRANDS_FAULT", "ERRANDS_TEST_CONTROLS"):
        out.pop(name, None)
    paths = [str(CHILD_DIR), str(TESTS_DIR)]
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    out["PYTHONPATH"] = os.pathsep.join(paths)
    if fault:
        out["ERRANDS_FAULT"] = fault
    names = ",".join(controls)
    if names:
        out["ERRANDS_TEST_CONTROLS"] = names
    return out
