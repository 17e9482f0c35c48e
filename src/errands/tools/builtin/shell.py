"""The ``shell`` tool: one command line, run in the sandbox (:mod:`errands.tools.sandbox`).

Effect ``write_local`` when the call names no egress hosts and no secrets: the command
can change the workspace and nothing else (the sandbox has no network at all).
``external`` when it names either: its only way out is errands' egress proxy
(:mod:`errands.tools.sandbox.proxy`), to the hosts it names that ``[network]
egress_allow`` lists, and a secret it names (:mod:`errands.tools.sandbox.secrets`) may
go only to that secret's hosts. The default policy asks before every command no rule
allows (:mod:`errands.tools.sandbox.commands`). The output -- every declared secret
redacted -- is labelled **untrusted** (a command prints what files and programs written
by others say) and **private** (it may show the workspace's contents), or **secret** when
the call carries a secret.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from errands.config import Settings
from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity
from errands.tools.sandbox.bwrap import WORKSPACE, Limits, Ran, Sandbox, SandboxUnavailable
from errands.tools.sandbox.commands import parse_script
from errands.tools.sandbox.egress import Egress, RedactorFactory, call_egress, egress_session
from errands.tools.sandbox.live import LiveOutput
from errands.tools.sandbox.proxy import EgressProxy
from errands.tools.sandbox.secrets import (
    Redact,
    call_secrets,
    declared_values,
    remember_given,
    secret_redactor,
    workspace_secret_hosts,
)
from errands.tools.tool import (
    Tool,
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolOutput,
    make_tool,
)

__all__ = ["MAX_TIMEOUT_S", "make_shell_tool", "shell_effect", "shell_preview"]

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


def _stream(name: str, kept: bytes, total: int, redact: Redact) -> str:
    text = redact(kept.decode("utf-8", errors="replace"))
    if total > len(kept):
        text += f"\n[{name} cut off after {len(kept)} bytes; {total - len(kept)} more not shown]"
    return f"--- {name} ---\n{text}" if text else f"--- {name} --- (empty)"


def _unchanged(text: str) -> str:
    return text


def render(
    ran: Ran, note: str = "", redact: Redact = _unchanged, network: list[str] | None = None
) -> str:
    """The result text: status, stdout and stderr (each capped, with a note, secrets
    redacted), and the connections the proxy saw when the call had egress."""
    parts = [_status(ran) + note]
    parts.append(_stream("stdout", ran.stdout, ran.stdout_total, redact))
    parts.append(_stream("stderr", ran.stderr, ran.stderr_total, redact))
    if network is not None:
        shown = "\n".join(redact(line) for line in network) or "(no connections)"
        parts.append(f"--- network (errands' egress proxy) ---\n{shown}")
    return "\n".join(parts)


def _end_live(shown: LiveOutput, ran: Ran | None) -> None:
    if ran is None:
        shown.end({}, "the command did not run")
    else:
        shown.end({"stdout": ran.stdout_total, "stderr": ran.stderr_total}, _status(ran))


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def shell_effect(args: Mapping[str, Any]) -> EffectClass:
    """``external`` when the call may reach the network or carries a secret, else
    ``write_local``."""
    if _strings(args.get("egress")) or _strings(args.get("secrets")):
        return EffectClass.external
    return EffectClass.write_local


def shell_preview(args: Mapping[str, Any], workspace: Path) -> str:
    """The approval card: the command, what the parser read in it, where it runs, the
    hosts it may reach and the secrets it gets (by name)."""
    command = str(args.get("command", ""))
    parsed = parse_script(command)
    lines = [f"$ {command}", ""]
    shown = [c.text for c in parsed.commands if c.plain]
    if shown:
        lines.append("commands: " + " · ".join(shown))
    if parsed.unresolved:
        lines.append("cannot be read in full: " + "; ".join(parsed.unresolved))
    hosts = _strings(args.get("egress"))
    net = "network only through errands' proxy, to " + ", ".join(hosts) if hosts else "no network"
    lines.append(
        f"runs in the sandbox: {workspace} as {WORKSPACE} (read-write), {net}, "
        f"at most {args.get('timeout_s', 60)} s"
    )
    names = _strings(args.get("secrets"))
    if names:
        lines.append(
            "secrets given to it (as environment variables; values never shown): "
            + ", ".join(names)
        )
    return "\n".join(lines)


def make_shell_tool(
    sandbox: Sandbox | None = None,
    limits: Limits | None = None,
    proxy: type[EgressProxy] = EgressProxy,
    redactor: RedactorFactory = secret_redactor,
    live: type[LiveOutput] = LiveOutput,
) -> Tool:
    """The ``shell`` tool, running its commands in *sandbox* (bubblewrap by default), its
    network through *proxy*, its output redacted by *redactor* and shown while it runs
    (to ``ctx.on_output``) by *live* (tests pass controls)."""
    runner = sandbox if sandbox is not None else Sandbox()
    caps = limits or Limits()

    async def shell(
        command: str,
        ctx: ToolContext,
        timeout_s: int = 60,
        egress: list[str] | None = None,
        secrets: list[str] | None = None,
    ) -> ToolOutput:
        """Run a shell command line (bash) in a sandbox and return its exit code and output.

        The sandbox holds the errand's workspace (the working directory, read-write) and a
        read-only system (/usr); there is no network unless `egress` names hosts, no home
        directory and nothing else of this machine. Long output is cut off.

        Args:
            command: The command line, e.g. `ls -la && git status`.
            timeout_s: Wall-time limit in seconds (at most 600); the command is killed
                when it runs longer.
            egress: Hosts the command needs to reach, e.g. `["pypi.org",
                "files.pythonhosted.org"]` (`host`, `*.domain`, `host:port`); each must
                be allowed in errands.toml (`[network] egress_allow`). Reached through a
                proxy (HTTP and HTTPS only; no DNS, no raw TCP).
            secrets: Names of secrets declared in errands.toml the command needs; each is
                given to it as the environment variable of that name (e.g. `$GH_TOKEN`),
                may only go to that secret's hosts, and is redacted from the output.
        """
        if timeout_s < 1:
            raise ToolArgumentError("shell: timeout_s must be at least 1")
        note = ""
        if timeout_s > MAX_TIMEOUT_S:
            note = f" (timeout_s {timeout_s} lowered to {MAX_TIMEOUT_S})"
            timeout_s = MAX_TIMEOUT_S
        if not ctx.workspace.is_dir():
            raise ToolError(f"shell: the errand's workspace {ctx.workspace} is not a directory")
        settings = ctx.settings if isinstance(ctx.settings, Settings) else Settings()
        entries = call_egress(egress or [], settings)
        values, hosts = call_secrets(settings, secrets or [])
        try:
            remember_given(settings, ctx.workspace, values)
        except OSError as exc:  # unrecorded, a later call could send what this one leaves
            raise ToolError(f"shell: cannot record the secrets given: {exc}") from None
        hosts += workspace_secret_hosts(settings, ctx.workspace, values)
        known = {**declared_values(settings), **values}
        redact = redactor(known)
        plan = Egress(entries, values, hosts)
        shown = None
        if ctx.on_output is not None:
            shown = live(ctx.on_output, redact, known.values(), caps.output)
        done: Ran | None = None
        try:
            async with egress_session(plan, settings, proxy) as (extras, seen):
                ran = done = await runner.run(
                    command, ctx.workspace, timeout_s, caps, extras, shown
                )
        except SandboxUnavailable as exc:
            raise ToolError(f"shell refuses to run without its sandbox: {exc}") from None
        finally:
            if shown is not None:  # the live view ends however the call does
                _end_live(shown, done)
        return ToolOutput(
            text=render(ran, note, redact, seen.lines() if seen is not None else None),
            integrity=Integrity.untrusted,
            # what a command holding a secret prints is derived from it (redaction is a net)
            confidentiality=Confidentiality.secret if values else Confidentiality.private,
            source=f"shell: {command.splitlines()[0][:80] if command else ''}",
        )

    return make_tool(
        shell,
        effect=shell_effect,
        roles={"command": "command"},
        preview=shell_preview,
    )
