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

With small static embeddings installed (:mod:`~errands.tools.search.embed`: WordLlama's
model, shipped in its wheel), each ranking is fused with the cosine ranking of the
tool's embedded name, description and parameters by reciprocal rank fusion (a tool's
score: the sum over both rankings of weight / (60 + its place), the embeddings' weight
0.3): words the tool's text does not use ("forecast" for ``get_current_weather``) still
find it. Except the whole question's ranking when it has several requests: the mean
vector of several asks points at none of them, so that one is BM25's alone, and each
request's own ranking is fused.

Ties are broken by the order the tools were given in, so a search is a pure function
of the tools, the question and the embeddings installed: a resumed errand finds what
it found before.

Nothing here reaches the network: the index lives in an in-memory SQLite database
(the standard library's ``sqlite3``, built with FTS5), the embeddings in a numpy array.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from errands.tools.search.embed import Embedder, load_embedder

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

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
# reciprocal rank fusion with the embeddings' ranking: k (the usual 60), the embeddings'
# weight (BM25's is 1), and how deep each ranking is fused (at least)
RRF_K = 60
EMBEDDING_WEIGHT = 0.3
FUSE_DEPTH = 100

_DEFAULT: Any = object()  # ToolIndex(embedder=...) not given: the installed one, if any

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


def _embedded_text(tool: IndexedTool) -> str:
    """What a tool's vector is made of: its name's words, description and parameters."""
    parameters = " ".join(_parameter_text(tool.parameters))
    return f"{' '.join(words(tool.name))}: {tool.description} {parameters}"


class ToolIndex:
    """BM25 over tools' names, descriptions and parameters (SQLite FTS5), fused with
    static embeddings when *embedder* (by default the installed one: None when there is
    none, and None for BM25 alone) is given."""

    phrase_bonus = PHRASE_BONUS
    embedding_weight = EMBEDDING_WEIGHT

    def __init__(self, tools: Iterable[IndexedTool], embedder: Embedder | None = _DEFAULT) -> None:
        self.tools: tuple[IndexedTool, ...] = tuple(tools)
        self.embedder: Embedder | None = load_embedder() if embedder is _DEFAULT else embedder
        self._vectors: npt.NDArray[np.float32] | None = None
        # a text's places by the embeddings (a search ranks a text once by name, once by id)
        self._semantic: dict[tuple[str, int], list[int]] = {}
        if self.embedder is not None and self.tools:
            self._vectors = self.embedder.embed([_embedded_text(t) for t in self.tools])
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

    @property
    def ranking(self) -> str:
        """How tools are ranked: ``bm25`` or ``bm25+embeddings (MODEL)``."""
        return "bm25" if self.embedder is None else f"bm25+embeddings ({self.embedder.name})"

    def _fused(
        self,
        text: str,
        limit: int,
        pool: int = POOL,
        stems: Sequence[str] | None = None,
        *,
        fuse: bool = True,
    ) -> list[tuple[int, float]]:
        """:meth:`_scored`'s ranking, fused with the embeddings' (when there are, and
        *fuse*) by reciprocal rank fusion: scores are then RRF's (higher is better);
        each ranking at least :data:`FUSE_DEPTH` deep."""
        if self._vectors is None or self.embedder is None or not fuse:
            return self._scored(text, limit, pool, stems)
        import numpy as np

        depth = max(limit, FUSE_DEPTH)
        if not _terms(text):
            return []
        lexical = self._scored(text, depth, depth, stems)
        semantic = self._semantic.get((text, depth))
        if semantic is None:
            # (einsum's own loop, not BLAS's: a multi-threaded BLAS takes 20-30x longer
            # for this on a busy machine, and its sums may vary with its threads)
            similarity = np.einsum("ij,j->i", self._vectors, self.embedder.embed([text])[0])
            # (a stable sort: equal similarities keep the order the tools were given in)
            semantic = np.argsort(-similarity, kind="stable")[:depth].tolist()
            if not similarity.any():  # (no word the embeddings know)
                semantic = []
            if len(self._semantic) >= 256:
                self._semantic.clear()
            self._semantic[(text, depth)] = semantic
        fused: dict[int, float] = {}
        for place, (rowid, _) in enumerate(lexical):
            fused[rowid] = 1.0 / (RRF_K + place)
        for place, rowid in enumerate(semantic):
            fused[rowid] = fused.get(rowid, 0.0) + self.embedding_weight / (RRF_K + place)
        return sorted(fused.items(), key=lambda row: (-row[1], row[0]))[:limit]

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

    def ranked(self, text: str, limit: int, *, fuse: bool = True) -> list[int]:
        """The best *limit* tools for *text* (places in the order given), best first
        (fused with the embeddings', if any and *fuse*)."""
        return [rowid for rowid, _ in self._fused(text, limit, fuse=fuse)]

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
        requests = self.requests(query)
        several = len(requests) >= 2
        whole = firsts(self.ranked(query, max(POOL, 3 * depth), fuse=not several), depth)
        found = whole[:KEEP_WHOLE]
        if several and len(found) < k:
            requests = requests[:MAX_SENTENCES]
            supported = {key(r) for r in whole[:SUPPORT_DEPTH]}
            bests: list[tuple[float, int, list[int]]] = []
            for i, (sentence, stems) in enumerate(
                zip(requests, self._stems(requests), strict=True)
            ):
                scored = self._fused(sentence, SUPPORT_DEPTH, SUPPORT_DEPTH, stems)
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
