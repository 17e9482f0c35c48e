"""Sub-errands in a git workspace (issue 22, item 4): each child works on its own branch
in its own worktree; ``merge_children`` merges them into the parent's branch and reports
a conflict (files, hunks) instead of failing silently; the worktrees go when the parent
ends, and a child's work is committed first. Real git throughout."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers.fanout import CHILD, serving, until
from helpers.gitrepo import git, init_repo
from helpers.kit import harness_for

from errands.config import Settings
from errands.core import events as ev
from errands.core.states import TERMINAL, ErrandState
from errands.engine import runner as runner_module
from errands.engine import worktrees
from errands.engine.delegate import Delegation, sweep_worktrees
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.store.sqlite import SQLiteStore


class MergeModel:
    """A parent delegates three tasks ``CHILD k PATH=TEXT``, then calls merge_children
    with their ids, then answers with what it read. A child writes TEXT to PATH (and
    notes whether its workspace is a worktree), then answers."""

    name = "scripted:demo"

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = tasks

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        k = sum(1 for m in request.messages if m.role == "assistant")
        first = next(m.text for m in request.messages if m.role == "user")
        usage = ev.Usage(input_tokens=10, output_tokens=5)
        if CHILD in first:
            if k == 0:
                path, text = first[first.index(CHILD) :].split(" ", 2)[2].split("=", 1)
                args = {"path": path, "content": text + "\n"}
                call = ev.ToolCall(call_id="w", name="write_file", arguments=args)
                return ModelReply(tool_calls=[call], usage=usage, model=self.name)
            return ModelReply(text="written", usage=usage, model=self.name)
        if k == 0:
            args: dict[str, Any] = {"tasks": [{"task": t} for t in self.tasks]}
            call = ev.ToolCall(call_id="d0", name="delegate", arguments=args)
            return ModelReply(tool_calls=[call], usage=usage, model=self.name)
        if k == 1:
            ids = re.findall(r"^## (\S+):", request.messages[-1].text, re.M)
            call = ev.ToolCall(call_id="m0", name="merge_children", arguments={"ids": ids})
            return ModelReply(tool_calls=[call], usage=usage, model=self.name)
        return ModelReply(text="merge said: " + request.messages[-1].text, usage=usage)


TASKS = [f"{CHILD} 0 one.txt=from 0", f"{CHILD} 1 same.txt=from 1", f"{CHILD} 2 same.txt=from 2"]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "s.sqlite")
    yield store
    await store.close()


def theirs(parent: Path, branches: list[str]) -> list[worktrees.Merged]:
    """The control's merge: a conflict is settled silently (the child's side wins)."""
    out = []
    for branch in branches:
        git(parent, "-c", "user.name=t", "-c", "user.email=t@t", "merge", "-q", "-X", "theirs",
            "--no-edit", branch)  # fmt: skip
        out.append(worktrees.Merged(branch=branch, merged=True))
    return out


class SilentDelegation(Delegation):
    merge_branches = staticmethod(theirs)


class SilentLoop(Loop):
    delegation_class = SilentDelegation


async def _run(db: SQLiteStore, settings: Settings, *, git_repo: bool, control: bool = False):  # type: ignore[no-untyped-def]
    h = harness_for(db, settings, model=MergeModel(TASKS))
    eid = await create_errand(db, settings, "fan out and merge", model="scripted:demo")
    workspace = Path((await db.view(eid)).workspace)
    if git_repo:
        init_repo(workspace)
    async with serving(h.runner(loop_class=SilentLoop if control else None)) as runner:
        view = await until(db, eid, lambda v: v.state in TERMINAL, timeout=30)
        await runner.wait_idle()
    return view, workspace, await db.children(eid)


@pytest.mark.parametrize("control", [False, True], ids=["reported", "control-silent"])
async def test_children_merge_back_and_a_conflict_is_reported(
    db: SQLiteStore, settings: Settings, control: bool
) -> None:
    view, workspace, children = await _run(db, settings, git_repo=True, control=control)
    assert view.state is ErrandState.done, view.reason
    c0, c1, c2 = children
    if control:  # settled silently: child 1's change is gone, and nobody was told
        assert (workspace / "same.txt").read_text() == "from 2\n"
        assert "CONFLICT" not in (view.result or "")
        return
    report = view.result or ""
    assert "2 of 3 merged, 1 with conflicts" in report, report
    assert f"{c0.id}: merged" in report and f"{c1.id}: merged" in report
    assert f"{c2.id}: CONFLICT in same.txt" in report
    # the hunk, both sides
    assert "<<<<<<< " in report and "from 1" in report and "from 2" in report
    # the parent's branch has children 0 and 1; its files are as the merges left them
    assert (workspace / "one.txt").read_text() == "from 0\n"
    assert (workspace / "same.txt").read_text() == "from 1\n"
    assert not (workspace / ".git" / "MERGE_HEAD").exists()
    assert git(workspace, "status", "--porcelain") == ""
    assert git(workspace, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    # the parent ended: the worktrees are gone; merged branches deleted, the conflicted
    # child's branch kept with its work
    assert git(workspace, "worktree", "list", "--porcelain").count("worktree ") == 1
    branches = git(workspace, "branch", "--format=%(refname:short)").split()
    assert sorted(branches) == ["errands/" + c2.id, "main"]
    assert git(workspace, "show", f"errands/{c2.id}:same.txt") == "from 2\n"


async def test_a_plain_workspace_gets_folders_and_merge_children_says_why(
    db: SQLiteStore, settings: Settings
) -> None:
    view, workspace, children = await _run(db, settings, git_repo=False)
    assert view.state is ErrandState.done, view.reason
    assert "not a git repository" in (view.result or "")
    for c in children:  # plain folders, left in place
        assert not (Path(c.workspace) / ".git").exists()
        assert Path(c.workspace).parent == workspace / "subtasks"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    init_repo(tmp_path / "parent")
    return tmp_path / "parent"


def test_a_worktree_is_made_once_and_a_cut_checkout_is_finished(repo: Path) -> None:
    child = repo / "subtasks" / "1.0.0"
    assert worktrees.add(repo, child, "errands/x.1.0.0")
    assert worktrees.add(repo, child, "errands/x.1.0.0")  # a resume: found, not added
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2
    # a crash cut the checkout short (git writes the index last): finished on resume
    admin = worktrees.child_repo(repo, child)
    assert admin is not None
    (admin.git_dir / "index").unlink()
    (child / "same.txt").unlink()
    assert worktrees.add(repo, child, "errands/x.1.0.0")
    assert (child / "same.txt").read_text() == "base\n"
    # the control: adding it anew fails (a naive resume cannot go on)
    with pytest.raises(subprocess.CalledProcessError):
        git(repo, "worktree", "add", "-q", "-b", "errands/x.1.0.0", str(child))
    # the parent's status does not list its children's folders
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("control", [False, True], ids=["committed", "control-plain-remove"])
def test_removing_a_worktree_keeps_the_childs_work(repo: Path, control: bool) -> None:
    child = repo / "subtasks" / "1.0.0"
    worktrees.add(repo, child, "errands/x.1.0.0")
    (child / "new.txt").write_text("the child's work\n")
    if control:
        git(repo, "worktree", "remove", "--force", str(child))
    else:
        worktrees.remove(repo, child, "errands/x.1.0.0", "errands: sub-errand x.1.0.0")
    assert not child.exists()
    shown = subprocess.run(
        ["git", "-C", str(repo), "show", "errands/x.1.0.0:new.txt"], capture_output=True, text=True
    )
    if control:
        assert shown.returncode != 0  # lost
    else:
        assert shown.stdout == "the child's work\n"


@pytest.mark.parametrize("control", [False, True], ids=["from-parent", "control-trusts-dotgit"])
def test_a_forged_dotgit_does_not_move_the_childs_commit(
    repo: Path, tmp_path: Path, control: bool
) -> None:
    """The child rewrites its ``.git`` file to name another repository: errands finds
    the worktree from the parent's repository and commits to the child's branch; the
    control (git trusting the workspace's ``.git``) commits into the other one."""
    victim = tmp_path / "victim"
    init_repo(victim)
    child = repo / "subtasks" / "1.0.0"
    worktrees.add(repo, child, "errands/x.1.0.0")
    (child / "same.txt").write_text("changed by the child\n")
    (child / ".git").write_text(f"gitdir: {victim / '.git'}\n")
    before = git(victim, "rev-parse", "HEAD")
    if control:
        git(child, "add", "--all")
        git(child, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
        assert git(victim, "rev-parse", "HEAD") != before
        return
    assert worktrees.commit(repo, child, "errands: sub-errand x.1.0.0")
    assert git(victim, "rev-parse", "HEAD") == before
    assert git(repo, "show", "errands/x.1.0.0:same.txt") == "changed by the child\n"


async def test_a_cleanup_a_crash_cut_short_is_made_up_when_errands_up_starts(
    db: SQLiteStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent ended but its worktrees were not settled (a crash in between, played by
    a settle that does nothing): the sweep ``errands up`` runs as it starts removes them,
    each child's work committed first."""

    async def nothing(*args: object) -> None:
        return None

    monkeypatch.setattr(runner_module, "settle_worktrees", nothing)
    view, workspace, children = await _run(db, settings, git_repo=True)
    assert view.state is ErrandState.done, view.reason
    assert git(workspace, "worktree", "list", "--porcelain").count("worktree ") == 4  # left
    (Path(children[2].workspace) / "late.txt").write_text("written after its last commit\n")
    assert await sweep_worktrees(db) == 1
    assert git(workspace, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(workspace, "show", f"errands/{children[2].id}:late.txt") == (
        "written after its last commit\n"
    )


@pytest.mark.parametrize("control", [False, True], ids=["guard", "CONTROL"])
def test_a_config_the_sandbox_wrote_makes_errands_git_run_no_program(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, control: bool
) -> None:
    """A workspace without ``.git`` is writable in the sandbox: a command there can ``git
    init`` and write the repository's config -- an fsmonitor, a filter driver that a
    child's ``.gitattributes`` names. errands' own git runs outside the sandbox and runs
    neither (the fsmonitor off, the filter refused with one clear error); the control, git
    with hooks off only, runs both."""
    ran = tmp_path / "ran"
    git(repo, "config", "core.fsmonitor", f"echo fsmonitor >> {ran}; false")
    if control:
        monkeypatch.setattr(worktrees, "_OFF", ("-c", "core.hooksPath=/dev/null"))
        monkeypatch.setattr(worktrees, "_refuse_programs", lambda repo: None)
    child = repo / "subtasks" / "1.0.0"
    worktrees.add(repo, child, "errands/x.1.0.0")
    (child / "new.txt").write_text("x\n")
    assert worktrees.commit(repo, child, "errands: sub-errand x.1.0.0")
    git(repo, "config", "filter.evil.clean", f"echo filter >> {ran}; cat")
    (child / ".gitattributes").write_text("*.txt filter=evil\n")
    (child / "more.txt").write_text("y\n")
    if control:
        worktrees.commit(repo, child, "errands: sub-errand x.1.0.0")
        assert set(ran.read_text().split()) == {"fsmonitor", "filter"}
        return
    with pytest.raises(worktrees.GitFailed, match=r"config sets filter\.evil\.clean"):
        worktrees.commit(repo, child, "errands: sub-errand x.1.0.0")
    # a new child gets a plain folder (a step failing on it would fail on every retry)
    assert worktrees.add(repo, repo / "subtasks" / "2.0.0", "errands/x.2.0.0") is False
    assert not ran.exists()


def _exclude_as_before(common: Path) -> None:
    """The control: e2eb5c9's _exclude, which followed a link at info/exclude."""
    with open(common / "info" / "exclude", "a", encoding="utf-8") as f:
        f.write(worktrees.EXCLUDE + "\n")


@pytest.mark.parametrize("control", [False, True], ids=["guard", "CONTROL"])
def test_an_exclude_file_linked_out_of_the_repository_is_not_written(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, control: bool
) -> None:
    """A repository made in the sandbox can make info/exclude a link to any file of
    errands' user; errands appends to it only if it is a file of the repository."""
    outside = tmp_path / "profile"
    outside.write_text("untouched\n")
    exclude = repo / ".git" / "info" / "exclude"
    exclude.unlink(missing_ok=True)
    exclude.symlink_to(outside)
    if control:
        monkeypatch.setattr(worktrees, "_exclude", _exclude_as_before)
        worktrees.add(repo, repo / "subtasks" / "1.0.0", "errands/x.1.0.0")
        assert outside.read_text() == "untouched\n/subtasks/\n"
        return
    with pytest.raises(worktrees.GitFailed, match="is a symbolic link"):
        worktrees.add(repo, repo / "subtasks" / "1.0.0", "errands/x.1.0.0")
    assert outside.read_text() == "untouched\n"


@pytest.mark.parametrize("control", [False, True], ids=["guard", "CONTROL"])
def test_a_planted_worktree_naming_another_repository_is_not_used(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, control: bool
) -> None:
    """A repository made in the sandbox can hold an admin folder for the child's folder
    whose commondir names another repository of the person's: errands does not take it
    for the child's worktree (the control, e2eb5c9's backlink check alone, commits the
    child's work onto that repository's main)."""
    victim = tmp_path / "victim"
    init_repo(victim)
    child = repo / "subtasks" / "1.0.0"
    admin = repo / ".git" / "worktrees" / "planted"
    admin.mkdir(parents=True)
    child.mkdir(parents=True)
    (admin / "gitdir").write_text(f"{child}/.git\n")
    (admin / "commondir").write_text(f"{victim / '.git'}\n")
    (admin / "HEAD").write_text("ref: refs/heads/main\n")
    (child / ".git").write_text(f"gitdir: {admin}\n")
    before = git(victim, "rev-parse", "main")
    if control:
        monkeypatch.setattr(worktrees, "_admin", _admin_as_before)
        assert worktrees.add(repo, child, "errands/x.1.0.0")  # "made before a crash"
    else:  # not a worktree of this repository: a folder that is not empty, refused
        with pytest.raises(worktrees.GitFailed, match="exists and is not empty"):
            worktrees.add(repo, child, "errands/x.1.0.0")
    (child / "planted.txt").write_text("the child's work\n")
    committed = worktrees.commit(repo, child, "errands: sub-errand x.1.0.0")
    if control:
        assert committed and git(victim, "rev-parse", "main") != before
        return
    assert not committed and git(victim, "rev-parse", "main") == before


def _admin_as_before(common: Path, work_tree: Path) -> Path | None:
    dot = Path(os.path.realpath(work_tree)) / ".git"
    for entry in (common / "worktrees").iterdir():
        back = entry / (entry / "gitdir").read_text(encoding="utf-8").strip()
        if Path(os.path.realpath(back.parent)) / back.name == dot:
            return entry
    return None
