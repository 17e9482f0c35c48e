"""What the benchmarks in ``bench/`` record besides time.

:func:`machine_info`: what a benchmark ran on, the same fields in every result (CPU,
cores, memory, Python, SQLite, platform, the filesystem of the directory it wrote to, the
load average at the start, the versions of the packages it compares or depends on).
:func:`disk_bytes`: the bytes a SQLite file really uses.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

__all__ = ["disk_bytes", "machine_info"]


def _cpu() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return cpu


def _filesystem(directory: Path) -> str:
    try:
        fs = (
            subprocess.run(["df", "-T", str(directory)], capture_output=True, text=True, check=True)
            .stdout.splitlines()[-1]
            .split()
        )
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"
    return f"{fs[1]} ({fs[0]}, mounted on {fs[-1]})" if len(fs) >= 3 else "unknown"


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        return None


def machine_info(directory: Path, packages: Sequence[str] = ()) -> dict[str, Any]:
    versions: dict[str, str] = {}
    for dist in packages:
        with contextlib.suppress(Exception):
            versions[dist] = version(dist)
    return {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "filesystem": _filesystem(directory),
        "bench_dir": str(directory),
        "load_avg_at_start": os.getloadavg(),
        "versions": versions,
    }


def disk_bytes(path: Path) -> int:
    """Bytes of used pages in the database file, after folding the WAL into it."""
    conn = sqlite3.connect(path, timeout=30.0)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)
    finally:
        conn.close()


def text_table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """*lines* under *headers*, each column as wide as its widest cell ("a | b" rows)."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("-|-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)
