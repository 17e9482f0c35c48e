"""Versions of errands built from this checkout, for upgrade tests (issue 21, item 4).

:func:`build_newer` copies the ``errands`` package the tests run and patches the copy
into the next release a person would install: one more migration
(``9999_test_upgrade``) and one upgraded event type (``approval_requested`` v2, with a
field v1 did not have and an upcaster from v1). :func:`build_variant` applies any other
patch (a negative control). Run a version with ``PYTHONPATH=<its directory>``: it comes
before the installed errands on ``sys.path``.

Each patch names the exact text it replaces and fails loudly when that text is gone, so
a refactor of the patched lines shows up here, not as a test that silently tests less.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import errands

__all__ = ["NEWER_MIGRATION", "build_newer", "build_variant", "version_env"]

NEWER_MIGRATION = "9999_test_upgrade"

# (file in the package, text it must contain once, what replaces it)
Patch = tuple[str, str, str]

NEWER: list[Patch] = [
    (
        "store/sqlite/migrations.py",
        "\n]\n\n_TABLE = ",
        f'\n    Migration("{NEWER_MIGRATION}", "CREATE TABLE test_upgrade (note TEXT)"),'
        "\n]\n\n_TABLE = ",
    ),
    (
        "core/events.py",
        'class ApprovalRequested(_Event):\n    type: Literal["approval_requested"] = "approval_requested"\n',
        "class ApprovalRequested(_Event):\n"
        "    VERSION: ClassVar[int] = 2\n"
        '    type: Literal["approval_requested"] = "approval_requested"\n'
        "    v: int = 2\n"
        "    upgraded_from: int | None = None  # (v2: set by the upcaster from v1)\n",
    ),
    (
        "core/events.py",
        "UPGRADERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {\n",
        "UPGRADERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {\n"
        '    ("approval_requested", 1): lambda d: {**d, "v": 2, "upgraded_from": 1},\n',
    ),
]


def build_variant(dest: Path, patches: list[Patch]) -> Path:
    """A copy of this checkout's errands in *dest*, with *patches* applied; *dest*."""
    package = dest / "errands"
    shutil.copytree(
        Path(errands.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    for name, old, new in patches:
        path = package / name
        text = path.read_text()
        assert text.count(old) == 1, f"{name} no longer contains (once) the text to patch: {old!r}"
        path.write_text(text.replace(old, new))
    return dest


def build_newer(dest: Path) -> Path:
    """The next release: one more migration and ``approval_requested`` v2."""
    return build_variant(dest, NEWER)


def version_env(env: dict[str, str], version: Path | None) -> dict[str, str]:
    """*env* running *version* (None: the errands the tests run)."""
    out = dict(env)
    if version is not None:
        out["PYTHONPATH"] = str(version)
    else:
        out.pop("PYTHONPATH", None)
    return out
