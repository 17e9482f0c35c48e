"""``errands models`` and ``errands doctor`` through the real CLI (a subprocess), with
the wire simulators as the endpoints doctor checks; keys from the environment or the
OS keyring, and never in any output."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from sim.anthropic_server import AnthropicSim
from sim.core import JSONReply, Reply, Turn
from sim.gemini_server import GeminiSim
from sim.openai_server import OpenAIChatSim

from errands.config import ProviderSettings, Settings
from errands.models import keys
from errands.models.protocol import Message, ModelRequest
from errands.models.spec import resolve_model

CORP_SECRET = "corp-secret-value-0123456789"
OPENAI_SECRET = "sk-openai-secret-0123456789"


class ListingOpenAISim(OpenAIChatSim):
    """The OpenAI simulator, listing a few models at ``GET /v1/models``."""

    def fixed_reply(self, method: str, path: str) -> Reply | None:
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "sim"} for m in ("gpt-sim", "gpt-2")]
            return JSONReply(200, json.dumps({"object": "list", "data": data}).encode())
        return None


@pytest.fixture
def listing_sim() -> Iterator[ListingOpenAISim]:
    sim = ListingOpenAISim()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(home: Path, text: str) -> None:
    (home / "errands.toml").write_text(text)


def no_provider_keys() -> dict[str, str]:
    """Blank out the built-in providers' variables (an empty value counts as unset)."""
    names = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
    bases = ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL")
    return {n: "" for n in (*names, *bases)}


# -- errands models ----------------------------------------------------------------------


def test_models_lists_providers_chains_and_keys_without_values(cli: CLI, home: Path) -> None:
    write_config(
        home,
        """
default_model = "chain:main"

[providers.corp]
kind = "anthropic"
base_url = "https://user:pw-in-url-secret@llm-gateway.corp.example"
api_key_env = "CORP_KEY"
rpm = 50
itpm = 30000

[chains]
main = ["corp:claude-x", "openai:gpt-4o-mini"]
""",
    )
    env = {**no_provider_keys(), "CORP_KEY": CORP_SECRET, "OPENAI_API_KEY": OPENAI_SECRET}
    r = cli("models", "--json", **env)
    assert r.returncode == 0, r.stderr
    inv = json.loads(r.stdout)
    by_name = {p["name"]: p for p in inv["providers"]}
    assert inv["default_model"] == "chain:main"
    assert inv["chains"] == {"main": ["corp:claude-x", "openai:gpt-4o-mini"]}
    corp = by_name["corp"]
    assert corp["kind"] == "anthropic" and corp["named"]
    assert corp["key"] == "set" and corp["key_names"] == ["CORP_KEY"] and corp["key_from"] == "env"
    assert corp["limits"] == {"rpm": 50, "itpm": 30000}
    assert corp["models_in_use"] == ["claude-x"]
    assert corp["base_url"] == "https://llm-gateway.corp.example"  # no user:password
    assert by_name["openai"]["key"] == "set" and by_name["openai"]["models_in_use"] == [
        "gpt-4o-mini"
    ]
    assert by_name["anthropic"]["key"] == "missing"
    assert by_name["gemini"]["key_names"] == ["GEMINI_API_KEY", "GOOGLE_API_KEY"]
    text = cli("models", **env)
    assert text.returncode == 0, text.stderr
    assert "set (from env)" in text.stdout and "missing ($ANTHROPIC_API_KEY)" in text.stdout
    assert "chain:main = corp:claude-x, openai:gpt-4o-mini" in text.stdout
    for output in (r.stdout + r.stderr, text.stdout + text.stderr):
        assert CORP_SECRET not in output and OPENAI_SECRET not in output
        assert "pw-in-url-secret" not in output


def test_models_says_a_headless_machine_has_no_keyring(cli: CLI) -> None:
    r = cli("models", "--json", **no_provider_keys())
    state = json.loads(r.stdout)["keyring"]
    assert state.startswith(("no backend", "not installed", "available")), state
    off = cli("models", "--json", ERRANDS_NO_KEYRING="1", **no_provider_keys())
    assert json.loads(off.stdout)["keyring"].startswith("off")


