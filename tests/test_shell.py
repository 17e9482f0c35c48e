"""The `shell` tool in real bubblewrap: canaries, the network, the caps, the loop.

Worst case: the person approves every command. Canaries planted around the workspace --
a key in a fake home, files in ERRANDS_HOME (config, server token), a file outside the
workspace reached by absolute path, by `..`, through a planted symlink, a hard link and
/proc -- and a fake key in errands' environment must never appear in a result. The
negative control (``NoSandbox``, tests/seams/shell_controls.py) runs the same commands
without the sandbox and they DO leak. bubblewrap missing is a failure here, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from helpers.kit import call, harness_for, script
from seams.shell_controls import NoSandbox

from errands.config import Settings
from errands.core.labels import Confidentiality, Integrity
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.store import Store
from errands.tools.builtin import builtin_toolset
from errands.tools.builtin.shell import make_shell_tool
from errands.tools.sandbox.bwrap import Limits, Sandbox, SandboxUnavailable
from errands.tools.tool import Tool, ToolContext, ToolError, ToolOutput

CANARY = "CANARY-7f3a9c"
KEY = "sk-FAKE-KEY-c0ffee-0123456789"


def test_bubblewrap_is_installed_and_works() -> None:
    assert shutil.which("bwrap"), "bubblewrap is missing: .ci/run installs it"
    Sandbox().check()  # raises SandboxUnavailable with what to install


class Scene:
    def __init__(self, tmp: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.workspace = tmp / "ws"
        self.workspace.mkdir()
        fake_home = tmp / "fakehome"
        (fake_home / ".ssh").mkdir(parents=True)
        self.ssh_key = fake_home / ".ssh" / "id_rsa"
        self.ssh_key.write_text(f"ssh {CANARY}-ssh\n")
        monkeypatch.setenv("HOME", str(fake_home))
        monkeypatch.setenv("ERRANDS_FAKE_API_KEY", f"{KEY}-env")
        self.config = home / "config.toml"
        with open(self.config, "a") as fh:
            fh.write(f"# {CANARY}-config\n")
        self.token = home / "server-token"
        self.token.write_text(f"{CANARY}-token\n")
        self.outside = tmp / "outside" / "secret.txt"
        self.outside.parent.mkdir()
        self.outside.write_text(f"{CANARY}-outside\n")
        (self.workspace / "link").symlink_to(self.outside)
        (self.workspace / "homelink").symlink_to(fake_home)

    def ctx(self) -> ToolContext:
        return ToolContext("e1", 1, "k", self.workspace)

    def attempts(self) -> str:
        files = [self.ssh_key, self.config, self.token, self.outside]
        rel = os.path.relpath(self.outside, self.workspace)
        lines = [f"cat {f}; cat /proc/self/root{f}; cat /proc/1/root{f}" for f in files]
        lines += [
            "cat ~/.ssh/id_rsa",
            f"cat {rel}; cat /workspace/{rel}; cat ../../{rel}",
            "cat link; cat homelink/.ssh/id_rsa",
            f"ln {self.outside} hard && cat hard",
            f"cp {self.outside} copy && cat copy",
            "cat /proc/1/environ; cat /proc/*/environ; env",
            # the pattern is built inside, so the command's own text holds no canary
            'p=CANARY; timeout 5 grep -rs "$p-" /workspace /tmp /etc /root /home | head',
            f"ls -la {self.outside.parent} {self.token.parent} /root /home",
        ]
        return "\n".join(f"{line} 2>&1" for line in lines)


@pytest.fixture
def scene(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Scene:
    return Scene(tmp_path, home, monkeypatch)


async def run(tool: Tool, scene: Scene, command: str, timeout_s: int = 30) -> ToolOutput:
    return await tool.invoke(
        tool.validate({"command": command, "timeout_s": timeout_s}), scene.ctx()
    )


def _leaks(text: str) -> list[str]:
    return [w for w in (CANARY, KEY) if w in text]


async def test_no_canary_reaches_the_output(scene: Scene) -> None:
    out = await run(make_shell_tool(), scene, scene.attempts())
    assert _leaks(out.text) == [], out.text
    assert "No such file or directory" in out.text  # it really tried


async def test_negative_control_without_the_sandbox_the_canaries_leak(scene: Scene) -> None:
    out = await run(make_shell_tool(NoSandbox()), scene, scene.attempts())
    assert f"{CANARY}-ssh" in out.text and f"{CANARY}-token" in out.text
    assert f"{CANARY}-outside" in out.text and KEY in out.text


async def test_it_runs_unprivileged_with_the_allowlisted_environment(scene: Scene) -> None:
    out = await run(make_shell_tool(), scene, "id -u; id -g; pwd; echo $HOME; env | sort")
    lines = out.text.split("--- stdout ---\n", 1)[1].splitlines()
    assert int(lines[0]) != 0 and int(lines[1]) != 0
    assert lines[2] == "/workspace" and lines[3] == "/workspace"
    names = {line.split("=", 1)[0] for line in lines[4:] if "=" in line}
    assert names <= {"PATH", "HOME", "LANG", "TERM", "PWD", "SHLVL", "_", "OLDPWD"}, names


async def test_the_workspace_is_writable_and_the_system_is_not(scene: Scene) -> None:
    out = await run(
        make_shell_tool(),
        scene,
        "echo made > made.txt; touch /usr/x /bin/x /lib/x 2>&1; echo x >> /etc/passwd 2>&1; "
        "cat made.txt",
    )
    assert (scene.workspace / "made.txt").read_text() == "made\n"
    # (the root itself is bwrap's own tmpfs: writable, private, gone afterwards)
    assert out.text.count("Read-only file system") >= 4, out.text


async def test_the_output_is_labelled_untrusted_and_private(scene: Scene) -> None:
    out = await run(make_shell_tool(), scene, "echo hi; echo oops >&2; exit 3")
    assert out.integrity is Integrity.untrusted
    assert out.confidentiality is Confidentiality.private
    assert out.text.startswith("exit code 3")
    assert "--- stdout ---\nhi" in out.text and "--- stderr ---\noops" in out.text


async def test_nothing_reaches_a_local_http_sink(scene: Scene, sink: object) -> None:
    port = sink.port  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}/leak"
    command = "\n".join(
        [
            f"curl -sS -m 3 {url} 2>&1",
            f"python3 -c \"import urllib.request as u; u.urlopen('{url}', timeout=3)\" 2>&1"
            " | tail -1",
            f"exec 3<>/dev/tcp/127.0.0.1/{port} 2>&1 && echo 'GET /leak HTTP/1.0' >&3",
            "getent hosts example.com || echo no-dns",
            "ip -o addr 2>/dev/null | awk '{print $2}' | sort -u",
        ]
    )
    out = await run(make_shell_tool(), scene, command)
    await asyncio.sleep(0.2)
    assert sink.requests == [], out.text  # type: ignore[attr-defined]
    assert "no-dns" in out.text
    control = await run(make_shell_tool(NoSandbox()), scene, f"curl -sS -m 3 {url}")
    assert sink.requests, control.text  # type: ignore[attr-defined]  # the control reaches it


# --- caps: each ends with a clear result within its time --------------------------------


async def test_a_fork_bomb_is_stopped(scene: Scene) -> None:
    started = time.monotonic()
    # the shell stays in the foreground, or the bomb would die with the sandbox at once
    out = await run(make_shell_tool(), scene, "b() { b | b & }; b; sleep 15", timeout_s=20)
    assert time.monotonic() - started < 20  # well within: 0.2-0.5 s on an idle machine
    assert "stopped by errands: it started more than 256 processes" in out.text, out.text


async def test_endless_output_is_cut_and_counted(scene: Scene) -> None:
    started = time.monotonic()
    out = await run(make_shell_tool(), scene, "yes", timeout_s=3)
    assert time.monotonic() - started < 10
    assert "stopped by errands" in out.text
    assert "[stdout cut off after 200000 bytes;" in out.text
    assert len(out.text) < 210_000


async def test_a_large_file_write_hits_the_file_size_limit(scene: Scene) -> None:
    tool = make_shell_tool(limits=Limits(file_size=8 << 20))
    out = await run(tool, scene, "head -c 10000000000 /dev/zero > big", timeout_s=20)
    assert "SIGXFSZ" in out.text and "file size limit" in out.text, out.text
    assert (scene.workspace / "big").stat().st_size == 8 << 20
    default = await run(make_shell_tool(), scene, "ulimit -f; ulimit -t; ulimit -v; ulimit -u")
    assert "1048576\n30\n4194304\n256" in default.text  # 1 GiB, the wall time, 4 GiB, 256


async def test_an_endless_loop_is_killed_at_the_timeout(scene: Scene) -> None:
    started = time.monotonic()
    out = await run(make_shell_tool(), scene, "sleep 1000 & while :; do :; done", timeout_s=2)
    assert time.monotonic() - started < 8
    assert "stopped by errands: it ran longer than 2 s" in out.text


async def test_it_refuses_without_bubblewrap(scene: Scene) -> None:
    tool = make_shell_tool(Sandbox(bwrap="/nonexistent/bwrap"))
    with pytest.raises(ToolError, match="apt-get install bubblewrap"):
        await run(tool, scene, "true")
    with pytest.raises(SandboxUnavailable):
        Sandbox(bwrap="/nonexistent/bwrap").check()


# --- through the loop -------------------------------------------------------------------


def test_shell_is_a_builtin() -> None:
    tool = builtin_toolset().get("shell")  # type: ignore[attr-defined]
    assert tool is not None and tool.effect({"command": "ls"}).value == "write_local"


async def test_a_shell_call_waits_for_approval_then_runs_untrusted(
    store: Store, settings: Settings
) -> None:
    model = script(
        {"text": "listing", "tool_calls": [call("shell", command="echo sandboxed-$((6*7))")]},
        {"text": "done"},
    )
    harness = harness_for(store, settings, model=model)
    eid = await create_errand(store, settings, "list things", model="scripted:demo")
    runner = harness.runner()
    await runner.run_errand(eid)
    view = await store.view(eid)
    assert view.state is ErrandState.waiting_approval
    (pending,) = view.pending.values()
    assert pending.tool == "shell" and "echo sandboxed" in pending.preview
    assert "no network" in pending.preview
    await harness.approvals.approve(pending.id, by="ann", channel="cli")
    view = await runner.run_errand(eid)
    assert view.state is ErrandState.done
    contents = [getattr(s.event, "content", None) for s in await store.read(eid)]
    results = [c for c in contents if c is not None and "sandboxed-42" in c.text]
    assert results and all(c.integrity is Integrity.untrusted for c in results)


class FollowsWorkspaceLinks(Sandbox):
    """The control: opens the workspace's path following links."""

    @staticmethod
    def open_workspace(workspace: Path) -> int:
        return os.open(workspace, os.O_PATH | os.O_DIRECTORY)


