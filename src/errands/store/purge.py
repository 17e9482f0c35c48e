"""What a purge keeps of an event: the rules, whatever the backend.

A purge removes an errand's private content and keeps its shape: every content item
that is not public has its text replaced (and its source dropped); arguments become
``{"purged": true}``; free-text fields (titles, previews, reasons, messages, raw
arguments) are replaced; opaque provider state (``replay``) is dropped. Sequence
numbers, types, times, tools, effect classes, usage and costs stay, so the timeline,
the cost report and the budgets still add up.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PURGED", "purged"]

PURGED = "[purged]"

# Free-text fields that may carry the person's private words or derived content.
_TEXT_KEYS = frozenset({"title", "preview", "reason", "message", "raw_arguments"})
_ARG_KEYS = frozenset({"arguments", "edited_arguments"})
_DROP_KEYS = frozenset({"replay"})


def purged(value: Any) -> Any:
    """*value* (an event as JSON data, or any part of one) with its private content out."""
    if isinstance(value, dict):
        if {"text", "provenance", "confidentiality"} <= value.keys():  # a content item
            if value["confidentiality"] == "public":
                return value
            provenance = value["provenance"]
            if isinstance(provenance, dict) and provenance.get("source") is not None:
                provenance = {**provenance, "source": None}
            return {**value, "text": PURGED, "provenance": provenance}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _ARG_KEYS and isinstance(item, dict):
                out[key] = {"purged": True}
            elif key in _DROP_KEYS:
                out[key] = None  # opaque provider state: nothing of it can stay
            elif key in _TEXT_KEYS and isinstance(item, str) and item:
                out[key] = PURGED
            else:
                out[key] = purged(item)
        return out
    if isinstance(value, list):
        return [purged(v) for v in value]
    return value
