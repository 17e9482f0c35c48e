"""The labelled pieces of an errand's context, as flow control sees them.

:class:`~errands.core.progress.Progress` keeps one :class:`Piece` per content item that
entered the context -- the person's request and messages, tool results, what a watch or
a schedule gave -- with the event's sequence number and time; the policy
(:mod:`errands.policy.flow`) traces a call's arguments to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from errands.core import events as ev
from errands.core.labels import Confidentiality, Integrity

__all__ = ["Piece"]


@dataclass(frozen=True, slots=True)
class Piece:
    """One labelled piece of the context: the event's sequence number and time, and the
    content (its text, provenance and labels)."""

    seq: int
    at: float
    content: ev.Content
    # words given to the errand (its request, a message: the person's, a schedule's, a
    # watch's) rather than a tool's result -- even errands' own refusal, which may repeat
    # what the model wrote, is a result
    said: bool = False

    @property
    def trusted(self) -> bool:
        return self.content.integrity is Integrity.trusted

    @property
    def private(self) -> bool:
        return self.content.confidentiality is not Confidentiality.public

    def describe(self) -> str:
        """Where it came from, for a person: "the page fetched at 10:02 from URL"."""
        when = datetime.fromtimestamp(self.at).strftime("%H:%M")
        source = self.content.provenance
        name = source.name or source.kind
        origin = f" from {source.source}" if source.source else ""
        if source.kind == "tool" and name == "extract":  # (plan mode's extractor)
            return f"a value extracted at {when}{' from ' + source.source if source.source else ''}"
        if source.kind == "tool":
            what = (
                "the page fetched" if name in ("fetch_url", "http_request") else f"{name}'s output"
            )
            return f"{what} at {when}{origin}"
        if source.kind == "external":
            return f"content from {name} at {when}{origin}"
        return f"{name}'s message at {when}{origin}"
