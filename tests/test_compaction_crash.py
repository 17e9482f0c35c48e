"""A SIGKILL in the middle of a compaction, then a resume, sends byte-identical requests
to an uninterrupted run (docs/context.md).

Real processes (``tests/crash/compaction_worker.py``) run one errand against the
OpenAI simulator with an 8K-token window, so that it summarises. One run goes through;
another is killed (``seams``: SIGKILL at the ``mid_compaction`` fault point -- the
summary answered, not yet logged) and a fresh process resumes it from the store. The
simulator answers from each request alone, so both runs are answered alike. The
resumed run asks for the lost summary again -- the same bytes -- and every request of
it is, byte for byte, the uninterrupted run's.

Negative control: a compactor that keeps its running count in the process (not
derived from the log) sends other requests after the resume than a run that went
through.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from seams import TESTS_DIR, child_env
from test_compaction import MARK, ArchiveSim

WORKER = TESTS_DIR / "crash" / "compaction_worker.py"
EID = "ecompactcrash1"
CHARS, WINDOW, PAGES = 500, 8000, 40


def run_worker(
    home: Path, sim: ArchiveSim, *, fault: str | None = None, chars: int = CHARS, control: bool
) -> subprocess.CompletedProcess[str]:
    home.mkdir(mode=0o700, exist_ok=True)
    env = child_env(fault=fault)
    env["ERRANDS_HOME"] = str(home)
    return subprocess.run(
        [
            sys.executable,
            str(WORKER),
            str(home),
            sim.base_url,
            sim.api_key,
            EID,
            str(chars),
            str(WINDOW),
            *(["control"] if control else []),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def requests_of(
    home: Path, *, fault: str | None = None, chars: int = CHARS, control: bool = False
) -> list[bytes]:
    """The raw bodies the simulator received: one run, or a killed run and its resume."""
    with ArchiveSim(PAGES) as sim:
        first = run_worker(home, sim, fault=fault, chars=chars, control=control)
        if fault is None:
            assert first.returncode == 0 and first.stdout.strip() == "done", first.stderr[-2000:]
        else:
            assert first.returncode == -9, (first.returncode, first.stderr[-2000:])
            again = run_worker(home, sim, chars=chars, control=control)
            assert again.returncode == 0 and again.stdout.strip() == "done", again.stderr[-2000:]
        return [r.raw for r in sim.requests]


def test_sigkill_mid_compaction_then_resume_sends_the_same_requests(tmp_path: Path) -> None:
    whole = requests_of(tmp_path / "whole")
    killed = requests_of(tmp_path / "killed", fault="mid_compaction:1")
    summaries = [i for i, raw in enumerate(whole) if MARK.encode() in raw]
    assert summaries, "the errand summarised"
    # the killed process had asked for the first summary: the resume asks again, the same
    assert len(killed) == len(whole) + 1
    first = summaries[0]
    assert killed[first] == killed[first + 1] == whole[first]
    assert killed[: first + 1] + killed[first + 2 :] == whole, "byte-identical requests"


def test_negative_control_a_count_kept_in_memory_sends_other_requests(tmp_path: Path) -> None:
    whole = requests_of(tmp_path / "whole", control=True)
    killed = requests_of(tmp_path / "killed", fault="mid_compaction:1", control=True)
    assert any(MARK.encode() in raw for raw in whole)
    again = [raw for i, raw in enumerate(killed) if i == 0 or raw != killed[i - 1]]
    assert again != whole
