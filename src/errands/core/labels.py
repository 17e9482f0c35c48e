"""Provenance and trust labels carried by every content item.

Two lattices: integrity (``trusted`` above ``untrusted``) and confidentiality
(``public`` < ``private`` < ``secret``). Whatever is derived from several items --
above all the model's output, derived from its whole context -- takes the *lowest*
integrity and the *highest* confidentiality of its inputs (:func:`join`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Confidentiality",
    "Integrity",
    "Label",
    "Provenance",
    "join",
]


class Integrity(StrEnum):
    trusted = "trusted"
    untrusted = "untrusted"


class Confidentiality(StrEnum):
    public = "public"
    private = "private"
    secret = "secret"


_CONF_RANK = {Confidentiality.public: 0, Confidentiality.private: 1, Confidentiality.secret: 2}

ProvenanceKind = Literal["user", "model", "tool", "external", "system"]


class Provenance(BaseModel):
    """Where a content item came from: the person, the model, a tool, or an outside source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ProvenanceKind
    name: str | None = None  # tool name, model name, user name
    source: str | None = None  # a URL, a mail sender, a file path


class Label(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    integrity: Integrity = Integrity.trusted
    confidentiality: Confidentiality = Confidentiality.private

    @staticmethod
    def of(integrity: Integrity, confidentiality: Confidentiality) -> Label:
        """The label with these values. There are only six, built once: labels are
        frozen, and every content item and every fold step asks for one."""
        return _LABELS[integrity, confidentiality]

    def joined(self, other: Label) -> Label:
        if other is self or other is BOTTOM:  # (perf: the common case, every fold step)
            return self
        integrity = (
            Integrity.untrusted
            if Integrity.untrusted in (self.integrity, other.integrity)
            else Integrity.trusted
        )
        conf = max(self.confidentiality, other.confidentiality, key=_CONF_RANK.__getitem__)
        if integrity is self.integrity and conf is self.confidentiality:
            return self
        return _LABELS[integrity, conf]


_LABELS = {
    (i, c): Label(integrity=i, confidentiality=c) for i in Integrity for c in Confidentiality
}
BOTTOM = Label.of(Integrity.trusted, Confidentiality.public)


def join(labels: Iterable[Label]) -> Label:
    """Least upper bound: lowest integrity, highest confidentiality (BOTTOM for none)."""
    result = BOTTOM
    for label in labels:
        result = result.joined(label)
    return result
