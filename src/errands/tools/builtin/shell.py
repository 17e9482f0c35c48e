"""The ``shell`` tool: one command line, run in the sandbox (:mod:`errands.tools.sandbox`).

Effect ``write_local``: the command can change the workspace and nothing else -- the
sandbox has no network at all in this version (egress through errands' proxy comes
later). The default policy asks before every command no rule allows
(:mod:`errands.tools.sandbox.commands`). The output is labelled **untrusted** (a command prints
what files and programs written by others say) and **private** (it may show the
workspace's contents).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity
from errands.tools.sandbox.bwrap import WORKSPACE, Limits, Ran, Sandbox, SandboxUnavailable
from errands.tools.sandbox.commands import parse_script
from errands.tools.tool import (
    Tool,
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolOutput,
    make_tool,
)

__all__ = ["MAX_TIMEOUT_S", "make_shell_tool", "shell_preview"]

MAX_TIMEOUT_S = 600


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


_SIGNAL_WHY = {
    "SIGXCPU": "its CPU time limit",
    "SIGXFSZ": "its file size limit",
    "SIGKILL": "killed",
    "SIGSEGV": "a crash",
}


def _status(ran: Ran) -> str:
    took = f"{ran.seconds:.1f} s"
    if ran.killed:
        return f"stopped by errands: {ran.killed} ({took}); the whole sandbox was killed"
    code = ran.returncode if ran.returncode is not None else -1
    if code < 0 or code > 128:
        sig = -code if code < 0 else code - 128
        name = _signal_name(sig)
        why = _SIGNAL_WHY.get(name, "")
        limit = ""
        if name == "SIGXFSZ":
            limit = f" ({ran.limits.file_size >> 20} MB per file)"
        return f"exit code {code}: ended by {name}{f', {why}' if why else ''}{limit} ({took})"
    return f"exit code {code} ({took})"


def _stream(name: str, kept: bytes, total: int) -> str:
    text = kept.decode("utf-8", errors="replace")
    if total > len(kept):
        text += f"\n[{name} cut off after {len(kept)} bytes; {total - len(kept)} more not shown]"
    return f"--- {name} ---\n{text}" if text else f"--- {name} --- (empty)"


def render(ran: Ran, note: str = "") -> str:
    """The result text: status, then stdout and stderr, each capped with a note."""
    parts = [_status(ran) + note]
    parts.append(_stream("stdout", ran.stdout, ran.stdout_total))
    parts.append(_stream("stderr", ran.stderr, ran.stderr_total))
    return "\n".join(parts)


def shell_preview(args: Mapping[str, Any], workspace: Path) -> str:
    """The approval card: the command, what the parser read in it, where it runs."""
    command = str(args.get("command", ""))
    parsed = parse_script(command)
    lines = [f"$ {command}", ""]
    shown = [c.text for c in parsed.commands if c.plain]
    if shown:
        lines.append("commands: " + " · ".join(shown))
    if parsed.unresolved:
        lines.append("cannot be read in full: " + "; ".join(parsed.unresolved))
    lines.append(
        f"runs in the sandbox: {workspace} as {WORKSPACE} (read-write), no network, "
        f"at most {args.get('timeout_s', 60)} s"
    )
    return "\n".join(lines)


def make_shell_tool(sandbox: Sandbox | None = None, limits: Limits | None = None) -> Tool:
    """The ``shell`` tool, running its commands in *sandbox* (bubblewrap by default)."""
    runner = sandbox if sandbox is not None else Sandbox()

    async def shell(command: str, ctx: ToolContext, timeout_s: int = 60) -> ToolOutput:
        """Run a shell command line (bash) in a sandbox and return its exit code and output.

        The sandbox holds the errand's workspace (the working directory, read-write) and a
        read-only system (/usr); there is no network, no home directory and nothing else
        of this machine. Long output is cut off.

        Args:
            command: The command line, e.g. `ls -la && git status`.
            timeout_s: Wall-time limit in seconds (at most 600); the command is killed
                when it runs longer.
        """
        if timeout_s < 1:
            raise ToolArgumentError("shell: timeout_s must be at least 1")
        note = ""
        if timeout_s > MAX_TIMEOUT_S:
            note = f" (timeout_s {timeout_s} lowered to {MAX_TIMEOUT_S})"
            timeout_s = MAX_TIMEOUT_S
        if not ctx.workspace.is_dir():
            raise ToolError(f"shell: the errand's workspace {ctx.workspace} is not a directory")
        try:
            ran = await runner.run(command, ctx.workspace, timeout_s, limits)
        except SandboxUnavailable as exc:
            raise ToolError(f"shell refuses to run without its sandbox: {exc}") from None
        return ToolOutput(
            text=render(ran, note),
            integrity=Integrity.untrusted,
            confidentiality=Confidentiality.private,
            source=f"shell: {command.splitlines()[0][:80] if command else ''}",
        )

    return make_tool(
        shell,
        effect=EffectClass.write_local,
        roles={"command": "command"},
        preview=shell_preview,
    )
