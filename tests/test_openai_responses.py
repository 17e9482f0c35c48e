"""OpenAIResponsesModel against the OpenAI Responses wire simulator (a real HTTP server
validating requests with the ``openai`` SDK's own Responses types)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sim.core import Turn, call
from sim.openai_responses_server import OpenAIResponsesSim, common_prefix_length

from errands.config import Settings
from errands.core.events import ToolCall
from errands.models.protocol import Image, Message, ModelError, ModelRequest, ToolSchema
from errands.models.providers.openai_chat import OpenAIHTTPError
from errands.models.providers.openai_responses import OpenAIResponsesModel, build_params
from errands.models.spec import resolve_model
from errands.models.wrappers.router import innermost

WEATHER = ToolSchema(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def model_for(sim: OpenAIResponsesSim, **kw: Any) -> OpenAIResponsesModel:
    kw.setdefault("max_retries", 0)
    return OpenAIResponsesModel("gpt-test", base_url=sim.base_url, api_key=sim.api_key, **kw)


def ask(text: str, *, tools: tuple[ToolSchema, ...] = (), **kw: Any) -> ModelRequest:
    return ModelRequest(
        system="You are terse.", messages=(Message(role="user", text=text),), tools=tools, **kw
    )


def bodies(sim: OpenAIResponsesSim) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests if r.path == "/v1/responses"]


async def test_text_streams_to_on_text(openai_responses_sim: OpenAIResponsesSim) -> None:
    openai_responses_sim.script("The sky is blue because of Rayleigh scattering.")
    deltas: list[str] = []
    reply = await model_for(openai_responses_sim).complete(ask("Why?"), deltas.append)
    assert reply.text == "The sky is blue because of Rayleigh scattering."
    assert len(deltas) > 1 and "".join(deltas) == reply.text
    assert reply.stop_reason == "end" and reply.model == "gpt-test"
    (body,) = bodies(openai_responses_sim)
    assert body["stream"] is True and body["store"] is False
    assert body["instructions"] == "You are terse."
    assert body["input"] == [{"role": "user", "content": "Why?"}]
    assert "prompt_cache_key" not in body  # an api.openai.com-only parameter


async def test_tool_call_round_trip_with_error_result(
    openai_responses_sim: OpenAIResponsesSim,
) -> None:
    openai_responses_sim.script(
        Turn(
            text="Let me check.",
            tool_calls=(
                call("get_weather", {"city": "Paris"}, call_id="call_1"),
                call("get_weather", {"city": "Atlantis"}, call_id="call_2"),
            ),
        ),
        Turn(text="Paris is sunny.", when="no such city"),
    )
    model = model_for(openai_responses_sim)
    first = await model.complete(ask("Paris and Atlantis?", tools=(WEATHER,)))
    assert first.stop_reason == "tool_use" and first.text == "Let me check."
    assert first.tool_calls == [
        ToolCall(call_id="call_1", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(call_id="call_2", name="get_weather", arguments={"city": "Atlantis"}),
    ]
    follow_up = ModelRequest(
        system="You are terse.",
        messages=(
            Message(role="user", text="Paris and Atlantis?"),
            Message(role="assistant", text=first.text, tool_calls=tuple(first.tool_calls)),
            Message(role="tool", text="18C", tool_call_id="call_1"),
            Message(role="tool", text="no such city", tool_call_id="call_2", is_error=True),
        ),
        tools=(WEATHER,),
    )
    assert (await model.complete(follow_up)).text == "Paris is sunny."
    second = bodies(openai_responses_sim)[1]
    assert second["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": WEATHER.parameters,
            "strict": False,
        }
    ]
    assert second["input"][1:] == [
        {"role": "assistant", "content": "Let me check."},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {
            "type": "function_call",
            "call_id": "call_2",
            "name": "get_weather",
            "arguments": '{"city": "Atlantis"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_2", "output": "ERROR: no such city"},
    ]


async def test_usage_is_normalised_with_cached_and_reasoning_tokens(
    openai_responses_sim: OpenAIResponsesSim,
) -> None:
    openai_responses_sim.script(Turn(text="ok", cached_tokens=1280, reasoning_tokens=7))
    reply = await model_for(openai_responses_sim).complete(ask("x" * 8000))
    body = bodies(openai_responses_sim)[0]
    prompt = json.dumps(
        [body["instructions"], [], body["input"]], sort_keys=True, separators=(",", ":")
    )
    assert reply.usage.input_tokens == -(-len(prompt) // 4)
    assert reply.usage.cached_input_tokens == 1280
    assert reply.usage.reasoning_tokens == 7 and reply.usage.output_tokens == 1 + 7


async def test_repeated_prefix_is_cached_in_128_token_steps(
    openai_responses_sim: OpenAIResponsesSim,
) -> None:
    openai_responses_sim.script("one", "two")
    model = model_for(openai_responses_sim)
    long_system = "You follow the house rules. " * 400
    r1 = await model.complete(ModelRequest(long_system, (Message("user", "a"),), ()))
    r2 = await model.complete(ModelRequest(long_system, (Message("user", "b"),), ()))
    assert r1.usage.cached_input_tokens == 0
    assert r2.usage.cached_input_tokens >= 2048 and r2.usage.cached_input_tokens % 128 == 0
    assert r2.usage.cached_input_tokens < r2.usage.input_tokens


def test_common_prefix_length_matches_the_slow_way() -> None:
    for a, b in [("", "x"), ("abc", "abd"), ("a" * 9000 + "x", "a" * 9000 + "y"), ("same", "same")]:
        slow = 0
        while slow < min(len(a), len(b)) and a[slow] == b[slow]:
            slow += 1
        assert common_prefix_length(a, b) == slow


async def test_reasoning_effort_images_and_max_tokens_are_sent(
    openai_responses_sim: OpenAIResponsesSim,
) -> None:
    openai_responses_sim.script("a")
    request = ModelRequest(
        system="",
        messages=(Message("user", "What is it?", images=(Image("image/png", "AAAA"),)),),
        tools=(),
        reasoning="high",
        max_tokens=64,
    )
    await model_for(openai_responses_sim).complete(request)
    (body,) = bodies(openai_responses_sim)
    assert body["reasoning"] == {"effort": "high"}
    assert body["max_output_tokens"] == 64
    assert body["input"][0]["content"] == [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
        {"type": "input_text", "text": "What is it?"},
    ]
    assert "instructions" not in body
    official = build_params("gpt", ModelRequest("s", (), (), errand_id="e1"), cache_key=True)
    assert official["prompt_cache_key"] == "e1"


async def test_reasoning_items_round_trip_in_a_tool_loop(
    openai_responses_sim: OpenAIResponsesSim,
) -> None:
    sim = openai_responses_sim
    sim.script(
        Turn(
            tool_calls=(call("get_weather", {"city": "Oslo"}, call_id="c1"),), reasoning_tokens=30
        ),
        Turn(text="Cold.", reasoning_tokens=5),
    )
    first = await model_for(sim).complete(ask("Oslo?", tools=(WEATHER,), reasoning="low"))
    assert bodies(sim)[0]["include"] == ["reasoning.encrypted_content"]
    (issued,) = sim.issued_reasoning
    assert issued["encrypted_content"]
    item = {k: v for k, v in issued.items() if k != "status"}
    assert first.replay == {
        "kind": "openai-responses",
        "model": "openai-responses:gpt-test",
        "items": [item],
    }

    def loop(replay: dict[str, Any] | None) -> ModelRequest:
        return ModelRequest(
            system="",
            messages=(
                Message(role="user", text="Oslo?"),
                Message(role="assistant", tool_calls=tuple(first.tool_calls), replay=replay),
                Message(role="tool", text="-5C", tool_call_id="c1"),
            ),
            tools=(WEATHER,),
            reasoning="low",
        )

    # a fresh client sends the item back, just before the call it led to
    assert (await model_for(sim).complete(loop(first.replay))).text == "Cold."
    sent = bodies(sim)[1]["input"]
    assert sent[1] == item and sent[2]["type"] == "function_call"
    # the simulator really checks them: an item without its content is not found
    broken = {**first.replay, "items": [{**item, "encrypted_content": "AAAA"}]}
    with pytest.raises(OpenAIHTTPError, match="could not be verified"):
        await model_for(sim).complete(loop(broken))
    body = {**bodies(sim)[1], "input": [m for m in sent if m != item] + [item]}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            sim.base_url + "/responses",
            headers={"authorization": f"Bearer {sim.api_key}"},
            json=body,
        )
    assert response.status_code == 400 and "required following item" in response.text
    no_content = {
        **bodies(sim)[1],
        "input": [{k: v for k, v in m.items() if k != "encrypted_content"} for m in sent],
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(
            sim.base_url + "/responses",
            headers={"authorization": f"Bearer {sim.api_key}"},
            json=no_content,
        )
    assert response.status_code == 404 and "not persisted" in response.text
    # another model's items, or no reasoning level (no encrypted content asked): none sent
    other = {**first.replay, "model": "openai-responses:gpt-other"}
    assert all(
        i.get("type") != "reasoning"
        for i in build_params("gpt-test", loop(other), cache_key=False)["input"]
    )
    plain = build_params("gpt-test", ask("x"), cache_key=False)
    assert "include" not in plain and "reasoning" not in plain


async def test_invalid_tool_arguments_become_raw_arguments(
    openai_responses_sim: OpenAIResponsesSim,
) -> None:
    openai_responses_sim.script(
        Turn(tool_calls=(call("get_weather", '{"city": "Par', call_id="c1"), call("x", "[1]")))
    )
    reply = await model_for(openai_responses_sim).complete(ask("Paris?", tools=(WEATHER,)))
    bad, not_object = reply.tool_calls
    assert bad == ToolCall(
        call_id="c1", name="get_weather", arguments={}, raw_arguments='{"city": "Par'
    )
    assert not_object.raw_arguments == "[1]"


async def test_incomplete_response_is_max_tokens(openai_responses_sim: OpenAIResponsesSim) -> None:
    openai_responses_sim.script(Turn(text="cut sho", finish_reason="length"))
    reply = await model_for(openai_responses_sim).complete(ask("hi"))
    assert reply.stop_reason == "max_tokens" and reply.text == "cut sho"


async def test_server_error_is_retryable(openai_responses_sim: OpenAIResponsesSim) -> None:
    openai_responses_sim.fault("server_error", status=503, message="overloaded")
    with pytest.raises(ModelError) as info:
        await model_for(openai_responses_sim).complete(ask("hi"))
    assert info.value.retryable and "503" in str(info.value)


async def test_rate_limit_is_retryable(openai_responses_sim: OpenAIResponsesSim) -> None:
    openai_responses_sim.fault("rate_limit", retry_after=2)
    with pytest.raises(OpenAIHTTPError) as info:
        await model_for(openai_responses_sim).complete(ask("hi"))
    assert info.value.retryable and info.value.status == 429 and info.value.retry_after == 2


async def test_bad_key_is_not_retryable_and_never_leaks(
    openai_responses_sim: OpenAIResponsesSim,
) -> None:
    secret = "sk-live-SECRET-abcdef123456"
    model = OpenAIResponsesModel(
        "gpt-test", base_url=openai_responses_sim.base_url, api_key=secret, max_retries=2
    )
    with pytest.raises(ModelError) as info:
        await model.complete(ask("hi"))
    (recorded,) = openai_responses_sim.requests
    assert recorded.status == 401 and secret in recorded.response.decode()
    assert not info.value.retryable
    assert "401" in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(model)


async def test_malformed_json_is_a_clear_error(openai_responses_sim: OpenAIResponsesSim) -> None:
    openai_responses_sim.fault("malformed_json")
    openai_responses_sim.script("a reply long enough to be split over several events")
    with pytest.raises(ModelError) as info:
        await model_for(openai_responses_sim).complete(ask("hi"))
    assert "invalid JSON" in str(info.value) and not info.value.retryable


async def test_truncated_stream_is_retryable(openai_responses_sim: OpenAIResponsesSim) -> None:
    openai_responses_sim.fault("truncated_stream")
    openai_responses_sim.script("a reply long enough to be split over several events")
    with pytest.raises(ModelError) as info:
        await model_for(openai_responses_sim).complete(ask("hi"))
    assert info.value.retryable and "middle of the stream" in str(info.value)


async def test_stream_that_ends_early_is_retryable(
    openai_responses_sim: OpenAIResponsesSim,
) -> None:
    openai_responses_sim.fault("stream_ends_early")
    openai_responses_sim.script("a reply long enough to be split over several events")
    with pytest.raises(ModelError) as info:
        await model_for(openai_responses_sim).complete(ask("hi"))
    assert info.value.retryable and "ended before the reply was finished" in str(info.value)


async def test_error_event_is_retryable(openai_responses_sim: OpenAIResponsesSim) -> None:
    openai_responses_sim.fault("stream_error", message="upstream overloaded")
    openai_responses_sim.script("a reply long enough to be split over several events")
    with pytest.raises(ModelError) as info:
        await model_for(openai_responses_sim).complete(ask("hi"))
    assert info.value.retryable and "upstream overloaded" in str(info.value)


def test_spec_resolves_openai_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    model = innermost(resolve_model("openai-responses:gpt-5-mini", Settings()))
    assert isinstance(model, OpenAIResponsesModel)
    assert model.name == "openai-responses:gpt-5-mini"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"temperature_celsius": 1}, "temperature_celsius"),
        ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "nope"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
            "No tool output",
        ),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input"),
        (
            {
                "tools": [
                    {"type": "function", "name": "has space", "parameters": {}, "strict": False}
                ]
            },
            "tools",
        ),
        ({"max_output_tokens": "many"}, "max_output_tokens"),
    ],
)
async def test_simulator_rejects_malformed_requests(
    openai_responses_sim: OpenAIResponsesSim, change: dict[str, Any], needle: str
) -> None:
    openai_responses_sim.script("unused")
    body = {"model": "m", "input": [{"role": "user", "content": "hi"}], **change}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            openai_responses_sim.base_url + "/responses",
            headers={"Authorization": f"Bearer {openai_responses_sim.api_key}"},
            json=body,
        )
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]
    assert openai_responses_sim.pending_turns
