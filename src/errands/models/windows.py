"""Models' context windows: how many tokens (input and output) one request may hold.

``[models."SPEC"] context_window`` in the config wins; otherwise the table below, by the
model name's prefix (the spec's part after ``PROVIDER:``). A fallback chain, or a list
of specs, has the smallest window of its members (any of them may answer). A model
whose window is not known is never compacted (docs/context.md).
"""

from __future__ import annotations

from errands.config import Settings
from errands.models.spec import CHAIN_PREFIX

__all__ = ["KNOWN_WINDOWS", "context_window"]

# (model-name prefix, window in tokens), the longest prefix first where they overlap
KNOWN_WINDOWS: tuple[tuple[str, int], ...] = (
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("gpt-5", 400_000),
    ("o3", 200_000),
    ("o4-mini", 200_000),
    ("claude-", 200_000),
    ("gemini-1.5", 1_048_576),
    ("gemini-2", 1_048_576),
    ("qwen3", 262_144),
)


def _known(spec: str) -> int | None:
    name = spec.partition(":")[2] or spec
    for prefix, window in KNOWN_WINDOWS:
        if name.startswith(prefix):
            return window
    return None


def context_window(spec: str, settings: Settings, _depth: int = 0) -> int | None:
    """The context window of model *spec* in tokens; None when it is not known."""
    configured = settings.models.get(spec)
    if configured is not None and configured.context_window is not None:
        return configured.context_window
    if spec.startswith(CHAIN_PREFIX):
        members = settings.chains.get(spec[len(CHAIN_PREFIX) :], [])
    elif "," in spec:
        members = [m.strip() for m in spec.split(",") if m.strip()]
    else:
        return _known(spec)
    if not members or _depth > 4:
        return None
    windows = [context_window(m, settings, _depth + 1) for m in members]
    known = [w for w in windows if w is not None]
    return min(known) if known and len(known) == len(windows) else None
