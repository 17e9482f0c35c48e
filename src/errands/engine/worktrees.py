"""Git worktrees for sub-errands (docs/subagents.md, "Code").

When a parent's workspace is a git repository (or a sub-errand's worktree of one), each
child works in its own worktree, on its own branch ``errands/CHILD_ID`` made from the
parent's ``HEAD``, at the folder ``delegate`` gives it (``WORKSPACE/subtasks/...``). The
sandbox sees the repository read-only (:mod:`errands.tools.sandbox.gitdirs`): errands
makes the commits, here, outside it.

- :func:`add` makes the worktree, or finds the one a run before a crash made (the
  repository's own ``worktrees/*/gitdir`` backlinks, which the sandbox cannot write, say
  which worktree a folder is): never twice, and a checkout a crash cut short is finished.
- :func:`commit` commits everything a child left in its worktree to its branch (nothing
  to commit: nothing done), so a child's work is never lost when its worktree goes.
- :func:`merge` merges a child's branch into the branch checked out in the parent's
  workspace; a conflict is aborted (the parent's files are left as they were) and
  reported with its files and hunks.
- :func:`remove` commits, removes the worktree, and deletes the branch only if it is
  merged (an unmerged branch is kept: nothing is lost).

Git runs with the git directory and work tree named explicitly (a ``.git`` file in a
workspace is written by the sandbox: a claim, not a fact), with hooks off.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from errands.tools.sandbox.gitdirs import git_binds

__all__ = [
    "BRANCH_PREFIX",
    "ConfigRefused",
    "Conflict",
    "GitFailed",
    "Merged",
    "Repo",
    "add",
    "branch_for",
    "child_repo",
    "commit",
    "merge",
    "remove",
    "repo_of",
]

BRANCH_PREFIX = "errands/"
EXCLUDE = "/subtasks/"  # the children's folders are not the parent's files
HUNK_LINES = 40  # lines of one conflict hunk in a report
MAX_HUNKS = 20  # hunks reported per child
log = logging.getLogger(__name__)
_IDENTITY = ("-c", "user.name=errands", "-c", "user.email=errands@localhost")


class GitFailed(Exception):
    """A git command errands ran failed: its output says why."""


class ConfigRefused(GitFailed):
    """The repository's config names a program git would run: errands runs no git on it."""


@dataclass(frozen=True)
class Repo:
    """A workspace's git directory (its own, or its worktree's admin folder), the
    repository's common directory, and the work tree."""

    git_dir: Path
    common: Path
    work_tree: Path


@dataclass
class Conflict:
    path: str
    hunks: list[str] = field(default_factory=list)


@dataclass
class Merged:
    """What merging one child's branch did."""

    branch: str
    merged: bool = False  # a merge commit (or a fast-forward) was made
    up_to_date: bool = False  # nothing to merge (merged before, or no change)
    conflicts: list[Conflict] = field(default_factory=list)
    error: str | None = None  # git refused (the parent's uncommitted changes, say)


def branch_for(child_id: str) -> str:
    return BRANCH_PREFIX + child_id


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


# The repository's own config may have been written by a command in the sandbox (one that
# ran `git init` in a workspace that had no .git, before it was bound read-only), and git
# runs here outside it. What its config could make git run is switched off on the command
# line (which wins over any config file) -- hooks, the fsmonitor, signing -- and what cannot
# be (a driver's name is the repository's to choose) is refused: a filter a .gitattributes
# names, a merge or diff driver, an external diff, an include of another file.
_OFF = (
    *("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"),
    *(
        "-c",
        "commit.gpgSign=false",
        "-c",
        "tag.gpgSign=false",
        "-c",
        "merge.verifySignatures=false",
    ),
    "--no-pager",
)
_RUNS = re.compile(
    r"^(filter\..+|merge\..+\.driver|diff\..+\.(command|textconv)|diff\.external"
    r"|include\.path|includeif\..+)$",
    re.IGNORECASE,
)


def _refuse_programs(repo: Repo) -> None:
    """A :class:`GitFailed` if the repository's own config names a program git would run."""
    for path in {
        repo.common / "config",
        repo.common / "config.worktree",
        repo.git_dir / "config.worktree",
    }:
        if not path.is_file():
            continue
        listed = subprocess.run(
            ["git", "config", "--no-includes", "--file", str(path), "--list", "--name-only"],
            capture_output=True, text=True, env=_env(), check=False,
        )  # fmt: skip
        if listed.returncode != 0:
            raise ConfigRefused(f"git config: {path} does not parse; errands runs no git on it")
        found = sorted({k for k in listed.stdout.split() if _RUNS.match(k)})
        if found:
            raise ConfigRefused(
                f"{path} sets {', '.join(found[:5])}: a program git would run outside the "
                "sandbox (a command in the sandbox may have written it); errands runs no git "
                "on this repository until they are removed"
            )


