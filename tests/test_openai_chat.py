"""OpenAIChatModel against the OpenAI Chat Completions wire simulator (a real HTTP
server validating requests with the SDK's own types). Fixtures ``openai_sim`` and
``openai_sim_env`` come from ``sim.fixtures`` (registered in conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sim.core import Turn, call
from sim.openai_server import OpenAIChatSim

from errands.core.events import ToolCall
from errands.models.protocol import Message, ModelError, ModelRequest, ToolSchema
from errands.models.providers.openai_chat import OpenAIChatModel, OpenAIHTTPError

WEATHER = ToolSchema(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


def model_for(sim: OpenAIChatSim, **kw: object) -> OpenAIChatModel:
    kw.setdefault("max_retries", 0)
    return OpenAIChatModel("gpt-test", base_url=sim.base_url, api_key=sim.api_key, **kw)  # type: ignore[arg-type]


def ask(text: str, *, tools: tuple[ToolSchema, ...] = (), **kw: object) -> ModelRequest:
    return ModelRequest(
        system="You are terse.",
        messages=(Message(role="user", text=text),),
        tools=tools,
        **kw,  # type: ignore[arg-type]
    )


def chat_bodies(sim: OpenAIChatSim) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests if r.path == "/v1/chat/completions"]


async def test_text_streams_to_on_text(openai_sim: OpenAIChatSim) -> None:
    openai_sim.script("The sky is blue because of Rayleigh scattering.")
    deltas: list[str] = []
    reply = await model_for(openai_sim).complete(ask("Why is the sky blue?"), deltas.append)

    assert reply.text == "The sky is blue because of Rayleigh scattering."
    assert len(deltas) > 1, "the text arrives in several deltas"
    assert "".join(deltas) == reply.text
    assert reply.stop_reason == "end"
    assert reply.tool_calls == []
    assert reply.model == "gpt-test"
    (body,) = chat_bodies(openai_sim)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]


async def test_tool_call_round_trip(openai_sim: OpenAIChatSim) -> None:
    openai_sim.script(
        Turn(
            text="Let me check.",
            tool_calls=(call("get_weather", {"city": "Paris"}, call_id="call_1"),),
        ),
        Turn(text="It is 18°C and sunny in Paris.", when="18"),
    )
    model = model_for(openai_sim)
    first = await model.complete(ask("Weather in Paris?", tools=(WEATHER,)))

    assert first.stop_reason == "tool_use"
    assert first.text == "Let me check."
    assert first.tool_calls == [
        ToolCall(call_id="call_1", name="get_weather", arguments={"city": "Paris"})
    ]

    follow_up = ModelRequest(
        system="You are terse.",
        messages=(
            Message(role="user", text="Weather in Paris?"),
            Message(role="assistant", text=first.text, tool_calls=tuple(first.tool_calls)),
            Message(
                role="tool", text='{"temp_c": 18}', tool_call_id="call_1", tool_name="get_weather"
            ),
        ),
        tools=(WEATHER,),
    )
    final = await model.complete(follow_up)
    assert final.text == "It is 18°C and sunny in Paris."
    assert final.stop_reason == "end"

    second = chat_bodies(openai_sim)[1]
    assert second["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    assert second["messages"][2:] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
    ]


async def test_parallel_tool_calls_are_kept_apart(openai_sim: OpenAIChatSim) -> None:
    openai_sim.script(
        Turn(
            tool_calls=(
                call("get_weather", {"city": "Oslo"}),
                call("get_weather", {"city": "Rome"}),
            )
        )
    )
    reply = await model_for(openai_sim).complete(ask("Oslo and Rome?", tools=(WEATHER,)))
    assert [c.arguments for c in reply.tool_calls] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert len({c.call_id for c in reply.tool_calls}) == 2


async def test_error_tool_result_is_marked(openai_sim: OpenAIChatSim) -> None:
    openai_sim.script("Sorry.")
    request = ModelRequest(
        system="",
        messages=(
            Message(role="user", text="go"),
            Message(
                role="assistant",
                tool_calls=(ToolCall(call_id="c9", name="get_weather", arguments={}),),
            ),
            Message(role="tool", text="city is required", tool_call_id="c9", is_error=True),
        ),
        tools=(WEATHER,),
    )
    await model_for(openai_sim).complete(request)
    (body,) = chat_bodies(openai_sim)
    messages = body["messages"]
    assert messages[0] == {"role": "user", "content": "go"}
    assert messages[1]["content"] is None
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": "c9",
        "content": "ERROR: city is required",
    }


async def test_usage_is_normalised_with_cached_and_reasoning_tokens(
    openai_sim: OpenAIChatSim,
) -> None:
    openai_sim.script(Turn(text="ok", cached_tokens=1280, reasoning_tokens=7))
    reply = await model_for(openai_sim).complete(ask("x" * 8000))
    u = reply.usage
    # what the simulator counted: ceil(chars / 4) of the JSON of tools + messages
    prompt = json.dumps(
        [[], chat_bodies(openai_sim)[0]["messages"]], sort_keys=True, separators=(",", ":")
    )
    assert u.input_tokens == -(-len(prompt) // 4)
    assert u.cached_input_tokens == 1280
    assert u.reasoning_tokens == 7
    assert u.output_tokens == 1 + 7  # "ok" is one token, reasoning counts as output


async def test_repeated_prefix_is_reported_as_cached(openai_sim: OpenAIChatSim) -> None:
    openai_sim.script("one", "two")
    model = model_for(openai_sim)
    long_system = "You follow the house rules. " * 400  # ~2,800 tokens, a stable prefix
    first = ModelRequest(system=long_system, messages=(Message(role="user", text="a"),), tools=())
    second = ModelRequest(system=long_system, messages=(Message(role="user", text="b"),), tools=())
    r1 = await model.complete(first)
    r2 = await model.complete(second)
    assert r1.usage.cached_input_tokens == 0
    assert r2.usage.cached_input_tokens >= 2048
    assert r2.usage.cached_input_tokens % 128 == 0
    assert r2.usage.cached_input_tokens < r2.usage.input_tokens


async def test_invalid_json_arguments_become_raw_arguments(openai_sim: OpenAIChatSim) -> None:
    openai_sim.script(
        Turn(
            tool_calls=(
                call("get_weather", '{"city": "Par', call_id="c1"),
                call("get_weather", "[1, 2]"),
            )
        )
    )
    reply = await model_for(openai_sim).complete(ask("Paris?", tools=(WEATHER,)))
    bad, not_object = reply.tool_calls
    assert bad == ToolCall(
        call_id="c1", name="get_weather", arguments={}, raw_arguments='{"city": "Par'
    )
    assert not_object.arguments == {}
    assert not_object.raw_arguments == "[1, 2]"


async def test_max_tokens_and_reasoning_are_sent(openai_sim: OpenAIChatSim) -> None:
    openai_sim.script("a", "b")
    await model_for(openai_sim).complete(ask("hi", max_tokens=50, reasoning="low"))
    await model_for(openai_sim, max_tokens_param="max_completion_tokens").complete(
        ask("hi", max_tokens=60)
    )
    first, second = chat_bodies(openai_sim)
    # a custom base URL gets the name every compatible server knows
    assert first["max_tokens"] == 50 and "max_completion_tokens" not in first
    assert first["reasoning_effort"] == "low"
    assert second["max_completion_tokens"] == 60 and "max_tokens" not in second
    assert "prompt_cache_key" not in first  # an OpenAI-only parameter


async def test_rejected_max_tokens_switches_to_max_completion_tokens(
    openai_sim: OpenAIChatSim,
) -> None:
    openai_sim.unsupported("max_tokens")
    openai_sim.script("fine")
    model = model_for(openai_sim)
    reply = await model.complete(ask("hi", max_tokens=40))
    assert reply.text == "fine"
    statuses = [r.status for r in openai_sim.requests]
    assert statuses == [400, 200]
    assert chat_bodies(openai_sim)[1]["max_completion_tokens"] == 40
    assert model.max_tokens_param == "max_completion_tokens"  # remembered


async def test_server_error_is_retryable(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("server_error", status=503, message="overloaded")
    openai_sim.script("never served")
    with pytest.raises(ModelError) as info:
        await model_for(openai_sim).complete(ask("hi"))
    assert info.value.retryable
    assert "503" in str(info.value) and "overloaded" in str(info.value)


async def test_sdk_retries_after_rate_limit_then_succeeds(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("rate_limit", retry_after=0.05)
    openai_sim.script("after the wait")
    reply = await model_for(openai_sim, max_retries=1).complete(ask("hi"))
    assert reply.text == "after the wait"
    assert [r.status for r in openai_sim.requests] == [429, 200]


async def test_rate_limit_error_carries_retry_after(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("rate_limit", retry_after=3)
    with pytest.raises(OpenAIHTTPError) as info:
        await model_for(openai_sim).complete(ask("hi"))
    assert info.value.retryable
    assert info.value.status == 429
    assert info.value.retry_after == 3


@pytest.mark.parametrize("secret", ["sk-live-SECRET-abcdef123456", "local-SECRET-token-987"])
async def test_bad_key_is_not_retryable_and_never_leaks(
    openai_sim: OpenAIChatSim, secret: str
) -> None:
    model = OpenAIChatModel("gpt-test", base_url=openai_sim.base_url, api_key=secret, max_retries=2)
    with pytest.raises(ModelError) as info:
        await model.complete(ask("hi"))
    # the simulator echoed the key in its 401 body: the client must have removed it
    (recorded,) = openai_sim.requests
    assert recorded.status == 401
    assert secret in recorded.response.decode()
    assert info.value.retryable is False
    message = str(info.value)
    assert "401" in message and "OPENAI_API_KEY" in message
    assert secret not in message
    assert "SECRET" not in message
    assert secret not in repr(info.value.__cause__) and info.value.__cause__ is None
    assert secret not in repr(model)


async def test_other_client_errors_are_not_retryable(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("server_error", status=422, message="unprocessable")
    with pytest.raises(ModelError) as info:
        await model_for(openai_sim).complete(ask("hi"))
    assert not info.value.retryable


async def test_malformed_json_is_a_clear_error(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("malformed_json")
    openai_sim.script("a reply long enough to be split over several chunks")
    with pytest.raises(ModelError) as info:
        await model_for(openai_sim).complete(ask("hi"))
    assert "invalid JSON" in str(info.value)
    assert not info.value.retryable


async def test_truncated_stream_is_a_clear_retryable_error(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("truncated_stream")
    openai_sim.script("a reply long enough to be split over several chunks")
    deltas: list[str] = []
    with pytest.raises(ModelError) as info:
        await model_for(openai_sim).complete(ask("hi"), deltas.append)
    assert info.value.retryable
    assert "middle of the stream" in str(info.value)
    # the turn was not used up: a retry gets the whole reply
    reply = await model_for(openai_sim).complete(ask("hi"))
    assert reply.text == "a reply long enough to be split over several chunks"


async def test_stream_that_ends_before_the_finish_is_an_error(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("stream_ends_early")
    openai_sim.script("a reply long enough to be split over several chunks")
    with pytest.raises(ModelError) as info:
        await model_for(openai_sim).complete(ask("hi"))
    assert info.value.retryable
    assert "ended before the reply was finished" in str(info.value)


async def test_error_event_in_stream_is_retryable(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("stream_error", message="upstream overloaded")
    openai_sim.script("a reply long enough to be split over several chunks")
    with pytest.raises(ModelError) as info:
        await model_for(openai_sim).complete(ask("hi"))
    assert info.value.retryable
    assert "upstream overloaded" in str(info.value)


async def test_hung_server_times_out(openai_sim: OpenAIChatSim) -> None:
    openai_sim.fault("hang", seconds=10)
    with pytest.raises(ModelError) as info:
        await model_for(openai_sim, timeout=0.3).complete(ask("hi"))
    assert info.value.retryable
    assert "timed out" in str(info.value)


async def test_unreachable_server_is_retryable() -> None:
    model = OpenAIChatModel("m", base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
    with pytest.raises(ModelError) as info:
        await model.complete(ask("hi"))
    assert info.value.retryable
    assert "cannot connect" in str(info.value)


async def test_environment_configures_the_client(openai_sim_env: OpenAIChatSim) -> None:
    openai_sim_env.script("from the environment")
    reply = await OpenAIChatModel("gpt-env", max_retries=0).complete(ask("hi"))
    assert reply.text == "from the environment"
    auth = openai_sim_env.requests[0].headers["authorization"]
    assert auth == f"Bearer {openai_sim_env.api_key}"


async def test_local_server_without_key_gets_a_placeholder(
    openai_sim: OpenAIChatSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model = OpenAIChatModel("llama3", base_url=openai_sim.base_url, max_retries=0)
    with pytest.raises(ModelError) as info:  # this simulator does want a key
        await model.complete(ask("hi"))
    assert openai_sim.requests[0].headers["authorization"] == "Bearer not-needed"
    assert "401" in str(info.value)


async def test_no_key_and_no_base_url_explains_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    model = OpenAIChatModel("gpt-4o-mini")
    assert model.name == "openai:gpt-4o-mini"
    with pytest.raises(ModelError) as info:
        await model.complete(ask("hi"))
    assert not info.value.retryable
    assert "OPENAI_API_KEY" in str(info.value)
    assert "http://127.0.0.1:11434/v1" in str(info.value)


# -- the simulator is an independent check, not an echo of the client ----------------


async def test_simulator_rejects_a_bad_role(openai_sim: OpenAIChatSim) -> None:
    openai_sim.script("unused")
    async with httpx.AsyncClient() as http:
        response = await http.post(
            openai_sim.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {openai_sim.api_key}"},
            json={"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
        )
    assert response.status_code == 400
    assert "messages.0" in response.json()["error"]["message"]
    assert openai_sim.pending_turns, "a rejected request uses no turn"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"temperature_celsius": 1}, "temperature_celsius"),  # unknown top-level key
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "nope"}]}, "preceeding"),
        ({"messages": [{"role": "user", "content": "x", "tool_name": "t"}]}, "tool_name"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "does not match"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_tokens": "many"}, "max_tokens"),
    ],
)
async def test_simulator_rejects_malformed_requests(
    openai_sim: OpenAIChatSim, change: dict[str, object], needle: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **change}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            openai_sim.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {openai_sim.api_key}"},
            json=body,
        )
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


async def test_simulator_requires_the_key(openai_sim: OpenAIChatSim) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            openai_sim.base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 401


def test_tool_call_deltas_from_quirky_servers() -> None:
    """Servers that put every call at index 0, or repeat the name in every delta."""
    from openai.types.chat.chat_completion_chunk import (
        ChatCompletionChunk,
        ChoiceDeltaToolCall,
        ChoiceDeltaToolCallFunction,
    )

    from errands.models.providers.openai_chat import _Accumulator

    def chunk(call_id: str | None, name: str | None, args: str) -> ChatCompletionChunk:
        delta = ChoiceDeltaToolCall(
            index=0, id=call_id, function=ChoiceDeltaToolCallFunction(name=name, arguments=args)
        )
        return ChatCompletionChunk.model_validate(
            {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": {"tool_calls": [delta.model_dump()]}}],
            }
        )

    acc = _Accumulator()
    for c in [
        chunk("a", "get_weather", '{"city": '),
        chunk(None, "get_weather", '"Oslo"}'),
        chunk("b", "get_", '{"city": "Rome"}'),
        chunk(None, "weather", ""),
    ]:
        acc.feed(c)
    assert acc.tool_calls() == [
        ToolCall(call_id="a", name="get_weather", arguments={"city": "Oslo"}),
        ToolCall(call_id="b", name="get_weather", arguments={"city": "Rome"}),
    ]
