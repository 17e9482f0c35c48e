"""AnthropicModel against the Anthropic Messages wire simulator (a real HTTP server
validating requests with the ``anthropic`` SDK's own types and emulating Anthropic's
explicit prompt cache)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sim.anthropic_server import AnthropicSim
from sim.core import Turn, call

from errands.config import ProviderSettings, Settings
from errands.core.events import ToolCall
from errands.models.protocol import Image, Message, ModelError, ModelRequest, ToolSchema
from errands.models.providers.anthropic import AnthropicHTTPError, AnthropicModel, build_params
from errands.models.spec import ModelSpecError, resolve_model
from errands.models.wrappers.router import innermost

WEATHER = ToolSchema(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
LONG_SYSTEM = "You follow the house rules carefully. " * 300  # ~2,800 tokens


def model_for(sim: AnthropicSim, **kw: Any) -> AnthropicModel:
    kw.setdefault("max_retries", 0)
    return AnthropicModel("claude-test", base_url=sim.base_url, api_key=sim.api_key, **kw)


def ask(text: str, *, tools: tuple[ToolSchema, ...] = (), **kw: Any) -> ModelRequest:
    return ModelRequest(
        system="You are terse.", messages=(Message(role="user", text=text),), tools=tools, **kw
    )


def bodies(sim: AnthropicSim) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests if r.path == "/v1/messages"]


def marks(body: dict[str, Any]) -> list[str]:
    """Where the request put cache_control, in render order."""
    out = [f"tool:{t['name']}" for t in body.get("tools", []) if "cache_control" in t]
    out += ["system" for b in body.get("system", []) if "cache_control" in b]
    for i, m in enumerate(body["messages"]):
        for j, b in enumerate(m["content"]):
            if "cache_control" in b:
                out.append(f"messages[{i}][{j}]")
    return out


async def test_text_streams_to_on_text(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.script("The sky is blue because of Rayleigh scattering.")
    deltas: list[str] = []
    reply = await model_for(anthropic_sim).complete(ask("Why is the sky blue?"), deltas.append)
    assert reply.text == "The sky is blue because of Rayleigh scattering."
    assert len(deltas) > 1 and "".join(deltas) == reply.text
    assert reply.stop_reason == "end"
    assert reply.model == "claude-test"
    (body,) = bodies(anthropic_sim)
    assert body["stream"] is True
    assert body["max_tokens"] == 4096  # the API requires one
    assert body["system"] == [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}
    ]
    headers = anthropic_sim.requests[0].headers
    assert "anthropic-version" in headers


async def test_tool_call_round_trip_with_error_result(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.script(
        Turn(
            text="Let me check.",
            tool_calls=(
                call("get_weather", {"city": "Paris"}, call_id="toolu_1"),
                call("get_weather", {"city": "Atlantis"}, call_id="toolu_2"),
            ),
        ),
        Turn(text="Paris is sunny; Atlantis is unknown.", when="no such city"),
    )
    model = model_for(anthropic_sim)
    first = await model.complete(ask("Weather in Paris and Atlantis?", tools=(WEATHER,)))
    assert first.stop_reason == "tool_use"
    assert first.tool_calls == [
        ToolCall(call_id="toolu_1", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(call_id="toolu_2", name="get_weather", arguments={"city": "Atlantis"}),
    ]
    follow_up = ModelRequest(
        system="You are terse.",
        messages=(
            Message(role="user", text="Weather in Paris and Atlantis?"),
            Message(role="assistant", text=first.text, tool_calls=tuple(first.tool_calls)),
            Message(role="tool", text="18C sunny", tool_call_id="toolu_1", tool_name="get_weather"),
            Message(
                role="tool",
                text="no such city",
                tool_call_id="toolu_2",
                tool_name="get_weather",
                is_error=True,
            ),
        ),
        tools=(WEATHER,),
    )
    final = await model.complete(follow_up)
    assert final.text == "Paris is sunny; Atlantis is unknown."
    second = bodies(anthropic_sim)[1]
    assert second["tools"][0]["input_schema"] == WEATHER.parameters
    assert second["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {
                "type": "tool_use",
                "id": "toolu_2",
                "name": "get_weather",
                "input": {"city": "Atlantis"},
            },
        ],
    }
    # both results in ONE user message, the error one flagged
    results = second["messages"][2]["content"]
    assert second["messages"][2]["role"] == "user"
    assert [b["type"] for b in results] == ["tool_result", "tool_result"]
    assert results[0]["content"] == "18C sunny" and "is_error" not in results[0]
    assert results[1]["is_error"] is True


async def test_usage_is_normalised_from_cache_fields(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.script("one", "two", Turn(text="three", reasoning_tokens=9))
    model = model_for(anthropic_sim)

    def req(*texts: str) -> ModelRequest:
        msgs: list[Message] = []
        for i, t in enumerate(texts):
            msgs.append(Message(role="user", text=t))
            if i < len(texts) - 1:
                msgs.append(Message(role="assistant", text=f"answer {i}"))
        return ModelRequest(system=LONG_SYSTEM, messages=tuple(msgs), tools=(WEATHER,))

    r1 = await model.complete(req("first question"))
    r2 = await model.complete(req("first question", "second question"))
    # the first call wrote the whole prompt to the cache, read nothing
    assert r1.usage.cached_input_tokens == 0
    assert r1.usage.cache_write_tokens == r1.usage.input_tokens > 1024
    # the second read exactly what the first wrote, and wrote only the new turn
    assert r2.usage.cached_input_tokens == r1.usage.input_tokens
    assert 0 < r2.usage.cache_write_tokens < 100
    assert r2.usage.input_tokens >= r2.usage.cached_input_tokens + r2.usage.cache_write_tokens
    r3 = await model.complete(req("first question", "second question", "third"))
    assert r3.usage.reasoning_tokens == 9
    assert r3.usage.output_tokens >= 9


async def test_breakpoints_are_placed_automatically(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.script(default="ok")
    other = ToolSchema("get_time", "The time.", {"type": "object", "properties": {}})
    request = ModelRequest(
        system="Rules.",
        messages=(
            Message(role="user", text="a"),
            Message(
                role="assistant",
                text="calling",
                tool_calls=(ToolCall(call_id="t1", name="get_weather", arguments={"city": "x"}),),
            ),
            Message(role="tool", text="r1", tool_call_id="t1"),
            Message(role="assistant", text="more"),
            Message(role="user", text="b"),
        ),
        tools=(WEATHER, other),
    )
    await model_for(anthropic_sim).complete(request)
    (body,) = bodies(anthropic_sim)
    # the last tool, the system prompt, the end of the previous request (the tool
    # result before the last assistant reply) and the end of this one: 4, the maximum
    assert marks(body) == ["tool:get_time", "system", "messages[2][0]", "messages[4][0]"]
    first_turn = await_params(ask("a", tools=(WEATHER,)))
    assert marks(first_turn) == ["tool:get_weather", "system", "messages[0][0]"]


def await_params(request: ModelRequest) -> dict[str, Any]:
    return build_params("m", request)


async def test_previous_turn_is_read_even_after_more_than_20_new_blocks(
    anthropic_sim: AnthropicSim,
) -> None:
    """A turn with 15 parallel tool calls adds 30+ blocks: more than the API's 20-block
    lookback. The breakpoint on the previous request's end still finds its entry."""
    calls = tuple(
        ToolCall(call_id=f"t{i}", name="get_weather", arguments={"city": f"c{i}"})
        for i in range(15)
    )
    turn1 = (Message(role="user", text="check 15 cities"),)
    turn2 = (
        *turn1,
        Message(role="assistant", text="checking", tool_calls=calls),
        *(Message(role="tool", text=f"result {i}", tool_call_id=f"t{i}") for i in range(15)),
    )
    anthropic_sim.script("one", "two")
    model = model_for(anthropic_sim)
    r1 = await model.complete(ModelRequest(system=LONG_SYSTEM, messages=turn1, tools=(WEATHER,)))
    r2 = await model.complete(ModelRequest(system=LONG_SYSTEM, messages=turn2, tools=(WEATHER,)))
    assert r2.usage.cached_input_tokens == r1.usage.input_tokens

    # the control: only a breakpoint at the end (no previous-end breakpoint) misses the
    # conversation prefix and falls back to the system prompt's entry
    anthropic_sim.reset()
    anthropic_sim.script("one", "two")
    body1 = build_params("claude-test", ModelRequest(LONG_SYSTEM, turn1, (WEATHER,)))
    body2 = build_params("claude-test", ModelRequest(LONG_SYSTEM, turn2, (WEATHER,)))
    for m in body2["messages"][:-1]:
        for b in m["content"]:
            b.pop("cache_control", None)
    usage = []
    async with httpx.AsyncClient() as http:
        for body in (body1, body2):
            response = await http.post(
                anthropic_sim.base_url + "/v1/messages",
                headers={"x-api-key": anthropic_sim.api_key, "anthropic-version": "2023-06-01"},
                json=body,
            )
            assert response.status_code == 200, response.text
            usage.append(response.json()["usage"])
    prefix_only = usage[0]["cache_creation_input_tokens"] - 10  # all but the first message
    assert 0 < usage[1]["cache_read_input_tokens"] < usage[0]["cache_creation_input_tokens"]
    assert usage[1]["cache_read_input_tokens"] >= prefix_only - 10


