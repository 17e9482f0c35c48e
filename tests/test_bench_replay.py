"""The loop benchmark's workload goes through the real path, and its log replays.

Runs ``bench/loop_bench.py``'s own workload function (50 errands, tiny model latency)
and then folds every errand's log from the store: each errand is ``done`` after
exactly the benchmark's steps (one tool call each) and one closing answer, with
contiguous sequence numbers, every intent logged before its result, and projections
that match the fold. If the benchmark drifted away from what ``errands run`` does,
this would fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.states import ErrandState, fold
from errands.store.sqlite import SQLiteStore
from errands.store.sync import BlockingStore

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import loop_bench  # noqa: E402  (bench/ is not a package)

N = 50


@pytest.mark.timeout(60)
async def test_bench_workload_replays_from_the_log(tmp_path: Path) -> None:
    work = await loop_bench.errands_workload(tmp_path / "home", N, latency_ms=1.0)
    steps = loop_bench.STEPS
    result = work.result
    assert result.done == N, f"only {result.done} of {N} errands finished"
    assert result.steps == N * steps
    assert result.commits_per_s > 0 and result.body_bytes_per_step > 0
    assert len(set(work.errand_ids)) == N

    store = BlockingStore(make=lambda: SQLiteStore(work.db_path))
    try:
        for errand_id in work.errand_ids:
            stored = store.read(errand_id)
            seqs = [s.seq for s in stored]
            assert seqs == list(range(1, len(seqs) + 1)), f"{errand_id}: gaps in {seqs}"

            events = [s.event for s in stored]
            view = fold(errand_id, [(s.seq, s.event) for s in stored])
            assert view.state is ErrandState.done, (errand_id, view.state, view.reason)
            assert view.result == loop_bench.FINAL

            responses = [e for e in events if isinstance(e, ev.ModelResponded)]
            with_calls = [r for r in responses if r.tool_calls]
            results = [e for e in events if isinstance(e, ev.ToolResult)]
            intents = [e for e in events if isinstance(e, ev.ToolIntent)]
            assert len(with_calls) == steps, f"{errand_id}: {len(with_calls)} tool turns"
            assert len(responses) == steps + 1  # and one closing answer
            assert view.steps == steps + 1
            assert len(intents) == len(results) == steps
            assert all(r.ok and r.content.text == loop_bench.TOOL_TEXT for r in results)
            assert all(i.tool == "note" and i.idempotent for i in intents)

            # every result names its intent, and the intent came first (outbox rule)
            at = {id(e): s.seq for s, e in zip(stored, events, strict=True)}
            intent_seqs = {at[id(i)] for i in intents}
            for r in results:
                assert r.intent_seq in intent_seqs and r.intent_seq < at[id(r)]

            # the loop's own fold agrees: nothing left to do, nothing in flight
            p = Progress.empty(errand_id)
            for s in stored:
                p.apply(s.seq, s.event)
            assert p.in_flight() == [] and p.unrouted() == [] and not p.needs_model
            assert p.final_text == loop_bench.FINAL

        assert store.integrity_check() == []
    finally:
        store.close()
