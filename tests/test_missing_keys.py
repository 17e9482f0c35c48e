"""A missing key is found before anything is created, the same way for every provider
(issue 14, item 2): the CLI refuses in one line and leaves no errand behind; the
Python API (which the HTTP API and the inbox's Start form call) raises the same
ModelSpecError (422) and writes nothing. The control checks the spec as before -- only
that it resolves -- and the errand is created, to fail later."""

from __future__ import annotations

import json

import pytest
from conftest import CLI

from errands.config import Settings
from errands.engine import operations
from errands.engine.operations import create_errand
from errands.models.spec import ModelSpecError, resolve_model
from errands.store import Store

NO_KEYS = {
    "OPENAI_API_KEY": "",
    "OPENAI_BASE_URL": "",
    "ANTHROPIC_API_KEY": "",
    "ANTHROPIC_BASE_URL": "",
    "GEMINI_API_KEY": "",
    "GOOGLE_API_KEY": "",
    "GEMINI_BASE_URL": "",
    "ERRANDS_NO_KEYRING": "1",
}
SPECS = {
    "openai:gpt-4o-mini": "OPENAI_API_KEY",
    "openai-responses:gpt-5-mini": "OPENAI_API_KEY",
    "anthropic:claude-sonnet-4-5": "ANTHROPIC_API_KEY",
    "gemini:gemini-2.5-flash": "GEMINI_API_KEY",
}


@pytest.mark.parametrize(("spec", "variable"), SPECS.items(), ids=SPECS.keys())
def test_errands_run_without_a_key_creates_nothing(cli: CLI, spec: str, variable: str) -> None:
    r = cli("run", "hello", "-m", spec, **NO_KEYS)
    assert r.returncode == 2, r.stdout + r.stderr
    assert variable in r.stderr and "Traceback" not in r.stderr
    assert json.loads(cli("ls", "--json", **NO_KEYS).stdout) == []


def test_a_chain_needs_every_members_key(cli: CLI) -> None:
    env = {**NO_KEYS, "OPENAI_API_KEY": "sk-test-0123456789abcdef"}
    r = cli("run", "hello", "-m", "openai:gpt-4o-mini,anthropic:claude-x", **env)
    assert r.returncode == 2 and "ANTHROPIC_API_KEY" in r.stderr
    assert json.loads(cli("ls", "--json", **NO_KEYS).stdout) == []


def _resolves_only(spec: str, settings: Settings) -> None:
    resolve_model(spec, settings)  # the check before: the key was found missing later


@pytest.mark.parametrize("check", ["guard", "control"])
async def test_the_api_path_refuses_before_writing(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    for name, value in NO_KEYS.items():
        monkeypatch.setenv(name, value)
    if check == "control":
        monkeypatch.setattr(operations, "check_spec", _resolves_only)
        await create_errand(store, settings, "hello", model="anthropic:claude-x")
        assert len(await store.list_errands()) == 1  # created, to fail at its first step
        return
    with pytest.raises(ModelSpecError, match="ANTHROPIC_API_KEY"):
        await create_errand(store, settings, "hello", model="anthropic:claude-x")
    assert await store.list_errands() == []
