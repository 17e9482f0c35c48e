"""Rate-limit benchmark: 1,000 concurrent errands against a provider that enforces limits.

The provider is the OpenAI Chat Completions wire simulator (``tests/sim``) with its
optional limiter switched on: a sliding window of ``--window`` seconds (a real
provider's is 60 s; a shorter window keeps the run short, the arithmetic is the same)
in which it admits at most ``--requests`` requests and/or ``--tokens`` input tokens,
answering anything over with HTTP 429 and ``retry-after`` / ``retry-after-ms``.

The errands are real: ``create_errand`` + :meth:`Runner.claim` + ``wait_idle`` through
the loop, the SQLite store (WAL, ``synchronous=FULL``) and the model stack
``resolve_model`` builds (retries + the shared rate limiter + the official ``openai``
SDK over HTTP), each errand one model call answered with text (no tools). The
endpoint is a named one, ``[providers.sim]`` with ``rpm`` / ``itpm`` and
``limit_window_seconds`` matching the simulator's limits.

Cases:

* ``rpm-bound``: the request limit binds;
* ``tpm-bound``: the input-token limit binds (long errand texts; the limiter estimates
  tokens as chars / 4 and learns the provider's count from the reported usage);
* ``no-limiter``: the negative control -- the same limits at the simulator, no limits
  configured in errands (the default), so only retries and the 429 pause hold it back
  (a third of the errands: it only has to show the 429s, and its retry tail is long).

Targets: >= 90% of the binding limit used, < 1% of requests answered 429 (the
negative control must show many). *Used* is the admitted rate over the run (first to
last admission) divided by the limit's rate; the table also shows the busiest single
window (must never exceed 100%, by the simulator's construction).

    python bench/ratelimit_bench.py            # all three cases, 1,000 errands each
    python bench/ratelimit_bench.py --quick    # 300 errands each
    python bench/ratelimit_bench.py --only rpm-bound --n 1000

Results are printed as a table and written to ``bench/results/ratelimit_bench.json``.
``tests/test_reliability.py`` runs a test-sized variant (36 errands, 2 s window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from probes import machine_info, text_table  # noqa: E402  (bench/ is the script's directory)
from sim.core import SimLimits, Turn, approx_tokens  # noqa: E402
from sim.openai_server import OpenAIChatSim  # noqa: E402

from errands.config import ProviderSettings, load_settings  # noqa: E402
from errands.core.states import ErrandState  # noqa: E402
from errands.harness import build  # noqa: E402
from errands.policy.hook import AllowAll  # noqa: E402

RESULTS = HERE / "results" / "ratelimit_bench.json"
KEY_ENV = "RATELIMIT_BENCH_KEY"


class _NoCache:
    """The simulator's prefix-cache emulation compares each prompt with every earlier
    one (quadratic); caching is not what this benchmark measures."""

    def lookup_and_store(self, model: str, prompt: str) -> int:
        return 0


def prompt_tokens(body: Any) -> int:
    """What the OpenAI simulator reports as ``prompt_tokens`` (and here counts)."""
    prompt = json.dumps(
        [body.get("tools") or [], body["messages"]], sort_keys=True, separators=(",", ":")
    )
    return approx_tokens(prompt)


@dataclass
class Case:
    name: str
    limited: bool  # errands configured with the limits
    requests: int | None  # per window, at the simulator
    tokens: int | None
    text_chars: int  # errand text length


@dataclass
class Row:
    case: str
    errands: int
    window_s: float
    limit: str
    done: int
    failed: int
    requests: int  # requests the simulator received
    answered_429: int
    share_429: float
    used: float  # of the binding limit, over the run
    busiest_window: float  # of the binding limit
    wall_s: float
    p50_s: float  # all errands started at once -> this one done
    p95_s: float
    retries: int


def _used(admitted: list[tuple[float, int]], case: Case, window: float) -> tuple[float, float, str]:
    """(share of the binding limit used over the run, busiest window's share, which)."""
    times = [t for t, _ in admitted]
    if len(times) < 2:
        return 0.0, 0.0, "-"
    span = times[-1] - times[0]
    if case.requests is not None and (case.tokens is None or case.name != "tpm-bound"):
        amounts = [1] * len(times)
        per_window, which = case.requests, f"{case.requests} req / {window:g}s"
    else:
        assert case.tokens is not None
        amounts = [n for _, n in admitted]
        per_window, which = case.tokens, f"{case.tokens} input tok / {window:g}s"
    # over the run: what was admitted after the first admission, per second, vs the limit
    used = (sum(amounts) - amounts[0]) / span / (per_window / window) if span > 0 else 0.0
    busiest, j, inside = 0, 0, 0
    for i, t in enumerate(times):
        inside += amounts[i]
        while times[j] <= t - window:
            inside -= amounts[j]
            j += 1
        busiest = max(busiest, inside)
    return used, busiest / per_window, which


async def run_case(case: Case, n: int, window: float, base: Path) -> Row:
    home = Path(tempfile.mkdtemp(prefix=f"rl-{case.name}-", dir=base))
    sim = OpenAIChatSim()
    sim.cache = _NoCache()  # type: ignore[assignment]
    sim.script(default=Turn(text="Done: nothing else to do.", cached_tokens=0))
    sim.start()
    try:
        limiter = sim.enforce_limits(
            SimLimits(
                requests=case.requests,
                input_tokens=case.tokens,
                window=window,
                tokens=prompt_tokens,
            )
        )
        assert limiter is not None
        os.environ[KEY_ENV] = sim.api_key
        # the negative control keeps errands' default retry settings, as a user would
        limits: dict[str, Any] = {"max_attempts": 10, "retry_max_seconds": 600}
        if not case.limited:
            limits = {}
        if case.limited:
            if case.requests is not None:
                limits["rpm"] = round(case.requests * 60 / window)
            if case.tokens is not None:
                limits["itpm"] = round(case.tokens * 60 / window)
        endpoint = ProviderSettings(
            kind="openai",
            base_url=sim.base_url,
            api_key_env=KEY_ENV,
            limit_window_seconds=window,
            **limits,
        )
        settings = load_settings(home).model_copy(update={"providers": {"sim": endpoint}})
        harness = build(settings, builtins=False, policy=AllowAll())
        store = harness.store
        try:
            filler = ("Check the listing and report back. " * 400)[: case.text_chars]
            ids: list[str] = []
            for first in range(0, n, 100):  # concurrently, in batches (group commit)
                ids += await asyncio.gather(
                    *(
                        harness.create(f"errand {i}: {filler}", model="sim:gpt-sim")
                        for i in range(first, min(n, first + 100))
                    )
                )
            runner = harness.runner()
            model = harness.models("sim:gpt-sim")  # the shared stack every errand uses
            start, t0 = time.monotonic(), time.time()
            claimed = await runner.claim()
            assert len(claimed) == n
            await runner.wait_idle()
            wall = time.monotonic() - start
            await model.aclose()  # the SDK client's connections, before the loop closes
            views = [await store.view(eid) for eid in ids]
            durations = sorted(v.updated_at - t0 for v in views)
        finally:
            await harness.close()
        received = [r for r in sim.requests if r.method == "POST"]
        rejected = sum(1 for r in received if r.status == 429)
        used, busiest, which = _used(limiter.admitted, case, window)
        return Row(
            case=case.name,
            errands=n,
            window_s=window,
            limit=which,
            done=sum(1 for v in views if v.state is ErrandState.done),
            failed=sum(1 for v in views if v.state is ErrandState.failed),
            requests=len(received),
            answered_429=rejected,
            share_429=rejected / len(received) if received else 0.0,
            used=used,
            busiest_window=busiest,
            wall_s=wall,
            p50_s=statistics.median(durations),
            p95_s=durations[int(0.95 * (len(durations) - 1))],
            retries=getattr(model, "retries", 0),
        )
    finally:
        sim.stop()
        shutil.rmtree(home, ignore_errors=True)


HEADERS = (
    "case",
    "errands",
    "limit (per window)",
    "done",
    "failed",
    "requests",
    "429s",
    "429 %",
    "used %",
    "busiest %",
    "wall s",
    "p50 s",
    "p95 s",
)


def table(rows: list[Row]) -> str:
    lines = [
        [
            r.case,
            str(r.errands),
            r.limit,
            str(r.done),
            str(r.failed),
            str(r.requests),
            str(r.answered_429),
            f"{100 * r.share_429:.2f}",
            f"{100 * r.used:.1f}",
            f"{100 * r.busiest_window:.1f}",
            f"{r.wall_s:.1f}",
            f"{r.p50_s:.1f}",
            f"{r.p95_s:.1f}",
        ]
        for r in rows
    ]
    return text_table(HEADERS, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000, help="errands per case")
    parser.add_argument("--window", type=float, default=10.0, help="the limit window (s)")
    parser.add_argument("--requests", type=int, default=250, help="requests per window")
    parser.add_argument("--tokens", type=int, default=125_000, help="input tokens per window")
    parser.add_argument("--quick", action="store_true", help="300 errands per case")
    parser.add_argument("--only", choices=["rpm-bound", "tpm-bound", "no-limiter"], default=None)
    args = parser.parse_args()
    n = 300 if args.quick else args.n
    cases = [
        # tokens set but ~3x looser than the request limit: the request limit binds
        Case("rpm-bound", True, args.requests, args.tokens * 4, 200),
        # ~2,000-character errands (~530 tokens): the token limit binds
        Case("tpm-bound", True, args.requests * 4, args.tokens, 2000),
        Case("no-limiter", False, args.requests, args.tokens * 4, 200),
    ]
    if args.only:
        cases = [c for c in cases if c.name == args.only]
    base = Path(tempfile.gettempdir())
    info = machine_info(base, ("openai", "httpx"))
    info["note"] = (
        "simulator and errands share the machine (the simulator is threads in "
        "the same process); the box is shared with other work, see the load averages"
    )
    started = time.monotonic()
    rows: list[Row] = []
    for case in cases:
        # the negative control only has to show the 429s: a third of the errands keeps
        # the run near two minutes (without the limiter, retry backoff makes a long tail)
        count = n if case.limited else min(n, max(100, n // 3))
        row = asyncio.run(run_case(case, count, args.window, base))
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    info["load_avg_at_end"] = os.getloadavg()
    print()
    print(table(rows))
    targets = {
        r.case: {
            "used >= 90%": r.used >= 0.9,
            "429s < 1%": r.share_429 < 0.01,
            "busiest window <= 100%": r.busiest_window <= 1.0,
        }
        for r in rows
        if r.case != "no-limiter"
    }
    for r in rows:
        if r.case == "no-limiter":
            targets[r.case] = {"negative control: 429s >= 1%": r.share_429 >= 0.01}
    print()
    for case_name, checks in targets.items():
        print(case_name, ", ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in checks.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "ratelimit_bench",
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.monotonic() - started, 1),
                "machine": info,
                "workload": {
                    "errands_per_case": {r.case: r.errands for r in rows},
                    "window_seconds": args.window,
                    "errand": "one model call answered with text, no tools; create_errand + "
                    "Runner.claim() + wait_idle(); SQLiteStore WAL synchronous=FULL",
                    "model_stack": "resolve_model('sim:gpt-sim'): RetryingModel(RateLimitedModel"
                    "(OpenAIChatModel)) over HTTP to the simulator",
                    "simulator_limits": "sliding window per --window: requests and/or input "
                    "tokens (prompt_tokens as the simulator reports them); 429 + retry-after",
                },
                "targets": targets,
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
