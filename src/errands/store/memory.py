"""Memory across errands, whatever the backend: what a memory, a scope and a query may
be (docs/memory.md). Every store checks its arguments here before it writes or reads,
so a bad one is one clear :class:`~errands.errors.UserError` and nothing is written.

A **scope** is the key memories are kept under: ``person`` (the person who owns this
errands, the default) or ``schedule:NAME`` (the runs of one schedule -- a recipe adds a
schedule, so a recipe's runs share its schedule's scope).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from errands.errors import UserError

if TYPE_CHECKING:
    from errands.store.protocol import Memory

__all__ = [
    "MAX_MEMORY_CHARS",
    "MAX_QUERY_CHARS",
    "MAX_TAGS",
    "PERSON",
    "SCOPE_PATTERN",
    "as_dict",
    "check_limit",
    "check_memory",
    "check_query",
    "check_scope",
    "query_words",
    "scope_of_schedule",
]

PERSON = "person"
MAX_MEMORY_CHARS = 8_000  # a memory is a fact or a preference, not a document
MAX_QUERY_CHARS = 1_000
MAX_TAGS = 8
MAX_TAG_CHARS = 32
MAX_LIMIT = 1_000
# (a schedule's name, as errands.core.schedules accepts it)
SCOPE_PATTERN = r"^(person|schedule:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$"
_SCOPE = re.compile(SCOPE_PATTERN)
_TAG = re.compile(r"[\w.-]{1,32}")
_WORD = re.compile(r"\w+")


def scope_of_schedule(name: str) -> str:
    """The scope of the runs of schedule *name*."""
    return f"schedule:{name}"


def check_scope(scope: str) -> str:
    """*scope* if it is one (``person`` or ``schedule:NAME``); else a UserError."""
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise UserError(
            f"bad memory scope {str(scope)[:80]!r}: use 'person' (the default) or "
            "'schedule:NAME' (the runs of schedule NAME)"
        )
    return scope


def check_memory(scope: str, text: str, tags: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The text (surrounding white space off) and the tags (lower case, each once) to
    keep; a UserError saying what is wrong otherwise."""
    check_scope(scope)
    if not isinstance(text, str) or not text.strip():
        raise UserError("a memory needs some text: it is empty")
    text = text.strip()
    if len(text) > MAX_MEMORY_CHARS:
        raise UserError(
            f"a memory is at most {MAX_MEMORY_CHARS:,} characters; this one has "
            f"{len(text):,}: keep the fact, not the document"
        )
    if "\x00" in text:
        raise UserError("a memory cannot hold a NUL character")
    kept: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise UserError(
                f"bad tag {str(tag)[:40]!r}: a tag is 1 to {MAX_TAG_CHARS} letters, digits, "
                "'.', '-' or '_'"
            )
        if tag.lower() not in kept:
            kept.append(tag.lower())
    if len(kept) > MAX_TAGS:
        raise UserError(f"a memory has at most {MAX_TAGS} tags; this one has {len(kept)}")
    return text, tuple(kept)


def query_words(query: str) -> list[str]:
    """The words of *query* (what a search matches: any of them), each once."""
    words: list[str] = []
    for word in _WORD.findall(query.lower()):
        if word not in words:
            words.append(word)
    return words


def check_query(query: str) -> list[str]:
    """The words of *query*; a UserError if it is too long or has none."""
    if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS:
        raise UserError(f"a memory search is at most {MAX_QUERY_CHARS:,} characters")
    words = query_words(query)
    if not words:
        raise UserError("a memory search needs at least one word")
    return words


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise UserError(f"limit must be 1 to {MAX_LIMIT:,}")
    return limit


def as_dict(m: Memory) -> dict[str, Any]:
    """*m* as JSON data (``errands memory --json``, ``GET /api/memory``)."""
    return {
        "id": m.id,
        "scope": m.scope,
        "text": m.text,
        "tags": list(m.tags),
        "integrity": m.label.integrity.value,
        "confidentiality": m.label.confidentiality.value,
        "at": m.at,
        "errand_id": m.errand_id,
        "seq": m.seq,
    }
