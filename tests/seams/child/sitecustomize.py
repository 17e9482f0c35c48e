"""Loaded by Python at the start of every child process a test starts with
:func:`seams.child_env` (this directory is first on its ``PYTHONPATH``): arms the fault
points and installs the negative controls the environment names."""

from __future__ import annotations

import os

if os.environ.get("ERRANDS_FAULT") or os.environ.get("ERRANDS_TEST_CONTROLS"):
    from seams.controls import install
    from seams.faults import arm_from_spec

    arm_from_spec(os.environ.get("ERRANDS_FAULT", ""))
    install(filter(None, os.environ.get("ERRANDS_TEST_CONTROLS", "").split(",")))