@pytest.mark.parametrize("sandbox", [Sandbox, FollowsWorkspaceLinks], ids=["pinned", "CONTROL"])
async def test_a_workspace_inside_another_cannot_be_swapped_for_a_link(
    tmp_path: Path, sandbox: type[Sandbox]
) -> None:
    """Errand A's workspace holds errand B's (a named workspace may lie below another);
    a command of A's swaps B's directory for a link to a directory outside. B's next
    command must not get that directory as its workspace."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{CANARY}-swapped\n")
    outer = tmp_path / "a"
    inner = outer / "b"
    inner.mkdir(parents=True)
    tool = make_shell_tool()
    swap = tool.validate({"command": f"rm -r b && ln -s {outside} b && echo swapped"})
    assert "swapped" in (await tool.invoke(swap, ToolContext("a", 1, "k", outer))).text
    victim = make_shell_tool(sandbox())
    cat = victim.validate({"command": "cat secret.txt 2>&1"})
    if sandbox is FollowsWorkspaceLinks:  # the control: B works in the directory outside
        out = await victim.invoke(cat, ToolContext("b", 1, "k", inner))
        assert f"{CANARY}-swapped" in out.text, out.text
        return
    with pytest.raises(ToolError, match="without following a symbolic link"):
        await victim.invoke(cat, ToolContext("b", 1, "k", inner))
