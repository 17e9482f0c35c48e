"""The workspace's git repository, read-only in the sandbox.

When the workspace is a git repository (``.git`` a directory) or a worktree of one
(``.git`` a file saying ``gitdir: …``, as ``git worktree add`` writes for a sub-errand),
the sandbox sees that git directory **read-only**: ``git status``, ``git log`` and
``git diff`` work inside; ``git commit`` (or a planted hook) does not -- errands makes
commits outside the sandbox.

The workspace is written by the commands themselves, so a ``.git`` file is a claim, not a
fact. A worktree's repository is bound only when the claim has the shape ``git worktree
add`` leaves and the sandbox cannot forge: the git directory named lies outside the
workspace, at ``REPO/worktrees/NAME`` of a repository ``REPO`` (a ``HEAD``, an
``objects`` directory), its ``gitdir`` file points back at this workspace's ``.git``, and
its ``commondir`` (if any) names ``REPO``. Only ``REPO`` is bound. Any other pointer --
to another repository, a forged git directory in the workspace whose ``commondir`` names
``/root/.ssh`` -- is ignored, and the sandbox sees no git directory at all.
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
    if gitdir.is_relative_to(root) or gitdir.parent.name != "worktrees":
        return []  # forged in the workspace, or not where `git worktree add` puts it
    common = gitdir.parent.parent
    if not _is_git_directory(common) or _read(gitdir / "gitdir") is None:
        return []
    back = Path(os.path.realpath(gitdir / str(_read(gitdir / "gitdir"))))
    named = _read(gitdir / "commondir")
    if back != dot or (named is not None and Path(os.path.realpath(gitdir / named)) != common):
        return []  # (the backlink, out of the sandbox's reach, names this workspace)
    target = str(common)
    if target == "/" or any(Path(target).is_relative_to(t) for t in _NEVER):
        return []
    return [(common, target)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _is_git_directory(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()
