"""``errands eval tool-search``: how well the tool search finds the tools a question needs.

The corpus is BFCL's, as ``tests/data/tool-retrieval/README.md`` describes it: a pool of
tools (``tools.jsonl``: ``id``, ``name``, ``description``, ``parameters``) and
questions (``queries-*.jsonl``: ``qid``, ``query``, ``gold`` ids, ``category``, and
``gold_names``). For each question the index ranks the whole pool, and:

- **recall@k**: the share of questions whose gold tools are *all* among the first k,
  matched by name (the primary figure: a registry holds one tool per name, so the
  ranking keeps one tool per name, as errands does) and by id (the exact definition:
  the ranking keeps every definition, since the pool holds up to 62 of one name);
  single-turn questions at k (5 by default) and at 1, multi-turn categories
  (``multi_turn*``) separately at k = 20;
- **tokens**: the mean tool-schema tokens of a request that offers the k tools found
  (characters / 4 of the ``json.dumps`` of their ``{name, description, parameters}``).

The ranking is errands' (:class:`~errands.tools.search.index.ToolIndex`: BM25, fused with
the static embeddings when they are installed; ``ranking`` says which).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errands.errors import UserError
from errands.tools.search.index import IndexedTool, ToolIndex

__all__ = ["MULTI_TURN_K", "Query", "evaluate", "load_queries", "load_tools", "table"]

MULTI_TURN_K = 20


@dataclass(frozen=True)
class Query:
    qid: str
    query: str
    gold: tuple[str, ...]
    gold_names: tuple[str, ...]
    category: str

    @property
    def multi_turn(self) -> bool:
        return self.category.startswith("multi_turn")


def _lines(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} file {path}: {exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object")
        yield number, row


def _field(path: Path, number: int, row: dict[str, Any], key: str, kind: type) -> Any:
    value = row.get(key)
    if not isinstance(value, kind):
        raise UserError(f"{path}:{number}: {key!r} is missing or not a {kind.__name__}")
    return value


def load_tools(path: Path) -> list[dict[str, Any]]:
    """The tool pool: one JSON object a line with id, name, description, parameters."""
    tools = []
    for number, row in _lines(path, "tools"):
        for key in ("id", "name", "description"):
            _field(path, number, row, key, str)
        _field(path, number, row, "parameters", dict)
        tools.append(row)
    if not tools:
        raise UserError(f"tools file {path} has no tools")
    return tools


def load_queries(path: Path) -> list[Query]:
    """The questions: one JSON object a line with qid, query, gold ids and category
    (``gold_names``, when missing, are the part of each gold id before ``#``)."""
    queries = []
    for number, row in _lines(path, "queries"):
        gold = _field(path, number, row, "gold", list)
        names = row.get("gold_names") or [str(g).split("#", 1)[0] for g in gold]
        queries.append(
            Query(
                qid=str(row.get("qid", number)),
                query=_field(path, number, row, "query", str),
                gold=tuple(str(g) for g in gold),
                gold_names=tuple(str(n) for n in names),
                category=str(row.get("category") or "uncategorised"),
            )
        )
    if not queries:
        raise UserError(f"queries file {path} has no questions")
    return queries


def _tokens(tools: list[dict[str, Any]]) -> int:
    listed = [
        {"name": t["name"], "description": t["description"], "parameters": t["parameters"]}
        for t in tools
    ]
    return len(json.dumps(listed)) // 4


def evaluate(
    tools: list[dict[str, Any]],
    queries: list[Query],
    k: int = 5,
    index_of: Callable[[Sequence[IndexedTool]], ToolIndex] = ToolIndex,
) -> dict[str, Any]:
    """Recall and tokens by category, and for all single-turn questions together
    (*index_of*: how the tools are indexed; errands' :class:`ToolIndex` by default)."""
    index = index_of([IndexedTool(t["name"], t["description"], t["parameters"]) for t in tools])
    ranking = index.ranking
    try:
        rows: dict[str, dict[str, float]] = {}
        for q in queries:
            depth = MULTI_TURN_K if q.multi_turn else k
            found = [tools[i] for i in index.search(q.query, depth)]
            every = [tools[i] for i in index.search(q.query, depth, distinct_names=False)]
            names = {t["name"] for t in found}
            ids = {t["id"] for t in every}
            row = rows.setdefault(
                q.category,
                {"n": 0, "r1_name": 0, "r1_id": 0, "rk_name": 0, "rk_id": 0, "tokens": 0},
            )
            row["n"] += 1
            row["r1_name"] += all(n in {t["name"] for t in found[:1]} for n in q.gold_names)
            row["r1_id"] += all(g in {t["id"] for t in every[:1]} for g in q.gold)
            row["rk_name"] += all(n in names for n in q.gold_names)
            row["rk_id"] += all(g in ids for g in q.gold)
            row["tokens"] += _tokens(found)
    finally:
        index.close()
    single = [c for c in rows if not c.startswith("multi_turn")]
    out: dict[str, Any] = {
        "k": k,
        "multi_turn_k": MULTI_TURN_K,
        "tools": len(tools),
        "ranking": ranking,
    }
    out["categories"] = {c: _summary(rows[c], MULTI_TURN_K if c not in single else k) for c in rows}
    if single:
        total = {key: sum(rows[c][key] for c in single) for key in rows[single[0]]}
        out["single_turn"] = _summary(total, k)
    return out


def _summary(row: dict[str, float], k: int) -> dict[str, Any]:
    n = row["n"]
    return {
        "questions": int(n),
        "k": k,
        "recall@1": round(row["r1_name"] / n, 4),
        "recall@1_id": round(row["r1_id"] / n, 4),
        f"recall@{k}": round(row["rk_name"] / n, 4),
        f"recall@{k}_id": round(row["rk_id"] / n, 4),
        "recall@k": round(row["rk_name"] / n, 4),
        "recall@k_id": round(row["rk_id"] / n, 4),
        "tokens_per_request": round(row["tokens"] / n, 1),
    }


def table(result: dict[str, Any]) -> str:
    """*result* as a plain-text table: a line per category, then single-turn overall."""
    head = f"{'category':<22}{'n':>6}{'k':>4}  {'r@1 name/id':>13}  {'r@k name/id':>13}  tokens"
    lines = [f"tool search over {result['tools']} tools", head]

    def line(label: str, s: dict[str, Any]) -> str:
        r1 = f"{s['recall@1']:.1%}/{s['recall@1_id']:.1%}"
        rk = f"{s['recall@k']:.1%}/{s['recall@k_id']:.1%}"
        return f"{label:<22}{s['questions']:>6}{s['k']:>4}  {r1:>13}  {rk:>13}  {s['tokens_per_request']:>6.0f}"

    for name, s in result["categories"].items():
        lines.append(line(name, s))
    if "single_turn" in result:
        lines.append(line("single-turn (all)", result["single_turn"]))
    lines.append(f"ranking: {result['ranking']}")
    lines.append(
        "recall: all gold tools among the first k, by name (one tool per name) / by exact "
        f"id (every definition ranked); multi-turn categories at k={result['multi_turn_k']}; "
        "tokens: chars/4 of the k schemas' JSON"
    )
    return "\n".join(lines)
