"""Sub-errands survive a crash (issue 22): a worker killed by SIGKILL between creating
child 7 and child 8 is started again, and every child exists exactly once -- the ids
are derived from the call, so creating one again is a no-op. The negative control
(random child ids) starts the first eight twice."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.fanout import CHILD
from helpers.gitrepo import git, init_repo
from seams import child_env

from errands.config import Settings
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.store.sqlite import SQLiteStore

WORKER = Path(__file__).parent / "helpers" / "delegate_worker.py"


def _run(home: Path, eid: str, *extra: str, fault: str | None = None) -> int:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(home), eid, *extra],
        env=child_env(fault=fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed ({proc.returncode}): {err[-2000:]}")
    return proc.returncode


async def _children(home: Path, eid: str) -> collections.Counter[str]:
    store = SQLiteStore(home / "s.sqlite")
    try:
        assert (await store.view(eid)).state is ErrandState.done
        return collections.Counter(
            v.title for v in await store.list_errands(limit=1000) if v.parent == eid
        )
    finally:
        await store.close()


@pytest.mark.parametrize("control", [False, True], ids=["derived-ids", "control-random-ids"])
async def test_a_kill_between_child_7_and_8_starts_each_child_once(
    home: Path, settings: Settings, control: bool
) -> None:
    store = SQLiteStore(home / "s.sqlite")
    eid = await create_errand(store, settings, "fan out", model="scripted:demo")
    await store.close()
    extra = ("--random-ids",) if control else ()
    # the 8th child is made, the 9th not yet: SIGKILL (the points count from 1)
    killed = await asyncio.to_thread(_run, home, eid, *extra, fault="child_created:8")
    assert killed == -signal.SIGKILL
    assert await asyncio.to_thread(_run, home, eid, *extra) == 0
    made = await _children(home, eid)
    tasks = {f"{CHILD} {k}" for k in range(20)}
    if control:
        assert set(made) == tasks and max(made.values()) == 2, made  # duplicates
    else:
        assert made == collections.Counter(tasks), made  # each exactly once


@pytest.mark.parametrize("control", [False, True], ids=["found-again", "control-naive-add"])
async def test_a_kill_between_worktree_8_and_its_child_loses_nothing(
    home: Path, settings: Settings, control: bool
) -> None:
    """A git workspace: the 8th child's worktree is made, the child is not: SIGKILL. The
    resume finds that worktree instead of adding it again; every child's work ends up
    committed on its own branch and every worktree is removed when the parent ends. The
    control adds each worktree anew on every pass: the resume cannot go on."""
    store = SQLiteStore(home / "s.sqlite")
    eid = await create_errand(store, settings, "fan out", model="scripted:demo")
    workspace = Path((await store.view(eid)).workspace)
    await store.close()
    init_repo(workspace)
    extra = ("--writes", *(("--naive-worktrees",) if control else ()))
    killed = await asyncio.to_thread(_run, home, eid, *extra, fault="child_folder:8")
    assert killed == -signal.SIGKILL
    assert await asyncio.to_thread(_run, home, eid, *extra) == 0
    store = SQLiteStore(home / "s.sqlite")
    try:
        view = await store.view(eid)
        children = await store.children(eid)
    finally:
        await store.close()
    if control:
        assert view.state is ErrandState.needs_attention, view.reason
        assert "worktree', 'add'" in (view.reason or ""), view.reason  # (a second time)
        return
    assert view.state is ErrandState.done, view.reason
    assert sorted(c.title for c in children) == sorted(f"{CHILD} {k}" for k in range(20))
    branches = git(workspace, "branch", "--list", "errands/*", "--format=%(refname:short)")
    assert sorted(branches.split()) == sorted(f"errands/{c.id}" for c in children)
    for c in children:  # each child's file, committed on its branch (kept: not merged)
        assert git(workspace, "show", f"errands/{c.id}:out.txt") == "work"
    assert git(workspace, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not (workspace / "subtasks").exists() or not any((workspace / "subtasks").iterdir())
    assert git(workspace, "status", "--porcelain") == ""
