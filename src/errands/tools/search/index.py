"""A tool index: which tools answer a question, ranked by SQLite FTS5's BM25.

Each tool is one document of three weighted fields: its name (split into words:
``get_current_weather``, ``getCurrentWeather`` and ``weather.current`` all give their
words), its description, and its parameters (their names, split the same way, and
their descriptions). FTS5's ``porter`` tokenizer stems every word, so ``calculates``
finds ``calculate``. A question is split the same way, its common English words
dropped, and its words OR-ed: BM25 ranks the tools by how many of them they have, how
rare those are, and in which field (a word of the name counts most). Two adjacent words
of the question that are two adjacent words of a tool's name (``final velocity`` and
``calculate_final_velocity``) add a little more (a phrase bonus).

A question of several sentences may ask for several things ("book a hotel ... Then
convert 1000 dollars to euros ..."): ranked whole, its first places go to variants of the
wordiest request. So the first two places are the whole question's, and each sentence
that asks for something no tool found yet has (its own best is not among the found ones)
adds its own best tool, if the whole question ranks it among its first 30: sentences
whose best scores highest go first, the whole question's ranking fills what is left.

Ties are broken by the order the tools were given in, so a search is a pure function
of the tools and the question: a resumed errand finds what it found before.

Nothing here reaches the network: the index lives in an in-memory SQLite database
(the standard library's ``sqlite3``, built with FTS5).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

__all__ = ["IndexedTool", "ToolIndex", "words"]

# name, description, parameters: a word of the name says most about what a tool does
FIELD_WEIGHTS = (4.0, 1.0, 0.6)

# a bonus, in BM25's units, per pair of adjacent question words that are adjacent name words
PHRASE_BONUS = 1.0
# how many of BM25's best are re-scored with the phrase bonus (at least)
POOL = 100
# several requests in one question: the whole question's first places that are kept, how
# deep a sentence's own ranking is looked at to see whether its request is already
# served, how deep in the whole question's ranking its pick must be, and how many
# content words make a sentence a request
KEEP_WHOLE = 2
SERVED_DEPTH = 2
SUPPORT_DEPTH = 30
SENTENCE_MIN_WORDS = 3
MAX_SENTENCES = 12

_SENTENCE = re.compile(r"(?<=[.?!])\s+|\n+")
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


def _terms(text: str) -> list[str]:
    """*text*'s content words, once each, in order."""
    return list(dict.fromkeys(w for w in words(text) if w not in _STOP))


class ToolIndex:
    """BM25 over tools' names, descriptions and parameters (SQLite FTS5)."""

    phrase_bonus = PHRASE_BONUS

    def __init__(self, tools: Iterable[IndexedTool]) -> None:
        self.tools: tuple[IndexedTool, ...] = tuple(tools)
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._lock = threading.Lock()  # the stemming table is written by each search
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
        # the stems of a text, as the index's tokenizer makes them (for the phrase bonus)
        self._db.execute(
            "CREATE VIRTUAL TABLE stems USING fts5(text, tokenize = 'porter unicode61')"
        )
        self._db.execute("CREATE VIRTUAL TABLE stem_terms USING fts5vocab(stems, 'instance')")
        self._name_pairs: list[frozenset[tuple[str, str]]] = [
            frozenset(pairwise(s)) for s in self._stems([t.name for t in self.tools])
        ]

    def close(self) -> None:
        self._db.close()

    def _stems(self, texts: Sequence[str]) -> list[list[str]]:
        """Each of *texts*' stems, in order (split into words as the index splits them)."""
        found: list[list[str]] = [[] for _ in texts]
        with self._lock:
            self._db.executemany(
                "INSERT INTO stems(rowid, text) VALUES (?, ?)",
                ((i, " ".join(words(t))) for i, t in enumerate(texts)),
            )
            rows = self._db.execute("SELECT doc, term FROM stem_terms ORDER BY doc, offset")
            for doc, term in rows:
                found[doc].append(term)
            self._db.execute("DELETE FROM stems")
        return found

    def _scored(
        self, text: str, limit: int, pool: int = POOL, stems: Sequence[str] | None = None
    ) -> list[tuple[int, float]]:
        """The best *limit* tools for *text* (places in the order given) and their scores
        (BM25 and the phrase bonus: higher is better), best first, from BM25's best
        *pool* (*stems*: *text*'s, when known)."""
        terms = _terms(text)
        if not terms or limit <= 0:
            return []
        match = " OR ".join(f'"{t}"' for t in terms)
        weights = ", ".join(str(w) for w in FIELD_WEIGHTS)
        rows = self._db.execute(
            f"SELECT rowid, bm25(docs, {weights}) FROM docs WHERE docs MATCH ?"
            f" ORDER BY bm25(docs, {weights}), rowid LIMIT ?",
            (match, max(limit, pool)),
        ).fetchall()
        if stems is None:
            stems = self._stems([text])[0]
        pairs = set(pairwise(stems))
        scored = [
            (rowid, -bm25 + self.phrase_bonus * len(pairs & self._name_pairs[rowid]))
            for rowid, bm25 in rows
        ]
        scored.sort(key=lambda row: (-row[1], row[0]))
        return scored[:limit]

    def ranked(self, text: str, limit: int) -> list[int]:
        """The best *limit* tools for *text* (places in the order given), best first."""
        return [rowid for rowid, _ in self._scored(text, limit)]

    def requests(self, query: str) -> list[str]:
        """*query*'s sentences that may each ask for something (enough content words)."""
        return [s for s in _SENTENCE.split(query) if len(_terms(s)) >= SENTENCE_MIN_WORDS]

    def search(self, query: str, k: int, *, distinct_names: bool = True) -> list[int]:
        """The places (in the order given) of the *k* tools that best answer *query*,
        best first; with *distinct_names*, one tool per name (its best)."""
        if k <= 0:
            return []

        def key(rowid: int) -> str | int:
            return self.tools[rowid].name if distinct_names else rowid

        def firsts(rowids: Iterable[int], n: int) -> list[int]:
            found: list[int] = []
            keys: set[str | int] = set()
            for rowid in rowids:
                if key(rowid) not in keys:
                    keys.add(key(rowid))
                    found.append(rowid)
                    if len(found) >= n:
                        break
            return found

        depth = max(k, SUPPORT_DEPTH)
        whole = firsts(self.ranked(query, max(POOL, 3 * depth)), depth)
        found = whole[:KEEP_WHOLE]
        requests = self.requests(query)
        if len(requests) >= 2 and len(found) < k:
            requests = requests[:MAX_SENTENCES]
            supported = {key(r) for r in whole[:SUPPORT_DEPTH]}
            bests: list[tuple[float, int, list[int]]] = []
            for i, (sentence, stems) in enumerate(
                zip(requests, self._stems(requests), strict=True)
            ):
                scored = self._scored(sentence, SUPPORT_DEPTH, SUPPORT_DEPTH, stems)
                if scored:
                    bests.append((-scored[0][1], i, firsts((r for r, _ in scored), SERVED_DEPTH)))
            for _, _, own in sorted(bests):
                if len(found) >= k:
                    break
                served = {key(r) for r in found}
                if key(own[0]) in supported and not any(key(r) in served for r in own):
                    found.append(own[0])
        return firsts([*found, *whole], k)

    def names(self, places: Sequence[int]) -> list[str]:
        return [self.tools[i].name for i in places]
