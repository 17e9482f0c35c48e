"""Process-wide runtime settings for a long-running errands process.

The loop allocates many short-lived objects per step while thousands of errands'
state stays alive; CPython's default GC thresholds then rescan that live state over
and over (measured: 230-310 µs of GC per step at 1,000 errands, 31 µs with these
settings; see docs/benchmarks.md). :func:`tune_gc` freezes what start-up allocated and
raises the young-generation threshold.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLD", "tune_gc"]

GC_THRESHOLD = (50_000, 20, 20)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()  # start-up objects (modules, schemas) are never garbage: stop rescanning them
    gc.set_threshold(*GC_THRESHOLD)
