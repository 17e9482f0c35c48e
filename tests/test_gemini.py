"""GeminiModel against the Gemini API wire simulator (a real HTTP server validating
requests with the ``google-genai`` SDK's own types and emulating implicit caching)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from sim.core import Turn, call
from sim.gemini_server import GeminiSim, _b64

from errands.config import Settings
from errands.core.events import ToolCall
from errands.models.protocol import Image, Message, ModelError, ModelRequest, ToolSchema
from errands.models.providers.gemini import GeminiHTTPError, GeminiModel
from errands.models.spec import resolve_model
from errands.models.wrappers.router import innermost

WEATHER = ToolSchema(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def model_for(sim: GeminiSim, name: str = "gemini-2.5-flash", **kw: Any) -> GeminiModel:
    kw.setdefault("max_retries", 0)
    return GeminiModel(name, base_url=sim.base_url, api_key=sim.api_key, **kw)


def ask(text: str, *, tools: tuple[ToolSchema, ...] = (), **kw: Any) -> ModelRequest:
    return ModelRequest(
        system="You are terse.", messages=(Message(role="user", text=text),), tools=tools, **kw
    )


def bodies(sim: GeminiSim) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests if "GenerateContent" in r.path or "generate" in r.path]


async def test_text_streams_to_on_text(gemini_sim: GeminiSim) -> None:
    gemini_sim.script("The sky is blue because of Rayleigh scattering.")
    deltas: list[str] = []
    reply = await model_for(gemini_sim).complete(ask("Why?"), deltas.append)
    assert reply.text == "The sky is blue because of Rayleigh scattering."
    assert len(deltas) > 1 and "".join(deltas) == reply.text
    assert reply.stop_reason == "end" and reply.model == "gemini-2.5-flash"
    (recorded,) = gemini_sim.requests
    assert recorded.path.endswith("/models/gemini-2.5-flash:streamGenerateContent")
    assert recorded.headers["x-goog-api-key"] == gemini_sim.api_key
    assert recorded.body["systemInstruction"]["parts"] == [{"text": "You are terse."}]
    assert recorded.body["contents"] == [{"role": "user", "parts": [{"text": "Why?"}]}]


async def test_tool_call_round_trip_with_error_result(gemini_sim: GeminiSim) -> None:
    gemini_sim.script(
        Turn(
            text="Checking.",
            tool_calls=(
                call("get_weather", {"city": "Paris"}, call_id="c1"),
                call("get_weather", {"city": "Atlantis"}, call_id="c2"),
            ),
        ),
        Turn(text="Paris is sunny.", when="no such city"),
    )
    model = model_for(gemini_sim, "gemini-3-flash")
    first = await model.complete(ask("Paris and Atlantis?", tools=(WEATHER,)))
    assert first.stop_reason == "tool_use"
    assert first.tool_calls == [
        ToolCall(call_id="c1", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(call_id="c2", name="get_weather", arguments={"city": "Atlantis"}),
    ]
    follow_up = ModelRequest(
        system="You are terse.",
        messages=(
            Message(role="user", text="Paris and Atlantis?"),
            Message(
                role="assistant",
                text=first.text,
                tool_calls=tuple(first.tool_calls),
                replay=first.replay,
            ),
            Message(role="tool", text="18C", tool_call_id="c1", tool_name="get_weather"),
            Message(
                role="tool",
                text="no such city",
                tool_call_id="c2",
                tool_name="get_weather",
                is_error=True,
            ),
        ),
        tools=(WEATHER,),
    )
    assert (await model.complete(follow_up)).text == "Paris is sunny."
    second = bodies(gemini_sim)[1]
    decl = second["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_weather"
    assert (
        decl.get("parametersJsonSchema", decl.get("parameters_json_schema")) == WEATHER.parameters
    )
    model_turn, results = second["contents"][1], second["contents"][2]
    assert model_turn["role"] == "model"
    assert model_turn["parts"][1]["functionCall"] == {
        "id": "c1",
        "name": "get_weather",
        "args": {"city": "Paris"},
    }
    # the signature the call came with goes back on it (Gemini 3 requires it)
    assert first.replay == {
        "kind": "gemini",
        "model": "gemini:gemini-3-flash",
        "signatures": {"c1": base64.b64encode(gemini_sim.issued_signatures["c1"]).decode()},
    }
    assert _b64(model_turn["parts"][1]["thoughtSignature"]) == gemini_sim.issued_signatures["c1"]
    assert "thoughtSignature" not in model_turn["parts"][2]  # the API gave none for c2
    assert results["role"] == "user"
    assert [p["functionResponse"]["response"] for p in results["parts"]] == [
        {"output": "18C"},
        {"error": "no such city"},
    ]


async def test_gemini3_without_a_known_signature_sends_the_placeholder(
    gemini_sim: GeminiSim,
) -> None:
    gemini_sim.script("fine")
    request = ModelRequest(
        system="",
        messages=(
            Message(role="user", text="go"),
            Message(
                role="assistant",
                tool_calls=(ToolCall(call_id="c9", name="get_weather", arguments={"city": "x"}),),
            ),
            Message(role="tool", text="r", tool_call_id="c9", tool_name="get_weather"),
        ),
        tools=(WEATHER,),
    )
    assert (await model_for(gemini_sim, "gemini-3-pro").complete(request)).text == "fine"
    # the simulator refuses a Gemini 3 call turn with no signature: the check is real
    body = bodies(gemini_sim)[0]
    del body["contents"][1]["parts"][0]["thoughtSignature"]
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gemini_sim.base_url + "/v1beta/models/gemini-3-pro:generateContent",
            headers={"x-goog-api-key": gemini_sim.api_key},
            json=body,
        )
    assert response.status_code == 400 and "thought_signature" in response.text


async def test_usage_is_normalised_with_cached_and_thought_tokens(gemini_sim: GeminiSim) -> None:
    gemini_sim.script(Turn(text="ok", cached_tokens=1500, reasoning_tokens=11))
    reply = await model_for(gemini_sim).complete(ask("x" * 8000))
    assert reply.usage.cached_input_tokens == 1500
    assert reply.usage.input_tokens > 2000
    assert reply.usage.reasoning_tokens == 11
    assert reply.usage.output_tokens == 1 + 11  # thoughts count as output


async def test_implicit_cache_minimum_depends_on_the_model(gemini_sim: GeminiSim) -> None:
    gemini_sim.script(default="ok")
    system = "You follow the house rules. " * 300  # ~2,100 tokens: above 1024, below 4096
    for name, expect_cached in [("gemini-2.5-flash", True), ("gemini-2.5-pro", False)]:
        model = model_for(gemini_sim, name)
        await model.complete(ModelRequest(system, (Message("user", "a"),), ()))
        second = await model.complete(ModelRequest(system, (Message("user", "b"),), ()))
        assert (second.usage.cached_input_tokens > 2000) is expect_cached, name


async def test_reasoning_maps_to_level_or_budget(gemini_sim: GeminiSim) -> None:
    gemini_sim.script(default="ok")
    await model_for(gemini_sim, "gemini-3-flash").complete(ask("a", reasoning="minimal"))
    await model_for(gemini_sim, "gemini-2.5-flash").complete(ask("b", reasoning="medium"))
    first, second = bodies(gemini_sim)

    def thinking(body: dict[str, Any]) -> dict[str, Any]:
        config = body["generationConfig"]
        out: dict[str, Any] = config.get("thinkingConfig") or config["thinking_config"]
        return out

    assert list(thinking(first).values()) == ["MINIMAL"]
    assert list(thinking(second).values()) == [8192]
    with pytest.raises(ModelError):
        await model_for(gemini_sim).complete(ask("c", reasoning="extreme"))


async def test_images_are_inline_data(gemini_sim: GeminiSim) -> None:
    gemini_sim.script("A pixel.")
    request = ModelRequest(
        "", (Message("user", "What?", images=(Image("image/png", "iVBORw0KGgo="),)),), ()
    )
    await model_for(gemini_sim).complete(request)
    parts = bodies(gemini_sim)[0]["contents"][0]["parts"]
    inline = parts[0].get("inlineData") or parts[0]["inline_data"]
    assert (inline.get("mimeType") or inline["mime_type"]) == "image/png"
    assert parts[1] == {"text": "What?"}


async def test_malformed_function_call_is_a_retryable_error(gemini_sim: GeminiSim) -> None:
    gemini_sim.script(Turn(tool_calls=(call("get_weather", '{"city": "Par'),)))
    with pytest.raises(ModelError) as info:
        await model_for(gemini_sim).complete(ask("Paris?", tools=(WEATHER,)))
    assert info.value.retryable and "malformed function call" in str(info.value)


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retryable(gemini_sim: GeminiSim, status: int) -> None:
    gemini_sim.fault("server_error", status=status, message="backend overloaded")
    with pytest.raises(GeminiHTTPError) as info:
        await model_for(gemini_sim).complete(ask("hi"))
    assert info.value.retryable and info.value.status == status
    assert "backend overloaded" in str(info.value)


async def test_rate_limit_is_retryable(gemini_sim: GeminiSim) -> None:
    gemini_sim.fault("rate_limit")
    with pytest.raises(GeminiHTTPError) as info:
        await model_for(gemini_sim).complete(ask("hi"))
    assert info.value.retryable and info.value.status == 429


async def test_sdk_retries_then_succeeds(gemini_sim: GeminiSim) -> None:
    gemini_sim.fault("server_error", status=503)
    gemini_sim.script("after a retry")
    reply = await model_for(gemini_sim, max_retries=1).complete(ask("hi"))
    assert reply.text == "after a retry"
    assert [r.status for r in gemini_sim.requests] == [503, 200]


async def test_bad_key_is_not_retryable_and_never_leaks(gemini_sim: GeminiSim) -> None:
    secret = "AIzaSECRET-live-abcdef123456"
    model = GeminiModel("gemini-2.5-flash", base_url=gemini_sim.base_url, api_key=secret)
    with pytest.raises(ModelError) as info:
        await model.complete(ask("hi"))
    (recorded,) = gemini_sim.requests  # 400 API_KEY_INVALID: not retried
    assert secret in recorded.response.decode()
    assert not info.value.retryable and "GEMINI_API_KEY" in str(info.value)
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(model)


async def test_401_is_not_retryable(gemini_sim: GeminiSim) -> None:
    gemini_sim.fault("server_error", status=401, message="Request had invalid credentials.")
    with pytest.raises(GeminiHTTPError) as info:
        await model_for(gemini_sim, max_retries=2).complete(ask("hi"))
    assert not info.value.retryable and info.value.status == 401
    assert len(gemini_sim.requests) == 1


async def test_malformed_json_is_a_clear_error(gemini_sim: GeminiSim) -> None:
    gemini_sim.fault("malformed_json")
    gemini_sim.script("a reply long enough to be split over several chunks")
    with pytest.raises(ModelError) as info:
        await model_for(gemini_sim).complete(ask("hi"))
    assert "invalid JSON" in str(info.value) and not info.value.retryable


async def test_truncated_stream_is_retryable(gemini_sim: GeminiSim) -> None:
    gemini_sim.fault("truncated_stream")
    gemini_sim.script("a reply long enough to be split over several chunks")
    with pytest.raises(ModelError) as info:
        await model_for(gemini_sim).complete(ask("hi"))
    assert info.value.retryable and "middle of the stream" in str(info.value)


async def test_stream_that_ends_early_is_retryable(gemini_sim: GeminiSim) -> None:
    gemini_sim.fault("stream_ends_early")
    gemini_sim.script("a reply long enough to be split over several chunks")
    with pytest.raises(ModelError) as info:
        await model_for(gemini_sim).complete(ask("hi"))
    assert info.value.retryable and "ended before the reply was finished" in str(info.value)


async def test_error_in_stream_is_retryable(gemini_sim: GeminiSim) -> None:
    gemini_sim.fault("stream_error", message="model overloaded")
    gemini_sim.script("a reply long enough to be split over several chunks")
    with pytest.raises(ModelError) as info:
        await model_for(gemini_sim).complete(ask("hi"))
    assert info.value.retryable and "model overloaded" in str(info.value)


async def test_unreachable_server_is_retryable() -> None:
    model = GeminiModel(
        "gemini-2.5-flash", base_url="http://127.0.0.1:9", api_key="k", max_retries=0
    )
    with pytest.raises(ModelError) as info:
        await model.complete(ask("hi"))
    assert info.value.retryable and "cannot connect" in str(info.value)


async def test_environment_configures_the_client(gemini_sim_env: GeminiSim) -> None:
    gemini_sim_env.script("from the environment")
    reply = await GeminiModel("gemini-2.5-flash", max_retries=0).complete(ask("hi"))
    assert reply.text == "from the environment"


def test_spec_resolves_gemini(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    model = innermost(resolve_model("gemini:gemini-2.5-flash", Settings()))
    assert isinstance(model, GeminiModel) and model.name == "gemini:gemini-2.5-flash"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"temperature": 1}, "Unknown name"),
        ({"contents": [{"role": "robot", "parts": [{"text": "hi"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
        ({"contents": [{"role": "user", "parts": [{"txet": "hi"}]}]}, "txet"),
        (
            {
                "contents": [
                    {"role": "user", "parts": [{"text": "hi"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                    {"role": "user", "parts": [{"text": "no answer"}]},
                ]
            },
            "number of function response parts",
        ),
        (
            {"generationConfig": {"thinkingConfig": {"thinkingBudget": 5, "thinkingLevel": "LOW"}}},
            "only set one",
        ),
    ],
)
async def test_simulator_rejects_malformed_requests(
    gemini_sim: GeminiSim, change: dict[str, Any], needle: str
) -> None:
    gemini_sim.script("unused")
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **change}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gemini_sim.base_url + "/v1beta/models/gemini-2.5-flash:generateContent",
            headers={"x-goog-api-key": gemini_sim.api_key},
            json=body,
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert needle in response.json()["error"]["message"]
    assert gemini_sim.pending_turns