def test_a_bad_config_is_one_clear_line(cli: CLI, home: Path) -> None:
    write_config(home, "[chains]\nmain = 'not a list'\n")
    r = cli("models")
    assert r.returncode == 2 and "chains.main" in r.stderr and "Traceback" not in r.stderr


# -- errands doctor ----------------------------------------------------------------------


def test_doctor_says_what_to_fix_one_line_per_problem(
    cli: CLI,
    home: Path,
    listing_sim: ListingOpenAISim,
    anthropic_sim: AnthropicSim,
    gemini_sim: GeminiSim,
) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    write_config(
        home,
        f"""
default_model = "good:gpt-sim"

[providers.good]
kind = "openai"
base_url = "{listing_sim.base_url}"
api_key_env = "GOOD_KEY"

[providers.wrongkey]
kind = "anthropic"
base_url = "{anthropic_sim.base_url}"
api_key_env = "WRONG_KEY"

[providers.gem]
kind = "gemini"
base_url = "{gemini_sim.base_url}"
api_key_env = "GEM_KEY"

[providers.down]
kind = "gemini"
base_url = "{down}"
api_key_env = "GEM_KEY"

[providers.nokey]
kind = "openai"
base_url = "{listing_sim.base_url}"
api_key_env = "UNSET_KEY_FOR_DOCTOR"

[chains]
main = ["good:gpt-sim", "good:no-such-model"]
""",
    )
    wrong = "sk-ant-wrong-0123456789abcdef"
    env = {
        **no_provider_keys(),
        "GOOD_KEY": listing_sim.api_key,
        "WRONG_KEY": wrong,
        "GEM_KEY": gemini_sim.api_key,
    }
    r = cli("doctor", "--json", "--timeout", "3", **env)
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    checks = {c["subject"]: c for c in report["checks"]}
    assert not report["ok"]
    assert checks["default_model"]["ok"]
    assert checks["good"]["problems"] == [
        "good: model 'no-such-model' is not among the models "
        f"{listing_sim.base_url}/models lists (e.g. gpt-2, gpt-sim) -- fix the model name "
        "in the config or --model"
    ]
    assert any("2 models listed" in n for n in checks["good"]["notes"])
    [rejected] = checks["wrongkey"]["problems"]
    assert "key was rejected" in rejected and "HTTP 401" in rejected and "$WRONG_KEY" in rejected
    assert checks["gem"]["ok"]  # reachable, key accepted; the simulator lists no models
    [unreachable] = checks["down"]["problems"]
    assert "cannot reach" in unreachable and "check base_url" in unreachable
    [missing] = checks["nokey"]["problems"]
    assert "no API key" in missing and "$UNSET_KEY_FOR_DOCTOR" in missing
    assert "keyring set errands UNSET_KEY_FOR_DOCTOR" in missing
    # the chain check resolves it (the unknown model shows up under its provider)
    assert checks["chain:main"]["ok"]
    # text mode: one FIX line per problem
    text = cli("doctor", "--timeout", "3", **env)
    fix_lines = [line for line in text.stdout.splitlines() if line.startswith("FIX")]
    assert len(fix_lines) == sum(len(c["problems"]) for c in report["checks"]) == 4
    assert text.stdout.rstrip().endswith("4 problem(s)")
    for output in (r.stdout + r.stderr, text.stdout + text.stderr):
        assert wrong not in output and listing_sim.api_key not in output
        assert gemini_sim.api_key not in output
    # the anthropic simulator echoed the wrong key in its 401: doctor never shows bodies
    assert any(wrong in req.response.decode() for req in anthropic_sim.requests)


