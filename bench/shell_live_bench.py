"""Shell live-output benchmark: what streaming a command's output to the inbox costs.

Runs real commands in bubblewrap through the ``shell`` tool, each timed as the median of
its repeats, three ways side by side:

- ``anchor``: no live view (``ctx.on_output`` None: what a CLI run or a worker does);
- ``live``: a live view that takes every piece (what the server's hub gets);
- ``live+secret``: the same with a declared 40-character secret, so every piece goes
  through the redactor and the safe-cut check.

For each it also counts the pieces handed to the view (how coalesced the live stream is:
one a pipe read, not one a line). Workloads: 40,000 short lines (~230 KB, past the 200 KB
the result keeps), 50 MB of one long line (the live view stops at the cap; the rest is
only counted), and 20 lines 0.05 s apart (a slow build).

    python bench/shell_live_bench.py            # ~1 minute
    python bench/shell_live_bench.py --repeats 3

Results: a table, and ``bench/results/shell_live_bench.json``. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from probes import machine_info

from errands.config import SecretSettings, Settings
from errands.tools.builtin.shell import make_shell_tool
from errands.tools.tool import ToolContext

RESULTS = Path(__file__).parent / "results" / "shell_live_bench.json"
SECRET_ENV = "BENCH_LIVE_SECRET"
WORKLOADS = {
    "40k short lines": "seq 1 40000 | sed 's/^/line /'",
    "50 MB, one line": "head -c 50000000 /dev/zero | tr '\\0' x",
    "20 lines, 0.05 s apart": "for i in $(seq 1 20); do echo step $i; sleep 0.05; done",
}


async def _once(command: str, mode: str, home: Path) -> tuple[float, int, int]:
    settings = Settings(home=home)
    if mode == "live+secret":
        settings = settings.model_copy(
            update={"secrets": {"TOKEN": SecretSettings(env=SECRET_ENV, hosts=["example.com"])}}
        )
    pieces = [0, 0]

    def sink(stream: str, text: str) -> None:
        pieces[0] += 1
        pieces[1] += len(text)

    tool = make_shell_tool()
    ctx = ToolContext(
        "bench", 1, "bench.1.0", home / "ws", settings=settings,
        on_output=None if mode == "anchor" else sink,
    )  # fmt: skip
    args = tool.validate({"command": command, "timeout_s": 120})
    started = time.perf_counter()
    await tool.invoke(args, ctx)
    return time.perf_counter() - started, pieces[0], pieces[1]


async def main(repeats: int) -> dict[str, Any]:
    os.environ[SECRET_ENV] = "s3cr3t-" + "k" * 33
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "ws").mkdir()
        for name, command in WORKLOADS.items():
            for mode in ("anchor", "live", "live+secret"):
                runs = [await _once(command, mode, home) for _ in range(repeats)]
                rows.append(
                    {
                        "workload": name,
                        "mode": mode,
                        "median_s": statistics.median(r[0] for r in runs),
                        "pieces": runs[-1][1],
                        "chars_shown": runs[-1][2],
                    }
                )
                r = rows[-1]
                print(
                    f"{name:24} {mode:12} {r['median_s'] * 1000:9.1f} ms"
                    f"  {r['pieces']:6} pieces  {r['chars_shown']:9} chars shown"
                )
    return {"machine": machine_info(Path(tempfile.gettempdir())), "repeats": repeats, "rows": rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    result = asyncio.run(main(parser.parse_args().repeats))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")
