"""Real git repositories for the sub-errand worktree tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["git", "init_repo"]


def git(cwd: Path, *args: str) -> str:
    """``git -C cwd ARGS``'s output; a failure raises."""
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout


def init_repo(path: Path) -> None:
    """*path* a git repository on ``main`` with one commit (``same.txt``: ``base``)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    (path / "same.txt").write_text("base\n")
    git(path, "add", "same.txt")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
