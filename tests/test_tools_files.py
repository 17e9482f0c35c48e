"""The file tools and workspace confinement, on real directories with real symlinks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from seams import child_env

from errands.config import Settings
from errands.core.labels import Confidentiality, Integrity
from errands.tools import workspace as workspace_module
from errands.tools.builtin import builtin_toolset
from errands.tools.builtin.files import LIST_CAP, READ_CAP, read_file
from errands.tools.tool import ToolContext, ToolError, ToolOutput
from errands.tools.toolset import FunctionToolset
from errands.tools.workspace import (
    PathRefused,
    WorkspaceRefused,
    locate_inside,
    make_workspace,
    resolve_inside,
)

SECRET = "the secret outside the workspace"


@pytest.fixture
def registry() -> FunctionToolset:
    return builtin_toolset()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text(SECRET)
    return d


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    return d


def ctx_for(ws: Path) -> ToolContext:
    return ToolContext("e1", 1, "e1:1", ws, Settings(home=ws.parent / "home"))


async def call(registry: FunctionToolset, ws: Path, name: str, **args: Any) -> ToolOutput:
    tool = registry.get(name)
    return await tool.invoke(tool.validate(args), ctx_for(ws))


# -- the tools do their job --------------------------------------------------------------


async def test_write_then_read_round_trip(registry: FunctionToolset, ws: Path) -> None:
    out = await call(
        registry, ws, "write_file", path="notes/deep/todo.md", content="héllo\nworld\n"
    )
    assert out.text == "wrote 13 bytes to notes/deep/todo.md"
    assert (ws / "notes/deep/todo.md").read_text() == "héllo\nworld\n"

    read = await call(registry, ws, "read_file", path="notes/deep/todo.md")
    assert read.text == "héllo\nworld\n"
    # a file's content can come from anywhere: untrusted, private, its path as source
    assert read.integrity is Integrity.untrusted
    assert read.confidentiality is Confidentiality.private
    assert read.source == "notes/deep/todo.md"


async def test_write_replaces_atomically_and_keeps_the_mode(
    registry: FunctionToolset, ws: Path
) -> None:
    target = ws / "run.sh"
    target.write_text("old content that is longer than the new one")
    target.chmod(0o750)
    await call(registry, ws, "write_file", path="run.sh", content="new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in ws.iterdir()) == ["run.sh"]  # no temp file left behind


async def test_write_refuses_a_directory_and_the_workspace(
    registry: FunctionToolset, ws: Path
) -> None:
    (ws / "d").mkdir()
    with pytest.raises(ToolError, match="is a directory"):
        await call(registry, ws, "write_file", path="d", content="x")
    with pytest.raises(ToolError, match="workspace itself"):
        await call(registry, ws, "write_file", path=".", content="x")


async def test_read_errors_are_clear(registry: FunctionToolset, ws: Path) -> None:
    (ws / "blob.bin").write_bytes(b"\x89PNG\x00\x01\x02")
    (ws / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (ws / "d").mkdir()
    with pytest.raises(ToolError, match=r"no such file: missing\.txt"):
        await call(registry, ws, "read_file", path="missing.txt")
    with pytest.raises(ToolError, match="binary file"):
        await call(registry, ws, "read_file", path="blob.bin")
    with pytest.raises(ToolError, match="not UTF-8"):
        await call(registry, ws, "read_file", path="latin1.txt")
    with pytest.raises(ToolError, match="is a directory; use list_files"):
        await call(registry, ws, "read_file", path="d")


async def test_read_cuts_a_large_file_at_the_cap_and_says_so(
    registry: FunctionToolset, ws: Path
) -> None:
    # a multi-byte character straddles the cap: the cut must not break the decoding
    (ws / "big.txt").write_text("a" * (READ_CAP - 1) + "é" + "b" * 1000, encoding="utf-8")
    out = await call(registry, ws, "read_file", path="big.txt")
    body, note = out.text.rsplit("\n", 1)
    assert body == "a" * (READ_CAP - 1)
    assert f"the file has {READ_CAP + 1001} bytes" in note


async def test_list_files_recursive_with_sizes_and_links(
    registry: FunctionToolset, ws: Path, outside: Path
) -> None:
    (ws / "src/pkg").mkdir(parents=True)
    (ws / "src/pkg/mod.py").write_text("x = 1\n")
    (ws / "README.md").write_text("hi")
    (ws / ".git/objects").mkdir(parents=True)
    (ws / ".git/objects/abc").write_text("blob")
    (ws / "out").symlink_to(outside)
    out = await call(registry, ws, "list_files")
    assert out.text.splitlines() == [
        ".git/  (not listed)",
        "README.md  2",
        f"out -> {outside}",
        "src/",
        "src/pkg/",
        "src/pkg/mod.py  6",
    ]
    assert "secret" not in out.text  # the link is shown, not followed
    assert out.integrity is Integrity.untrusted

    sub = await call(registry, ws, "list_files", path="src")
    assert sub.text.splitlines() == ["src/pkg/", "src/pkg/mod.py  6"]
    with pytest.raises(ToolError, match="not a directory"):
        await call(registry, ws, "list_files", path="README.md")


async def test_list_files_stops_at_the_cap(registry: FunctionToolset, ws: Path) -> None:
    for i in range(LIST_CAP + 5):
        (ws / f"f{i:04d}").write_text("")
    lines = (await call(registry, ws, "list_files")).text.splitlines()
    assert len(lines) == LIST_CAP + 1
    assert "stopped after" in lines[-1]


async def test_paths_inside_are_allowed_in_every_spelling(
    registry: FunctionToolset, ws: Path
) -> None:
    (ws / "a").mkdir()
    (ws / "a/f.txt").write_text("inside")
    (ws / "alias").symlink_to(ws / "a")  # a symlink that stays inside is fine
    for spelling in ["a/f.txt", "./a/f.txt", "a/../a/f.txt", str(ws / "a/f.txt"), "alias/f.txt"]:
        assert (await call(registry, ws, "read_file", path=spelling)).text == "inside"
    # writing through an inside symlink writes the file it points to
    (ws / "link.txt").symlink_to(ws / "a/f.txt")
    await call(registry, ws, "write_file", path="link.txt", content="changed")
    assert (ws / "a/f.txt").read_text() == "changed"
    assert (ws / "link.txt").is_symlink()


# -- the escapes that must fail ----------------------------------------------------------


def _escapes(ws: Path, outside: Path) -> dict[str, str]:
    """Set up each escape attempt; name -> the path the model would give."""
    (ws / "etc_link").symlink_to("/etc")
    (ws / "sub").mkdir()
    (ws / "sub/hop").symlink_to(outside)  # a symlinked directory in the middle of a path
    (ws / "dangling").symlink_to(outside / "new.txt")  # points outside, target missing
    (ws / "rel_up").symlink_to("../outside")  # a relative link climbing out
    return {
        "dotdot": "../outside/secret.txt",
        "absolute": "/etc/passwd",
        "absolute_outside": str(outside / "secret.txt"),
        "symlink_to_etc": "etc_link/passwd",
        "symlink_dir_mid_path": "sub/hop/secret.txt",
        "dangling_symlink": "dangling",
        "relative_symlink": "rel_up/secret.txt",
        "dotdot_after_link": "sub/hop/../outside/secret.txt",
        "home": "~/.bashrc",
    }


ESCAPES = [
    "dotdot",
    "absolute",
    "absolute_outside",
    "symlink_to_etc",
    "symlink_dir_mid_path",
    "dangling_symlink",
    "relative_symlink",
    "dotdot_after_link",
    "home",
]


@pytest.mark.parametrize("attempt", ESCAPES)
async def test_escape_is_refused_for_read(
    registry: FunctionToolset, ws: Path, outside: Path, attempt: str
) -> None:
    path = _escapes(ws, outside)[attempt]
    with pytest.raises(PathRefused, match="outside the workspace"):
        resolve_inside(ws, path)
    with pytest.raises(PathRefused):
        await call(registry, ws, "read_file", path=path)


@pytest.mark.parametrize("attempt", ESCAPES)
async def test_escape_is_refused_for_write(
    registry: FunctionToolset, ws: Path, outside: Path, attempt: str
) -> None:
    path = _escapes(ws, outside)[attempt]
    before = sorted(p.name for p in outside.iterdir())
    with pytest.raises(PathRefused):
        await call(registry, ws, "write_file", path=path, content="pwned")
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (outside / "secret.txt").read_text() == SECRET
    assert not (outside / "new.txt").exists()  # not written through the dangling link


@pytest.mark.parametrize("path", ["..", "sub/hop", "/"])
async def test_escape_is_refused_for_list(
    registry: FunctionToolset, ws: Path, outside: Path, path: str
) -> None:
    _escapes(ws, outside)
    with pytest.raises(PathRefused):
        await call(registry, ws, "list_files", path=path)


async def test_write_does_not_create_parents_outside(
    registry: FunctionToolset, ws: Path, outside: Path
) -> None:
    _escapes(ws, outside)
    with pytest.raises(PathRefused):
        await call(registry, ws, "write_file", path="sub/hop/newdir/x.txt", content="x")
    assert not (outside / "newdir").exists()


def test_a_symlink_left_unresolved_is_not_followed_at_open(ws: Path, outside: Path) -> None:
    # realpath cannot resolve a symlink loop and leaves it in the path; the
    # component-by-component O_NOFOLLOW walk refuses it rather than following it.
    (ws / "loop").symlink_to("loop")
    with pytest.raises(PathRefused, match="symbolic link"), locate_inside(ws, "loop/x.txt"):
        pass


def test_nul_in_path_is_refused(ws: Path) -> None:
    with pytest.raises(PathRefused, match="NUL"):
        resolve_inside(ws, "a\x00b")


# -- the time-of-check/time-of-use race ----------------------------------------------------
#
# A thread keeps swapping ws/d between a real directory and a symlink to the outside
# while a tool reads d/secret.txt. The race window is the time between the check
# (resolve_inside: d is the real directory, the path is inside) and the open. Checking
# and then opening by name leaks the secret there; locate_inside's O_NOFOLLOW walk must
# refuse instead. The tests run until the window was hit (a generous bound on attempts:
# on an idle machine it takes a few hundred, ~1 in 700 attempts lands in the window).

RACE_ATTEMPTS = 200_000  # at most; each run stops as soon as it has seen enough
WINDOW_REFUSAL = "is a symbolic link that was not resolved inside the workspace (it changed"


@contextmanager
def swapping(ws: Path, outside: Path) -> Iterator[None]:
    """ws/d holds secret.txt ("inside") and is swapped, over and over, with a symlink
    to *outside* (which holds the secret) until the block ends."""
    (ws / "d").mkdir()
    (ws / "d/secret.txt").write_text("inside")
    (ws / ".link").symlink_to(outside)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(ws / "d", ws / ".dir")
            os.rename(ws / ".link", ws / "d")
            os.rename(ws / "d", ws / ".link")
            os.rename(ws / ".dir", ws / "d")

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        yield
    finally:
        stop.set()
        swapper.join()


def test_a_directory_swapped_for_a_symlink_mid_call_is_not_followed(
    ws: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Count the runs that hit the window: resolve_inside passed the path on the safe
    # layout (d a real directory inside), and then the walk found d a symlink and
    # refused it -- the refusal only a change between check and open produces.
    checked: list[Path] = []

    def recording_resolve(workspace: Path, path: str) -> Path:
        resolved = resolve_inside(workspace, path)
        checked.append(resolved)
        return resolved

    monkeypatch.setattr(workspace_module, "resolve_inside", recording_resolve)
    safe = Path(os.path.realpath(ws)) / "d" / "secret.txt"
    seen: list[str] = []
    in_window = attempts = 0
    with swapping(ws, outside):
        while attempts < RACE_ATTEMPTS and not (in_window >= 3 and "inside" in seen):
            attempts += 1
            checked.clear()
            try:
                seen.append(read_file("d/secret.txt", ctx_for(ws)).text)
                if seen[-1] == SECRET:
                    break  # followed: no need to go on
            except PathRefused as exc:
                if checked == [safe] and WINDOW_REFUSAL in str(exc):
                    in_window += 1
            except ToolError:
                continue
    assert SECRET not in seen
    # the window was reached (more than once) and every time the walk refused to follow
    assert in_window >= 3, f"{in_window} of {attempts} attempts hit the window"
    assert "inside" in seen  # the reads did happen while the swapping went on


def test_negative_control_checking_then_opening_by_path_reads_the_secret(
    ws: Path, outside: Path
) -> None:
    # The control: the same check, then an open by path (following links) instead of
    # the O_NOFOLLOW walk. Under the same swapping it reads the secret.
    def naive_read(path: str) -> str:
        return resolve_inside(ws, path).read_text()  # checked inside, then followed

    leaked = attempts = 0
    with swapping(ws, outside):
        while attempts < RACE_ATTEMPTS and not leaked:
            attempts += 1
            try:
                if naive_read("d/secret.txt") == SECRET:
                    leaked += 1
            except (PathRefused, OSError):
                continue
    assert leaked, f"no leak in {attempts} attempts"  # the check above would have caught this


# -- the negative control: with confinement off, the same escape succeeds ----------------


@pytest.mark.parametrize("control", [False, True], ids=["confined", "control"])
def test_negative_control_escape_succeeds_without_confinement(
    ws: Path, outside: Path, control: bool
) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from errands.tools.builtin import builtin_toolset
        from errands.tools.tool import ToolContext, ToolError

        tool = builtin_toolset().get("read_file")
        ctx = ToolContext("e1", 1, "k", Path(sys.argv[1]))
        try:
            print(asyncio.run(tool.invoke({"path": "../outside/secret.txt"}, ctx)).text)
        except ToolError as exc:
            print("REFUSED", exc)
        """
    )
    # the control: file tools that open whatever path they are given
    env = child_env(controls=["no_confinement"] if control else [])
    done = subprocess.run(
        [sys.executable, "-c", script, str(ws)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    if control:
        assert done.stdout.strip() == SECRET  # the test above would have caught this
    else:
        assert done.stdout.startswith("REFUSED")


# -- workspaces --------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    person = tmp_path / "person"
    person.mkdir()
    monkeypatch.setenv("HOME", str(person))
    # tmp_path is a workspace root: what is refused below is refused for another reason
    return Settings(home=person / ".local/share/errands", workspaces={"roots": [tmp_path]})


def test_default_workspace_is_a_fresh_dir_under_errands_home(settings: Settings) -> None:
    path = make_workspace(settings, "e0abc")
    assert path == settings.workspaces.resolve() / "e0abc"
    assert path.is_dir()


def test_a_project_dir_is_accepted_and_created(settings: Settings, tmp_path: Path) -> None:
    project = tmp_path / "person/projects/site"
    assert make_workspace(settings, "e1", project) == project.resolve()
    assert project.is_dir()
    assert make_workspace(settings, "e1", str(project)) == project.resolve()  # existing is fine


@pytest.mark.parametrize(
    ("requested", "reason"),
    [
        ("/", "root directory"),
        ("~", "home directory"),
        ("{tmp}", "home directory"),  # an ancestor of home holds it
        ("~/.local", "contains ERRANDS_HOME"),
        ("~/.local/share/errands", "contains ERRANDS_HOME"),
        ("~/.local/share/errands/workspaces", "not below its workspaces"),
        ("~/.local/share/errands/logs", "not below its workspaces"),
        ("{tmp}/file.txt", "is a file"),
        ("{tmp}/home_link", "home directory"),  # a symlink to home is home
    ],
)
def test_unsafe_workspaces_are_refused(
    settings: Settings, tmp_path: Path, requested: str, reason: str
) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "home_link").symlink_to(tmp_path / "person")
    with pytest.raises(WorkspaceRefused, match=reason):
        make_workspace(settings, "e1", requested.format(tmp=tmp_path))
    assert not (tmp_path / "person/.local/share/errands/logs").exists()


def test_an_errand_id_cannot_climb_out(settings: Settings) -> None:
    for bad in ["../x", "a/b", "..", ""]:
        with pytest.raises(WorkspaceRefused):
            make_workspace(settings, bad)
