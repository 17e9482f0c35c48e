"""The workspace's git repository, read-only in the sandbox.

When the workspace is a git repository (``.git`` a directory) or a worktree of one
(``.git`` a file saying ``gitdir: …``, as ``git worktree add`` writes for a sub-errand),
the sandbox sees that git directory **read-only**: ``git status``, ``git log`` and
``git diff`` work inside; ``git commit`` (or a planted hook) does not -- errands makes
commits outside the sandbox.

The workspace is written by the commands themselves, so a ``.git`` file is a claim, not a
fact: a worktree's git directory is bound only when it points back at this workspace
(``$GIT_DIR/gitdir`` names the workspace's ``.git``; a command in the sandbox cannot
write there). Any other pointer -- to another repository, to ``/root/.ssh`` -- is
ignored, and so the sandbox sees no git directory at all.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["git_binds"]

_NEVER = ("/usr", "/bin", "/sbin", "/lib", "/proc", "/dev", "/etc", "/workspace", "/sys")


def git_binds(workspace: Path, inside: str) -> list[tuple[Path, str]]:
    """The read-only binds (host path, path in the sandbox) for *workspace*'s git
    directory, the workspace being at *inside* in the sandbox; [] if it has none."""
    root = Path(os.path.realpath(workspace))
    dot = root / ".git"
    if dot.is_symlink():
        return []
    if dot.is_dir():
        return [(dot, f"{inside}/.git")]
    if not dot.is_file():
        return []
    return _worktree_binds(root, dot)


def _worktree_binds(root: Path, dot: Path) -> list[tuple[Path, str]]:
    try:
        text = dot.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return []
    if not text.startswith("gitdir:"):
        return []
    gitdir = Path(os.path.realpath(root / text.removeprefix("gitdir:").strip()))
    try:  # the backlink git keeps, out of the sandbox's reach
        back = (gitdir / "gitdir").read_text(encoding="utf-8").strip()
    except OSError:
        return []
    if Path(os.path.realpath(gitdir / back)) != dot:
        return []
    common = gitdir
    if (gitdir / "commondir").is_file():
        named = (gitdir / "commondir").read_text(encoding="utf-8").strip()
        common = Path(os.path.realpath(gitdir / named))
    binds = [(common, str(common))]
    if not gitdir.is_relative_to(common):
        binds.append((gitdir, str(gitdir)))
    for _, target in binds:
        if target == "/" or any(Path(target).is_relative_to(t) for t in _NEVER):
            return []
    return binds
