"""A tool index: which tools answer a question, ranked by SQLite FTS5's BM25.

Each tool is one document of three weighted fields: its name (split into words:
``get_current_weather``, ``getCurrentWeather`` and ``weather.current`` all give their
words), its description, and its parameters (their names, split the same way, and
their descriptions). FTS5's ``porter`` tokenizer stems every word, so ``calculates``
finds ``calculate``. A question is split the same way, its common English words
dropped, and its words OR-ed: BM25 ranks the tools by how many of them they have, how
rare those are, and in which field (a word of the name counts most).

Ties are broken by the order the tools were given in, so a search is a pure function
of the tools and the question: a resumed errand finds what it found before.

Nothing here reaches the network: the index lives in an in-memory SQLite database
(the standard library's ``sqlite3``, built with FTS5).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["IndexedTool", "ToolIndex", "words"]

# name, description, parameters: a word of the name says most about what a tool does
FIELD_WEIGHTS = (4.0, 1.0, 0.6)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)

# common English words a question has and a tool's text says nothing with
_STOP_WORDS = """a about above after again all also am an and any are as at be been being below
    between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our
    ours out over own please same she should so some such than that the their theirs
    them then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours
    yourself get find give tell show want need using use"""
_STOP = frozenset(_STOP_WORDS.split())


def words(text: str) -> list[str]:
    """*text*'s words, lower-case: snake_case, camelCase and dotted names split."""
    return [w.lower() for part in _WORD.findall(text) for w in _CAMEL.sub(" ", part).split()]


@dataclass(frozen=True)
class IndexedTool:
    """What the index reads of a tool (a schema: name, description, JSON parameters)."""

    name: str
    description: str
    parameters: Mapping[str, Any]


def _parameter_text(schema: Any, depth: int = 0) -> list[str]:
    """The names and descriptions of a parameters schema's properties (nested too)."""
    if not isinstance(schema, Mapping) or depth > 4:
        return []
    found: list[str] = []
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for name, sub in props.items():
            found.append(" ".join(words(str(name))))
            if isinstance(sub, Mapping):
                if isinstance(sub.get("description"), str):
                    found.append(sub["description"])
                found.extend(_parameter_text(sub, depth + 1))
                found.extend(_parameter_text(sub.get("items"), depth + 1))
    return found


class ToolIndex:
    """BM25 over tools' names, descriptions and parameters (SQLite FTS5)."""

    def __init__(self, tools: Iterable[IndexedTool]) -> None:
        self.tools: tuple[IndexedTool, ...] = tuple(tools)
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(
            "CREATE VIRTUAL TABLE docs USING fts5(name, description, parameters,"
            " tokenize = 'porter unicode61')"
        )
        self._db.executemany(
            "INSERT INTO docs(rowid, name, description, parameters) VALUES (?, ?, ?, ?)",
            (
                (
                    i,
                    " ".join(words(t.name)),
                    t.description,
                    " ".join(_parameter_text(t.parameters)),
                )
                for i, t in enumerate(self.tools)
            ),
        )

    def close(self) -> None:
        self._db.close()

    def ranked(self, text: str, limit: int) -> list[int]:
        """BM25's best *limit* tools for *text* (places in the order given), best first."""
        terms = list(dict.fromkeys(w for w in words(text) if w not in _STOP))
        if not terms or limit <= 0:
            return []
        match = " OR ".join(f'"{t}"' for t in terms)
        weights = ", ".join(str(w) for w in FIELD_WEIGHTS)
        rows = self._db.execute(
            f"SELECT rowid FROM docs WHERE docs MATCH ? ORDER BY bm25(docs, {weights}), rowid"
            " LIMIT ?",
            (match, limit),
        )
        return [rowid for (rowid,) in rows]

    def search(self, query: str, k: int, *, distinct_names: bool = True) -> list[int]:
        """The places (in the order given) of the *k* tools that best answer *query*,
        best first; with *distinct_names*, one tool per name (its best)."""
        if k <= 0:
            return []
        ranking = self.ranked(query, max(50, 4 * k) if distinct_names else k)
        found: list[int] = []
        names: set[str] = set()
        for rowid in ranking:
            name = self.tools[rowid].name
            if distinct_names and name in names:
                continue
            names.add(name)
            found.append(rowid)
            if len(found) >= k:
                break
        return found

    def names(self, places: Sequence[int]) -> list[str]:
        return [self.tools[i].name for i in places]