async def test_cache_entries_expire_after_their_ttl(anthropic_sim: AnthropicSim) -> None:
    now = [1000.0]
    anthropic_sim.anthropic_cache.clock = lambda: now[0]
    anthropic_sim.script(default="ok")
    model = model_for(anthropic_sim)
    request = ModelRequest(LONG_SYSTEM, (Message(role="user", text="hi"),), (WEATHER,))
    await model.complete(request)
    now[0] += 200
    assert (await model.complete(request)).usage.cached_input_tokens > 0  # and refreshed
    now[0] += 299
    assert (await model.complete(request)).usage.cached_input_tokens > 0
    now[0] += 301  # past 5 minutes since the last use
    assert (await model.complete(request)).usage.cached_input_tokens == 0
    # the one-hour TTL survives that wait
    hour = model_for(anthropic_sim, cache_ttl="1h")
    await hour.complete(request)
    now[0] += 1800
    assert (await hour.complete(request)).usage.cached_input_tokens > 0
    assert bodies(anthropic_sim)[-1]["system"][0]["cache_control"] == {
        "type": "ephemeral",
        "ttl": "1h",
    }


async def test_short_prompts_are_not_cached(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.script(default="ok")
    model = model_for(anthropic_sim)
    await model.complete(ask("hi"))
    again = await model.complete(ask("hi"))
    assert again.usage.cached_input_tokens == 0 and again.usage.cache_write_tokens == 0


async def test_reasoning_maps_to_thinking_and_signatures_round_trip(
    anthropic_sim: AnthropicSim,
) -> None:
    anthropic_sim.script(
        Turn(
            tool_calls=(call("get_weather", {"city": "Oslo"}, call_id="t1"),),
            reasoning_tokens=40,
            redacted_thinking=True,
        ),
        Turn(text="Cold.", reasoning_tokens=10),
    )
    model = model_for(anthropic_sim)
    first = await model.complete(
        ask("Oslo?", tools=(WEATHER,), reasoning="medium", max_tokens=1000)
    )
    assert first.usage.reasoning_tokens == 40
    body = bodies(anthropic_sim)[0]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert body["max_tokens"] == 1000 + 4096
    # the signed blocks come back on the reply, exactly as issued, for the log
    issued = anthropic_sim.issued_thinking[0]
    assert [b["type"] for b in issued] == ["thinking", "redacted_thinking"]
    assert first.replay == {"kind": "anthropic", "model": "anthropic:claude-test", "blocks": issued}

    def loop(replay: dict[str, Any] | None) -> ModelRequest:
        return ModelRequest(
            system="You are terse.",
            messages=(
                Message(role="user", text="Oslo?"),
                Message(role="assistant", tool_calls=tuple(first.tool_calls), replay=replay),
                Message(role="tool", text="-5C", tool_call_id="t1"),
            ),
            tools=(WEATHER,),
            reasoning="medium",
        )

    # a fresh client (another process) needs nothing but the message's replay state
    final = await model_for(anthropic_sim).complete(loop(first.replay))
    assert final.text == "Cold."
    sent = bodies(anthropic_sim)[1]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert sent["messages"][1]["content"][:2] == issued  # given back verbatim, verified
    assert first.replay["blocks"] == issued  # the request did not mark the logged blocks
    # without it (a log from before replay state, or another model's turn): no thinking
    anthropic_sim.script("Cold again.")
    assert (await model_for(anthropic_sim).complete(loop(None))).text == "Cold again."
    assert bodies(anthropic_sim)[2]["thinking"] == {"type": "disabled"}
    assert bodies(anthropic_sim)[2]["messages"][1]["content"][0]["type"] == "tool_use"


def test_replay_state_is_sent_only_where_it_can_be_verified() -> None:
    blocks = [{"type": "thinking", "thinking": "hmm", "signature": "sig"}]
    call_ = ToolCall(call_id="t1", name="get_weather", arguments={})

    def first_block(replay: dict[str, Any], *, name: str | None = None) -> str:
        request = ModelRequest(
            system="",
            messages=(
                Message(role="user", text="x"),
                Message(role="assistant", tool_calls=(call_,), replay=replay),
                Message(role="tool", text="r", tool_call_id="t1"),
            ),
            tools=(WEATHER,),
            reasoning="low",
        )
        params = build_params("claude-test", request, name=name)
        assert params["thinking"]["type"] == (
            "enabled" if params["messages"][1]["content"][0]["type"] == "thinking" else "disabled"
        )
        return str(params["messages"][1]["content"][0]["type"])

    own = {"kind": "anthropic", "model": "anthropic:claude-test", "blocks": blocks}
    assert first_block(own) == "thinking"
    assert first_block(own, name="corp:claude-test") == "tool_use"  # another endpoint's
    assert first_block({**own, "kind": "gemini"}) == "tool_use"
    assert first_block({**own, "model": "anthropic:claude-other"}) == "tool_use"
    assert first_block({**own, "blocks": [{"type": "thinking", "thinking": "x"}]}) == "tool_use"
    redacted = [{"type": "thinking", "thinking": "the key is [REDACTED:KEY]", "signature": "s"}]
    assert first_block({**own, "blocks": redacted}) == "tool_use"  # the signature would fail


def test_reasoning_levels() -> None:
    def thinking(level: str | None) -> Any:
        return build_params("m", ask("x", reasoning=level)).get("thinking")

    assert thinking(None) is None
    assert thinking("minimal") == {"type": "disabled"}
    assert thinking("low") == {"type": "enabled", "budget_tokens": 1024}
    assert thinking("high") == {"type": "enabled", "budget_tokens": 16384}
    with pytest.raises(ModelError):
        thinking("extreme")


async def test_images_go_before_the_text(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.script("A red pixel.")
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    request = ModelRequest(
        system="",
        messages=(Message(role="user", text="What is this?", images=(Image("image/png", png),)),),
        tools=(),
    )
    assert (await model_for(anthropic_sim).complete(request)).text == "A red pixel."
    content = bodies(anthropic_sim)[0]["messages"][0]["content"]
    assert content[0] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": png},
    }
    assert content[1]["text"] == "What is this?"


async def test_invalid_tool_arguments_become_raw_arguments(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.script(
        Turn(
            tool_calls=(
                call("get_weather", '{"city": "Par', call_id="t1"),
                call("get_weather", "[1]"),
            )
        )
    )
    reply = await model_for(anthropic_sim).complete(ask("Paris?", tools=(WEATHER,)))
    bad, not_object = reply.tool_calls
    assert bad == ToolCall(
        call_id="t1", name="get_weather", arguments={}, raw_arguments='{"city": "Par'
    )
    assert not_object.raw_arguments == "[1]" and not_object.arguments == {}


@pytest.mark.parametrize("status", [500, 529, 503])
async def test_server_errors_are_retryable(anthropic_sim: AnthropicSim, status: int) -> None:
    anthropic_sim.fault("server_error", status=status, message="overloaded")
    with pytest.raises(ModelError) as info:
        await model_for(anthropic_sim).complete(ask("hi"))
    assert info.value.retryable
    assert str(status) in str(info.value) and "overloaded" in str(info.value)


async def test_rate_limit_is_retryable_with_retry_after(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.fault("rate_limit", retry_after=3)
    with pytest.raises(AnthropicHTTPError) as info:
        await model_for(anthropic_sim).complete(ask("hi"))
    assert info.value.retryable and info.value.status == 429 and info.value.retry_after == 3


async def test_sdk_retries_a_rate_limit_then_succeeds(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.fault("rate_limit", retry_after=0.05)
    anthropic_sim.script("after the wait")
    reply = await model_for(anthropic_sim, max_retries=1).complete(ask("hi"))
    assert reply.text == "after the wait"
    assert [r.status for r in anthropic_sim.requests] == [429, 200]


async def test_bad_key_is_not_retryable_and_never_leaks(anthropic_sim: AnthropicSim) -> None:
    secret = "sk-ant-live-SECRET-abcdef123456"
    model = AnthropicModel(
        "claude-test", base_url=anthropic_sim.base_url, api_key=secret, max_retries=2
    )
    with pytest.raises(ModelError) as info:
        await model.complete(ask("hi"))
    (recorded,) = anthropic_sim.requests  # not retried
    assert recorded.status == 401 and secret in recorded.response.decode()
    assert not info.value.retryable
    assert "401" in str(info.value) and "ANTHROPIC_API_KEY" in str(info.value)
    assert "SECRET" not in str(info.value) and info.value.__cause__ is None
    assert "SECRET" not in repr(model)


async def test_malformed_json_is_a_clear_error(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.fault("malformed_json")
    anthropic_sim.script("a reply long enough to be split over several events")
    with pytest.raises(ModelError) as info:
        await model_for(anthropic_sim).complete(ask("hi"))
    assert "invalid JSON" in str(info.value) and not info.value.retryable


async def test_truncated_stream_is_retryable(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.fault("truncated_stream")
    anthropic_sim.script("a reply long enough to be split over several events")
    with pytest.raises(ModelError) as info:
        await model_for(anthropic_sim).complete(ask("hi"))
    assert info.value.retryable and "middle of the stream" in str(info.value)
    reply = await model_for(anthropic_sim).complete(ask("hi"))
    assert reply.text == "a reply long enough to be split over several events"


async def test_stream_that_ends_early_is_retryable(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.fault("stream_ends_early")
    anthropic_sim.script("a reply long enough to be split over several events")
    with pytest.raises(ModelError) as info:
        await model_for(anthropic_sim).complete(ask("hi"))
    assert info.value.retryable and "ended before the reply was finished" in str(info.value)


async def test_error_event_mid_stream_is_retryable(anthropic_sim: AnthropicSim) -> None:
    anthropic_sim.fault("stream_error", message="Overloaded")
    anthropic_sim.script("a reply long enough to be split over several events")
    with pytest.raises(ModelError) as info:
        await model_for(anthropic_sim).complete(ask("hi"))
    assert info.value.retryable and "Overloaded" in str(info.value)


async def test_unreachable_server_is_retryable() -> None:
    model = AnthropicModel("m", base_url="http://127.0.0.1:9", api_key="k", max_retries=0)
    with pytest.raises(ModelError) as info:
        await model.complete(ask("hi"))
    assert info.value.retryable and "cannot connect" in str(info.value)


async def test_environment_configures_the_client(anthropic_sim_env: AnthropicSim) -> None:
    anthropic_sim_env.script("from the environment")
    reply = await AnthropicModel("claude-env", max_retries=0).complete(ask("hi"))
    assert reply.text == "from the environment"


def test_no_key_explains_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    model = AnthropicModel("claude-x")
    with pytest.raises(ModelError) as info:
        import asyncio

        asyncio.run(model.complete(ask("hi")))
    assert "ANTHROPIC_API_KEY" in str(info.value) and not info.value.retryable


def test_spec_resolves_anthropic_and_named_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    model = innermost(resolve_model("anthropic:claude-sonnet-4-5", Settings()))
    assert isinstance(model, AnthropicModel) and model.name == "anthropic:claude-sonnet-4-5"
    settings = Settings(
        providers={
            "corp": ProviderSettings(
                kind="anthropic", base_url="http://127.0.0.1:1", api_key_env="CORP_KEY"
            )
        }
    )
    with pytest.raises(ModelSpecError, match="CORP_KEY"):
        resolve_model("corp:claude", settings)
    monkeypatch.setenv("CORP_KEY", "secret")
    named = innermost(resolve_model("corp:claude", settings))
    assert isinstance(named, AnthropicModel)
    assert named.name == "corp:claude" and named.base_url == "http://127.0.0.1:1"


# -- the simulator is an independent check -----------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"temperature_kelvin": 1}, "temperature_kelvin"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, "non-empty"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}],
                    }
                ]
            },
            "tool_use_id",
        ),
        (
            {
                "system": [
                    {"type": "text", "text": f"s{i}", "cache_control": {"type": "ephemeral"}}
                    for i in range(5)
                ]
            },
            "maximum of 4",
        ),
        ({"thinking": {"type": "enabled", "budget_tokens": 500}}, "1024"),
    ],
)
async def test_simulator_rejects_malformed_requests(
    anthropic_sim: AnthropicSim, change: dict[str, Any], needle: str
) -> None:
    anthropic_sim.script("unused")
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    body.update(change)
    async with httpx.AsyncClient() as http:
        response = await http.post(
            anthropic_sim.base_url + "/v1/messages",
            headers={"x-api-key": anthropic_sim.api_key, "anthropic-version": "2023-06-01"},
            json=body,
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert needle in response.json()["error"]["message"]
    assert anthropic_sim.pending_turns, "a rejected request uses no turn"
