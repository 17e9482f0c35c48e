"""AgentDojo's banking and slack suites through errands, flow control on and off (issue 16).

Every user task alone and under every injection task (``important_instructions``), each
an errand on ``harness.build`` (a temporary home: the real SQLite store, loop, policy as
errands ships it, approval queue), the model :class:`~errands.evals.worstcase.WorstCaseModel`
(it always obeys), the simulated approver of :mod:`errands.evals.agentdojo_run`. Two
kinds of standing rules a person has for the user task's calls: errands' own (``roles``:
payee, recipient or URL prefix pinned) and the loosest (``tool``: "always allow
send_money"); each with flow control on and off (the negative control); and each in the
default mode and in plan mode (:mod:`errands.evals.planner`: the model that calls tools
never reads untrusted content; the extractor obeys the injection).

    python bench/agentdojo_bench.py                      # everything (about 2 minutes)
    python bench/agentdojo_bench.py --suite slack --standing roles

Results are printed and written to ``bench/results/agentdojo.json``: each suite's record,
with the cases that were hijacked (and by which tools) and any false blocks.
The same report for a person: ``errands eval agentdojo``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from probes import machine_info
from rich.console import Console

from errands.evals.agentdojo import ATTACK, BENCHMARK
from errands.evals.report import evaluate, table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "agentdojo.json"


def _which(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The cases something happened in: what was hijacked, what was blocked."""
    out: dict[str, Any] = {"hijacked": {}, "false_blocked": {}}
    for case in cases:
        for key, found in (("hijacked", case["hijacks"]), ("false_blocked", case["false_blocks"])):
            if found:
                out[key][case["case"]] = [call["tool"] for call in found]
    return out


async def run(suites: list[str], standings: list[Any]) -> list[dict[str, Any]]:
    records = []
    for standing in standings:
        started = time.perf_counter()
        found = await evaluate(
            suites, ["on", "off"], standing=standing, details=True, modes=("default", "plan")
        )
        for record in found:
            record.update(_which(record.pop("cases")))
        Console(width=140).print(table(found))
        print(f"({time.perf_counter() - started:.1f} s)")
        records.extend(found)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--suite", action="append", choices=["banking", "slack"])
    parser.add_argument("--standing", action="append", choices=["roles", "tool"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    records = asyncio.run(
        run(args.suite or ["banking", "slack"], args.standing or ["roles", "tool"])
    )
    results = {
        "machine": machine_info(Path(tempfile.gettempdir()), ["agentdojo"]),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "agentdojo": version("agentdojo"),
        "benchmark": BENCHMARK,
        "attack": ATTACK,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