def _run(repo: Repo | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["git", *_OFF, *_IDENTITY]
    if repo is not None:
        _refuse_programs(repo)
        cmd += [f"--git-dir={repo.git_dir}", f"--work-tree={repo.work_tree}"]
    done = subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=repo.work_tree if repo is not None else None,
        check=False,
    )
    if check and done.returncode != 0:
        what = (done.stderr or done.stdout).strip().splitlines()
        raise GitFailed(f"git {args[0]}: {what[-1] if what else f'exit {done.returncode}'}")
    return done


def _admin(common: Path, work_tree: Path) -> Path | None:
    """The admin folder (``COMMON/worktrees/NAME``) of the worktree at *work_tree*: the
    one whose ``gitdir`` backlink names its ``.git`` (the sandbox cannot write these)."""
    dot = Path(os.path.realpath(work_tree)) / ".git"
    try:
        entries = list((common / "worktrees").iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            back = (entry / "gitdir").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        back_path = entry / back  # (its folder resolved, not the .git: a link is no match)
        if Path(os.path.realpath(back_path.parent)) / back_path.name != dot:
            continue
        try:  # git keeps the branch and objects where commondir says: this repository's
            named = (entry / "commondir").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return entry
        except OSError:
            continue
        if Path(os.path.realpath(entry / named)) == Path(os.path.realpath(common)):
            return entry  # (one planted in a repository made in the sandbox may name another)
    return None


def repo_of(workspace: Path) -> Repo | None:
    """The workspace's git repository, or None (not a repository, or a ``.git`` that is
    not what git made: see :func:`git_binds`)."""
    root = Path(os.path.realpath(workspace))
    binds = git_binds(root, "")
    if not binds:
        return None
    common = binds[0][0]
    if common == root / ".git":
        return Repo(git_dir=common, common=common, work_tree=root)
    admin = _admin(common, root)
    return None if admin is None else Repo(git_dir=admin, common=common, work_tree=root)


def _exclude(common: Path) -> None:
    """``/subtasks/`` in the repository's ``info/exclude``: the children's folders are
    not the parent's files (``git status`` in the parent does not list them)."""
    path = common / "info" / "exclude"
    # (a repository made in the sandbox could point them at any file of errands' user)
    if path.parent.is_symlink() or path.is_symlink():
        raise GitFailed(f"{path} is a symbolic link; errands writes no file through it")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if EXCLUDE in text.splitlines():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(path, flags, 0o644), "a", encoding="utf-8") as f:
        f.write(("" if not text or text.endswith("\n") else "\n") + EXCLUDE + "\n")
        f.flush()
        os.fsync(f.fileno())


