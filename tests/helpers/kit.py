"""Small building blocks for tests: a ledger outside the store, ledger tools, scripts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from errands.config import Settings
from errands.core.events import EffectClass
from errands.harness import Harness, build
from errands.models.protocol import Model
from errands.models.scripted import Script, ScriptedModel
from errands.policy.hook import PolicyHook
from errands.store import Store
from errands.tools.tool import ToolContext
from errands.tools.toolset import FunctionToolset, Toolset


class Ledger:
    """An append-only file outside errands' store: one line per real execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, **entry: Any) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def ledger_registry(ledger: Ledger) -> FunctionToolset:
    reg = FunctionToolset()

    @reg.tool(effect=EffectClass.external, roles={"to": "recipient", "body": "body"})
    def send_message(to: str, body: str, ctx: ToolContext) -> str:
        """Send a message to someone.

        Args:
            to: The recipient.
            body: The message.
        """
        ledger.record(tool="send_message", to=to, body=body, key=ctx.idempotency_key)
        return f"sent to {to}"

    @reg.tool(effect=EffectClass.read, idempotent=True)
    def lookup(term: str, ctx: ToolContext) -> str:
        """Look something up.

        Args:
            term: What to look up.
        """
        ledger.record(tool="lookup", term=term, key=ctx.idempotency_key)
        return f"{term}: found"

    @reg.tool(effect=EffectClass.write_local)
    def note(text: str, ctx: ToolContext) -> str:
        """Write a note (not idempotent: each call appends).

        Args:
            text: The note.
        """
        ledger.record(tool="note", text=text, key=ctx.idempotency_key)
        return "noted"

    return reg


def script(*turns: dict[str, Any], latency_ms: float = 0) -> ScriptedModel:
    return ScriptedModel(
        Script.model_validate({"name": "test", "latency_ms": latency_ms, "turns": list(turns)})
    )


def write_script(path: Path, *turns: dict[str, Any], latency_ms: float = 0) -> str:
    path.write_text(json.dumps({"name": path.stem, "latency_ms": latency_ms, "turns": list(turns)}))
    return f"scripted:{path}"


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def harness_for(
    store: Store,
    settings: Settings,
    *,
    tools: Toolset | None = None,
    model: Model | None = None,
    policy: PolicyHook | None = None,
) -> Harness:
    """errands wired by ``harness.build`` around a test's store: only *tools* (no
    built-ins) when given, every model spec answered by *model*, *policy* (default: the
    home's policy.toml). The test closes the store, not the harness."""
    return build(
        settings,
        store=store,
        toolsets=[tools] if tools is not None else [],
        builtins=tools is None,
        policy=policy,
        models=(lambda spec: model) if model is not None else None,
    )
