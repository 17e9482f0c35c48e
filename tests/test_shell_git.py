"""The workspace's git directory is read-only in the sandbox: git reads, never commits.

A repository as the workspace, and a worktree of one (as a sub-errand gets): inside,
``git status`` and ``git log`` work, ``git commit`` and a planted hook do not, and the
repository outside is unchanged. A ``.git`` file the workspace forges (pointing at
another repository) binds nothing. Negative control: a sandbox without the read-only
bind (``RwGitSandbox``) lets the commit through.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from errands.tools.builtin.shell import make_shell_tool
from errands.tools.sandbox.bwrap import Sandbox
from errands.tools.tool import ToolContext

INSIDE = (
    "git status --short 2>&1; git log --format=%s 2>&1; echo new > new.txt; "
    "git add new.txt 2>&1; git -c user.name=s -c user.email=s@s commit -qm inside 2>&1; "
    "echo commit=$?; "
    "echo evil > .git/hooks/pre-commit 2>&1 || echo no-hook"
)


class RwGitSandbox(Sandbox):
    """The control: the git directory is not bound read-only."""

    def git_binds(self, workspace: Path) -> list[tuple[Path, str]]:
        return []


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return done.stdout


def repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("a\n")
    git(path, "add", "a.txt")
    git(path, "commit", "-qm", "outside")
    return path


async def shell(workspace: Path, command: str, sandbox: Sandbox | None = None) -> str:
    tool = make_shell_tool(sandbox)
    args = tool.validate({"command": command, "timeout_s": 30})
    return (await tool.invoke(args, ToolContext("e1", 1, "k", workspace))).text


@pytest.mark.parametrize("sandbox", [Sandbox, RwGitSandbox], ids=["read-only", "CONTROL"])
async def test_a_repository_is_read_only_inside(tmp_path: Path, sandbox: type[Sandbox]) -> None:
    ws = repo(tmp_path / "ws")
    out = await shell(ws, INSIDE, sandbox())
    commits = git(ws, "log", "--format=%s").split()
    if sandbox is RwGitSandbox:  # the control: the commit and the hook land
        assert commits == ["inside", "outside"], out
        return
    assert "outside" in out and "commit=0" not in out and "no-hook" in out, out
    assert "Read-only file system" in out, out
    assert commits == ["outside"] and not (ws / ".git/hooks/pre-commit").exists()


async def test_a_worktree_reads_its_repository_and_cannot_commit(tmp_path: Path) -> None:
    main = repo(tmp_path / "main")
    wt = tmp_path / "wt"
    git(main, "worktree", "add", "-q", "-b", "sub", str(wt))
    out = await shell(wt, INSIDE)
    assert "outside" in out and "?? new.txt" not in out, out
    assert "commit=0" not in out and "not a git repository" not in out, out
    assert git(main, "log", "--format=%s", "sub").split() == ["outside"]


async def test_a_forged_git_file_binds_nothing(tmp_path: Path) -> None:
    other = repo(tmp_path / "other")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".git").write_text(f"gitdir: {other / '.git'}\n")
    out = await shell(ws, f"git log 2>&1; ls {other} 2>&1")
    assert "outside" not in out and "No such file or directory" in out, out


class TrustingGitSandbox(Sandbox):
    """The control: binds whatever the workspace's .git file and the commondir it leads
    to name (the backlink checked, nothing else)."""

    def git_binds(self, workspace: Path) -> list[tuple[Path, str]]:
        if not (workspace / ".git").is_file():
            return []
        text = (workspace / ".git").read_text().removeprefix("gitdir:").strip()
        gitdir = workspace / text
        if (gitdir / "gitdir").read_text().strip() != str(workspace / ".git"):
            return []
        common = Path((gitdir / "commondir").read_text().strip())
        return [(common, str(common))]


@pytest.mark.parametrize("sandbox", [Sandbox, TrustingGitSandbox], ids=["checked", "CONTROL"])
async def test_a_forged_backlink_binds_nothing_outside(
    tmp_path: Path, sandbox: type[Sandbox]
) -> None:
    """The workspace forges a whole worktree git directory inside itself -- a ``gitdir``
    file pointing back at the workspace's ``.git`` and a ``commondir`` naming a directory
    outside -- so the backlink holds; the outside must still not be bound."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("CANARY-gitdir-outside\n")
    ws = tmp_path / "ws"
    fake = ws / "fake" / "worktrees" / "x"
    fake.mkdir(parents=True)
    (fake / "gitdir").write_text(f"{ws / '.git'}\n")
    (fake / "commondir").write_text(f"{outside}\n")
    (ws / ".git").write_text(f"gitdir: {fake}\n")
    (ws / "fake" / "gitdir").write_text(f"{ws / '.git'}\n")
    (ws / "fake" / "commondir").write_text(f"{outside}\n")
    # ... and the same forged in another workspace (a directory outside this one), made to
    # look like a repository
    other = tmp_path / "other-ws" / "repo"
    (other / "worktrees" / "x").mkdir(parents=True)
    (other / "objects").mkdir()
    (other / "HEAD").write_text("ref: refs/heads/main\n")
    (other / "worktrees" / "x" / "gitdir").write_text(f"{ws / '.git'}\n")
    (other / "worktrees" / "x" / "commondir").write_text(f"{outside}\n")
    for gitdir in (fake, ws / "fake", other / "worktrees" / "x"):
        (ws / ".git").write_text(f"gitdir: {gitdir}\n")
        out = await shell(ws, f"cat {outside}/secret.txt 2>&1", sandbox())
        if sandbox is TrustingGitSandbox:  # the control: the outside is read
            assert "CANARY-gitdir-outside" in out, out
            continue
        assert "CANARY-gitdir-outside" not in out, out


class SwapsAfterTheCheck(Sandbox):
    """Swaps the workspace's .git for a link to ``../tmp`` right after the check, as a
    command running meanwhile in the same workspace could: on the host that is a
    directory beside the workspace, in the sandbox its /tmp, so a bind by path would
    show the host's directory there."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[tuple[Path, str]] = []

    def git_binds(self, workspace: Path) -> list[tuple[Path, str]]:
        self.checked = super().git_binds(workspace)
        dot = workspace / ".git"
        dot.rename(workspace / ".git-moved")
        dot.symlink_to("../tmp")
        return self.checked


class BindsByPath(SwapsAfterTheCheck):
    """The control: binds the checked paths by name (``--ro-bind``), not the directories
    opened at the check."""

    @staticmethod
    def _pin(binds: Sequence[tuple[Path, str]], *rest: Any) -> list[tuple[int, str]]:
        return []

    def argv(self, command: str, workspace: Path, *args: Any, **kwargs: Any) -> list[str]:
        argv = super().argv(command, workspace, *args, **kwargs)
        cut = argv.index("--")
        binds = [a for source, target in self.checked for a in ("--ro-bind", str(source), target)]
        return [*argv[:cut], *binds, *argv[cut:]]


@pytest.mark.parametrize("sandbox", [SwapsAfterTheCheck, BindsByPath], ids=["pinned", "CONTROL"])
async def test_a_link_swapped_in_after_the_check_is_not_followed(
    tmp_path: Path, sandbox: type[Sandbox]
) -> None:
    beside = tmp_path / "tmp"
    beside.mkdir()
    (beside / "secret.txt").write_text("CANARY-swapped\n")
    ws = repo(tmp_path / "ws")
    out = await shell(ws, "cat /tmp/secret.txt 2>&1", sandbox())
    if sandbox is BindsByPath:  # the control: the directory beside is bound in
        assert "CANARY-swapped" in out, out
        return
    assert "CANARY-swapped" not in out, out