def _has_branch(repo: Repo, branch: str) -> bool:
    found = _run(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    return found.returncode == 0


def add(parent: Path, child: Path, branch: str) -> bool:
    """Make *child* a worktree of *parent*'s repository on *branch* (made from the
    parent's ``HEAD``); True if it is one (made now or before a crash), False if the
    parent's workspace is not a git repository with a commit (the child gets a plain
    folder)."""
    repo = repo_of(parent)
    if repo is None:
        return False
    try:
        _refuse_programs(repo)
    except ConfigRefused as exc:  # (a step failing on it would fail again on every retry)
        log.warning("sub-errand folder %s: a plain folder, not a worktree: %s", child, exc)
        return False
    if _run(repo, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0:
        return False  # no commit yet: nothing to branch from
    _exclude(repo.common)
    child = Path(os.path.realpath(child))
    admin = _admin(repo.common, child)
    if admin is not None:  # made before a crash
        if not (admin / "index").exists():  # its checkout was cut short: finish it
            _run(Repo(admin, repo.common, child), "reset", "--hard", "--quiet")
        return True
    _run(repo, "worktree", "prune")  # (the admin folder of a worktree whose folder went)
    if child.exists() and any(child.iterdir()):
        raise GitFailed(f"git worktree add: {child} exists and is not empty")
    if _has_branch(repo, branch):  # a crash between making the branch and the checkout
        _run(repo, "worktree", "add", "--quiet", str(child), branch)
    else:
        _run(repo, "worktree", "add", "--quiet", "-b", branch, str(child), "HEAD")
    return True


def child_repo(parent: Path, child: Path) -> Repo | None:
    """The child's worktree, found from the parent's repository (never from the child's
    ``.git`` file, which the child can rewrite), or None."""
    repo = repo_of(parent)
    if repo is None:
        return None
    work_tree = Path(os.path.realpath(child))
    admin = _admin(repo.common, work_tree)
    return None if admin is None else Repo(git_dir=admin, common=repo.common, work_tree=work_tree)


def commit(parent: Path, child: Path, message: str) -> bool:
    """Commit all that the child left in its worktree to its branch; False if there was
    nothing to commit (or it is no worktree of the parent's repository)."""
    repo = child_repo(parent, child)
    if repo is None:
        return False
    _run(repo, "add", "--all", "--", ".")
    if _run(repo, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return False
    _run(repo, "commit", "--quiet", "--no-verify", "-m", message)
    return True


def _conflicts(repo: Repo) -> list[Conflict]:
    names = _run(repo, "diff", "--name-only", "--diff-filter=U", "-z").stdout
    out: list[Conflict] = []
    hunks_left = MAX_HUNKS
    for name in [n for n in names.split("\0") if n]:
        conflict = Conflict(path=name)
        try:
            lines = (repo.work_tree / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            lines = ""
        hunk: list[str] | None = None
        for line in lines.splitlines():
            if line.startswith("<<<<<<< "):
                hunk = [line]
            elif hunk is not None:
                hunk.append(line)
                if line.startswith(">>>>>>> "):
                    if hunks_left > 0:
                        if len(hunk) > HUNK_LINES:
                            hunk = [*hunk[: HUNK_LINES - 1], "[...]", hunk[-1]]
                        conflict.hunks.append("\n".join(hunk))
                        hunks_left -= 1
                    hunk = None
        out.append(conflict)
    return out


def _abort_stale(repo: Repo, tips: set[str]) -> None:
    """A merge of one of ours that a crash left half done is aborted before we go on."""
    head = repo.git_dir / "MERGE_HEAD"
    try:
        merging = head.read_text(encoding="utf-8").split()
    except OSError:
        return
    if merging and merging[0] in tips:
        _run(repo, "merge", "--abort")


def merge(parent: Path, branches: list[str]) -> list[Merged]:
    """Merge each branch into the branch checked out in *parent*'s workspace, one after
    the other; a conflict is aborted and reported (files, hunks), and the next goes on."""
    repo = repo_of(parent)
    if repo is None:
        raise GitFailed(f"{parent} is not a git repository")
    tips = set()
    for branch in branches:
        found = _run(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
        if found.returncode == 0:
            tips.add(found.stdout.strip())
    _abort_stale(repo, tips)
    out = []
    for branch in branches:
        result = Merged(branch=branch)
        out.append(result)
        if not _has_branch(repo, branch):
            result.error = f"no branch {branch}"
            continue
        ahead = _run(repo, "rev-list", "--count", f"HEAD..{branch}").stdout.strip()
        if ahead == "0":
            result.up_to_date = True
            continue
        message = f"errands: merge {branch}"
        done = _run(repo, "merge", "--no-ff", "--no-edit", "-m", message, branch, check=False)
        if done.returncode == 0:
            result.merged = True
            continue
        conflicts = _conflicts(repo)
        if (repo.git_dir / "MERGE_HEAD").exists():
            _run(repo, "merge", "--abort")
        if conflicts:
            result.conflicts = conflicts
        else:
            lines = (done.stderr or done.stdout).strip().splitlines()
            result.error = " ".join(lines[:6]) or f"git merge: exit {done.returncode}"
    return out


def remove(parent: Path, child: Path, branch: str, message: str) -> None:
    """Commit what the child left, remove its worktree, and delete its branch if it is
    merged into the parent's ``HEAD`` (an unmerged branch is kept)."""
    repo = repo_of(parent)
    if repo is None:
        return
    if child_repo(parent, child) is not None:
        commit(parent, child, message)
        _run(repo, "worktree", "remove", "--force", str(child))
    _run(repo, "worktree", "prune")
    if _has_branch(repo, branch):
        _run(repo, "branch", "--quiet", "-d", branch, check=False)  # (-d: only if merged)
