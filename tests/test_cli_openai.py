"""An OpenAI-compatible errand end to end from the CLI, against the wire simulator."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CLI
from sim.core import Turn, call
from sim.openai_server import OpenAIChatSim


def test_openai_compatible_errand_runs_end_to_end(cli: CLI, openai_sim: OpenAIChatSim) -> None:
    openai_sim.script(
        Turn(
            text="I'll write it.",
            tool_calls=(call("write_file", {"path": "hello.txt", "content": "hi there"}),),
        ),
        Turn(text="Wrote hello.txt.", when="wrote"),
    )
    r = cli("run", "write hello.txt", "--model", "openai:sim-model", "--json", **openai_sim.env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "done" and out["result"] == "Wrote hello.txt."
    assert out["usage"]["input_tokens"] > 0 and out["usage"]["output_tokens"] > 0
    shown = json.loads(cli("show", out["id"], "--json").stdout)
    assert (Path(shown["workspace"]) / "hello.txt").read_text() == "hi there"
    # the second request carried the tool result back, in the Chat Completions shape
    second = [r for r in openai_sim.requests if r.path.endswith("/chat/completions")][1].body
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert second["messages"][2]["tool_calls"][0]["function"]["name"] == "write_file"
    assert second["tools"][0]["type"] == "function"
    assert openai_sim.api_key not in r.stdout + r.stderr


def test_a_model_that_fails_fails_the_errand_with_a_clear_reason(
    cli: CLI, openai_sim: OpenAIChatSim
) -> None:
    openai_sim.script(Turn(text="never"))
    env = dict(openai_sim.env, OPENAI_API_KEY="sk-wrong-key-0123456789")
    r = cli("run", "x", "--model", "openai:sim-model", "--json", **env)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["status"] == "failed" and "model failed" in out["reason"]
    assert "sk-wrong-key-0123456789" not in r.stdout + r.stderr
    shown = cli("show", out["id"], "--json").stdout
    assert "sk-wrong-key-0123456789" not in shown
