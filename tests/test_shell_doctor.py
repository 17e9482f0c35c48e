"""``errands doctor`` says whether the shell's sandbox works here, and what to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from errands.tools.sandbox import doctor
from errands.tools.sandbox.bwrap import Extras, Sandbox


def test_doctor_reports_a_working_sandbox(cli: Any) -> None:
    done = cli("doctor", "--json")
    (check,) = [c for c in json.loads(done.stdout)["checks"] if c["subject"] == "sandbox"]
    assert check["ok"] and check["problems"] == [], check
    notes = " ".join(check["notes"])
    assert "bubblewrap" in notes and "a sandbox starts" in notes
    assert "egress through errands' proxy works" in notes


class NoWayOut(Sandbox):
    """The control: the proxy's socket and the bridge are not bound into the sandbox."""

    def argv(
        self,
        command: str,
        workspace: Path,
        etc: Path,
        extras: Extras | None = None,
        *rest: Any,
        **more: Any,
    ) -> list[str]:
        bare = Extras(env=extras.env, prefix=extras.prefix) if extras else None
        return super().argv(command, workspace, etc, bare, *rest, **more)


def test_doctor_finds_a_broken_way_out() -> None:
    (problem,) = doctor.sandbox_report(NoWayOut()).problems
    assert problem.startswith("a request from the sandbox did not get through"), problem


def test_doctor_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    report = doctor.sandbox_report(Sandbox(bwrap="/nonexistent/bwrap"))
    assert not report.ok
    assert any("apt-get install bubblewrap" in p for p in report.problems), report
    monkeypatch.setattr(doctor, "PYTHON", Path("/nonexistent/python3"))
    report = doctor.sandbox_report(egress_wanted=True)
    assert report.problems == [
        "[network] egress_allow is set but the sandbox has no /nonexistent/python3 for the "
        "egress bridge: apt-get install python3-minimal"
    ]
