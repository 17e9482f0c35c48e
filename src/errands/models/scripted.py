"""The scripted model: deterministic turns from a file, for tests, demos and benchmarks.

A script is JSON::

    {"name": "demo", "latency_ms": 0, "turns": [
       {"text": "Let me look.", "tool_calls": [{"name": "list_files", "arguments": {}}]},
       {"cases": [
          {"when_contains": "notes.txt", "text": "...", "tool_calls": [...]},
          {"text": "fallback when nothing matched"}]},
       {"text": "Done: ..."}]}

The reply is a pure function of the request: turn *k* is used when the transcript
holds *k* assistant messages, so a resumed errand gets exactly the reply it would have
got. ``when_contains`` matches the text of the newest message; ``when_seen`` matches
anywhere in the transcript. After the last turn the model answers ``(script ended)``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from errands.core.events import ToolCall, Usage
from errands.models.protocol import ModelError, ModelReply, ModelRequest, TextSink

__all__ = ["Script", "ScriptedModel", "load_script"]


class ScriptedCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] = {}
    raw_arguments: str | None = None  # to script a model that sends broken JSON


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when_contains: str | None = None
    when_seen: str | None = None
    text: str = ""
    tool_calls: list[ScriptedCall] = []
    cases: list[Turn] = []

    def pick(self, request: ModelRequest) -> Turn:
        if not self.cases:
            return self
        last = request.messages[-1].text if request.messages else ""
        for case in self.cases:
            if case.when_contains is not None and case.when_contains not in last:
                continue
            if case.when_seen is not None and not any(
                case.when_seen in m.text for m in request.messages
            ):
                continue
            return case
        return Turn(text="(no scripted case matched)")


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "script"
    latency_ms: float = Field(default=0, ge=0)
    turns: list[Turn]


def load_script(ref: str) -> Script:
    """A bundled script by name (``demo``) or a JSON file by path."""
    path = Path(ref).expanduser()
    try:
        if path.suffix == ".json" or path.exists():
            return _parse(ref, path.read_text(encoding="utf-8"))
        raw = resources.files("errands.demo").joinpath(f"{ref}.json").read_text("utf-8")
    except (OSError, ValueError):  # (ValueError: a name no file system takes, e.g. a NUL)
        raise ModelError(f"no script {ref!r}: give a bundled name (demo) or a .json file") from None
    return _parse(ref, raw)


@functools.lru_cache(maxsize=64)
def _parse(ref: str, raw: str) -> Script:
    try:
        return Script.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelError(f"script {ref!r} is not a valid script: {exc}") from None


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


class ScriptedModel:
    def __init__(self, script: Script, *, name: str | None = None, latency_ms: float | None = None):
        self.script = script
        self.name = name or f"scripted:{script.name}"
        self.latency = (script.latency_ms if latency_ms is None else latency_ms) / 1000.0
        self.calls = 0

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        k = sum(1 for m in request.messages if m.role == "assistant")
        turn = (
            self.script.turns[k].pick(request)
            if k < len(self.script.turns)
            else Turn(text="(script ended)")
        )
        if on_text is not None and turn.text:
            words = turn.text.split(" ")
            for i, word in enumerate(words):
                on_text(word if i == 0 else " " + word)
        calls = [
            ToolCall(
                call_id=f"call_{k}_{i}",
                name=c.name,
                arguments={} if c.raw_arguments is not None else c.arguments,
                raw_arguments=c.raw_arguments,
            )
            for i, c in enumerate(turn.tool_calls)
        ]
        prompt = request.system + "".join(m.text for m in request.messages)
        out = turn.text + "".join(json.dumps(c.arguments) for c in calls)
        return ModelReply(
            text=turn.text,
            tool_calls=calls,
            usage=Usage(input_tokens=_tokens(prompt), output_tokens=_tokens(out)),
            stop_reason="tool_use" if calls else "end",
            model=self.name,
        )
