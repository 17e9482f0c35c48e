"""Who is at this terminal: recorded with every decision and message the CLI sends."""

from __future__ import annotations

import os

__all__ = ["who"]


def who() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "local"
