"""Tool search benchmark: the full ``errands eval tool-search`` run, with timings and an anchor.

On BFCL's corpus (``tests/data/tool-retrieval``: 3,386 tools, 1,350 development questions):

- errands' search (:mod:`errands.tools.search.evaluate`) at k = 1, 5, 10 and 20: recall by
  name and by id, tool tokens per request, by category (multi-turn categories at k = 20);
- side by side, in the same run, the same index with BM25 alone (no embeddings: the
  search before them), and the corpus README's anchor: plain BM25 (FTS5, Porter
  stemming) over each tool's name and description as one text, every definition a result;
- the time to build the index over the whole pool and per search (median, p95, max),
  with and without the embeddings, measured alternately.

    python bench/tool_search_bench.py                       # the corpus in tests/data
    python bench/tool_search_bench.py --tools T.jsonl --queries Q.jsonl

Results are printed as a table and written to ``bench/results/tool_search.json``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from probes import machine_info

from errands.tools.search.evaluate import evaluate, load_queries, load_tools, table
from errands.tools.search.index import IndexedTool, ToolIndex, words

HERE = Path(__file__).parent
DATA = HERE.parent / "tests" / "data" / "tool-retrieval"
RESULTS = HERE / "results" / "tool_search.json"


def anchor(tools: list[dict[str, Any]], queries: list[Any], k: int) -> dict[str, float]:
    """Plain BM25 over name + description (one field, no name split, every definition):
    single-turn recall@k by name and by id."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE d USING fts5(text, tokenize = 'porter unicode61')")
    db.executemany(
        "INSERT INTO d(rowid, text) VALUES (?, ?)",
        ((i, f"{t['name']} {t['description']}") for i, t in enumerate(tools)),
    )
    hits_name = hits_id = n = 0
    for q in queries:
        if q.multi_turn:
            continue
        terms = " OR ".join(f'"{w}"' for w in dict.fromkeys(words(q.query)))
        rows = db.execute(
            "SELECT rowid FROM d WHERE d MATCH ? ORDER BY bm25(d), rowid LIMIT ?", (terms, k)
        ).fetchall()
        found = [tools[r] for (r,) in rows]
        n += 1
        hits_name += all(g in {t["name"] for t in found} for g in q.gold_names)
        hits_id += all(g in {t["id"] for t in found} for g in q.gold)
    db.close()
    return {"recall_name": round(hits_name / n, 4), "recall_id": round(hits_id / n, 4)}


def bm25_alone(tools: Sequence[IndexedTool]) -> ToolIndex:
    return ToolIndex(tools, embedder=None)


def timings(tools: list[dict[str, Any]], queries: list[Any]) -> dict[str, dict[str, float]]:
    """Build and search times of errands' index and of BM25 alone, taken in turns."""
    kinds: dict[str, Callable[[Sequence[IndexedTool]], ToolIndex]] = {
        "errands": ToolIndex,
        "bm25_alone": bm25_alone,
    }
    indexed = [IndexedTool(t["name"], t["description"], t["parameters"]) for t in tools]
    builds: dict[str, list[float]] = {kind: [] for kind in kinds}
    indexes: dict[str, ToolIndex] = {}
    for _ in range(3):
        for kind, make in kinds.items():
            t0 = time.perf_counter()
            index = make(indexed)
            builds[kind].append(time.perf_counter() - t0)
            indexes.setdefault(kind, index)
    per: dict[str, list[float]] = {kind: [] for kind in kinds}
    for q in queries:
        for kind, index in indexes.items():
            t0 = time.perf_counter()
            index.search(q.query, 5)
            per[kind].append(time.perf_counter() - t0)
    out = {}
    for kind, times in per.items():
        indexes[kind].close()
        times.sort()
        out[kind] = {
            "build_ms_median": round(statistics.median(builds[kind]) * 1000, 1),
            "search_ms_median": round(statistics.median(times) * 1000, 3),
            "search_ms_p95": round(times[int(0.95 * len(times))] * 1000, 3),
            "search_ms_max": round(times[-1] * 1000, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tools", type=Path, default=DATA / "tools.jsonl")
    parser.add_argument("--queries", type=Path, default=DATA / "queries-dev.jsonl")
    args = parser.parse_args()
    tools, queries = load_tools(args.tools), load_queries(args.queries)
    runs = {k: evaluate(tools, queries, k) for k in (1, 5, 10, 20)}
    alone = {k: evaluate(tools, queries, k, bm25_alone) for k in (5, 10, 20)}
    anchors = {k: anchor(tools, queries, k) for k in (5, 10, 20)}
    times = timings(tools, queries)
    print(table(runs[5]))
    print()
    print(table(alone[5]))
    print()
    head = f"{'single-turn':<14}{'k':>4}  {'errands name/id':>17}  {'BM25 alone':>17}"
    print(f"{head}  {'anchor name/id':>17}")
    for k in (5, 10, 20):
        s, b, a = runs[k]["single_turn"], alone[k]["single_turn"], anchors[k]
        mine = f"{s['recall@k']:.1%}/{s['recall@k_id']:.1%}"
        before = f"{b['recall@k']:.1%}/{b['recall@k_id']:.1%}"
        theirs = f"{a['recall_name']:.1%}/{a['recall_id']:.1%}"
        print(f"{'':<14}{k:>4}  {mine:>17}  {before:>17}  {theirs:>17}")
    print()
    for kind, t in times.items():
        print(
            f"{kind}: index over {len(tools)} tools: {t['build_ms_median']} ms; a search: "
            f"{t['search_ms_median']} ms median, {t['search_ms_p95']} ms p95"
        )
    summary = {
        "tools": str(args.tools),
        "queries": str(args.queries),
        "runs": {str(k): r for k, r in runs.items()},
        "bm25_alone": {str(k): r for k, r in alone.items()},
        "anchor_bm25_name_description": {str(k): a for k, a in anchors.items()},
        "timings": times,
        "machine": machine_info(HERE),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