def test_doctor_passes_when_everything_works(
    cli: CLI, home: Path, listing_sim: ListingOpenAISim
) -> None:
    write_config(
        home,
        f"""
default_model = "good:gpt-sim"

[providers.good]
kind = "openai"
base_url = "{listing_sim.base_url}"
api_key_env = "GOOD_KEY"
""",
    )
    r = cli("doctor", **no_provider_keys(), GOOD_KEY=listing_sim.api_key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "everything checks out" in r.stdout
    assert [req.path for req in listing_sim.requests] == ["/v1/models"]


def test_doctor_reports_a_bad_default_model(cli: CLI, home: Path) -> None:
    write_config(home, 'default_model = "nowhere:model"\n')
    r = cli("doctor", "--json", **no_provider_keys())
    assert r.returncode == 1
    [check] = [c for c in json.loads(r.stdout)["checks"] if c["subject"] == "default_model"]
    assert "unknown model provider 'nowhere'" in check["problems"][0]


# -- the keyring -------------------------------------------------------------------------


@pytest.fixture
def memory_keyring() -> Iterator[dict[tuple[str, str], str]]:
    keyring = pytest.importorskip("keyring")
    from keyring.backend import KeyringBackend

    store: dict[tuple[str, str], str] = {}

    class Memory(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def get_password(self, service: str, username: str) -> str | None:
            return store.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            store[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            store.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(Memory())
    keys.forget_keyring_lookups()
    try:
        yield store
    finally:
        keyring.set_keyring(previous)
        keys.forget_keyring_lookups()


async def test_a_key_in_the_keyring_is_used_when_the_environment_has_none(
    memory_keyring: dict[tuple[str, str], Any],
    openai_sim: OpenAIChatSim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEYRING_ONLY_KEY", raising=False)
    monkeypatch.delenv("ERRANDS_NO_KEYRING", raising=False)
    memory_keyring[(keys.KEYRING_SERVICE, "KEYRING_ONLY_KEY")] = openai_sim.api_key
    openai_sim.script(Turn(text="authenticated"))
    s = Settings(
        providers={
            "sim": ProviderSettings(
                kind="openai", base_url=openai_sim.base_url, api_key_env="KEYRING_ONLY_KEY"
            )
        }
    )
    assert keys.key_status("openai", "KEYRING_ONLY_KEY").source == "keyring"
    request = ModelRequest(system="", messages=(Message("user", "hi"),), tools=())
    reply = await resolve_model("sim:gpt-sim", s).complete(request)
    assert reply.text == "authenticated"
    # the environment wins over the keyring
    monkeypatch.setenv("KEYRING_ONLY_KEY", "from-the-environment")
    assert keys.find_key("KEYRING_ONLY_KEY") == ("from-the-environment", "KEYRING_ONLY_KEY", "env")


def test_a_machine_without_a_keyring_backend_falls_back_silently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keyring = pytest.importorskip("keyring")
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())  # what a headless server has
    keys.forget_keyring_lookups()
    monkeypatch.delenv("NO_SUCH_KEY_ANYWHERE", raising=False)
    try:
        assert keys.find_key("NO_SUCH_KEY_ANYWHERE") is None
        assert not keys.key_status("openai", "NO_SUCH_KEY_ANYWHERE").present
    finally:
        keyring.set_keyring(previous)
        keys.forget_keyring_lookups()


def test_doctor_says_when_a_budget_cannot_count_a_models_calls(cli: CLI, home: Path) -> None:
    write_config(
        home,
        'default_model = "openai:my-finetune-2031,local:llama3"\n'
        '[providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        "[budget]\ndaily_usd = 5.0\n",
    )
    r = cli("doctor", "--json", **no_provider_keys())
    [check] = [c for c in json.loads(r.stdout)["checks"] if c["subject"] == "budget"]
    assert check["notes"][0] == "daily $5.00, no default errand cap"
    assert check["problems"] == [
        "budget: openai:my-finetune-2031 has no known price, so a budget cannot count its "
        'calls -- add [prices."openai:my-finetune-2031"] input = ..., output = ... '
        "(USD per million tokens)"
    ]
    assert any("local:llama3 has no price: counted as free" in n for n in check["notes"])
    # priced: no problem
    with open(home / "errands.toml", "a") as f:
        f.write('[prices."openai:my-finetune-2031"]\ninput = 1.0\noutput = 2.0\n')
    r = cli("doctor", "--json", **no_provider_keys())
    [check] = [c for c in json.loads(r.stdout)["checks"] if c["subject"] == "budget"]
    assert check["problems"] == []
