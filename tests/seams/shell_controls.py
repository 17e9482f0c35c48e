"""Negative controls for the shell: variants without the sandbox or the parser.

Passed in by the tests (tests/test_shell.py, tests/test_shell_rules.py), never read by
production code; each test asserts that its guarantee then FAILS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from errands.policy.hook import Decision, PolicyCall, Verdict
from errands.policy.rules import CallValues, Policy
from errands.tools.netguard import resolve_vetted
from errands.tools.sandbox.bwrap import Extras, Limits, Ran, Sandbox
from errands.tools.sandbox.proxy import EgressProxy


class NoSandbox(Sandbox):
    """Runs the command directly, with errands' own environment and rights."""

    def check(self) -> None:
        return None

    async def run(
        self,
        command: str,
        workspace: Path,
        timeout_s: int,
        limits: Limits | None = None,
        extras: Extras | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> Ran:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash",
            "-c",
            command,
            cwd=workspace,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
        return Ran(proc.returncode, out, err, len(out), len(err), time.monotonic() - started)


class RawPrefixPolicy(Policy):
    """Matches command rules as prefixes of the raw text; nothing is 'unresolved'."""

    def command_unresolved(self, values: CallValues) -> Verdict | None:
        return None

    def rule_votes(self, call: PolicyCall, values: CallValues) -> tuple[list[Verdict], list[str]]:
        text = str(call.arguments.get("command", "")).strip()
        votes = [
            Verdict(r.decision, r.name, r.reason)
            for r in self.rules
            if r.command is not None and text.startswith(r.command)
        ]
        allowed = any(v.decision is Decision.allow for v in votes)
        return votes, ([] if allowed else [text])


class UnguardedProxy(EgressProxy):
    """An egress proxy without the policy and without the network guard: every host, any
    address, connected to by name."""

    def refusal(self, host: str, port: int) -> str | None:
        return None

    async def open_upstream(
        self, host: str, port: int
    ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        return host, reader, writer


class CheckThenConnectProxy(EgressProxy):
    """Vets the name's addresses, then connects to the *name* (resolved again): the
    opening DNS rebinding uses."""

    async def open_upstream(
        self, host: str, port: int
    ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        await resolve_vetted(host, port, self.settings)
        reader, writer = await asyncio.open_connection(host, port)
        return host, reader, writer


def no_redaction(secrets: Mapping[str, str]) -> Callable[[str], str]:
    """A redactor that redacts nothing."""
    return lambda text: text
