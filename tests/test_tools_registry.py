"""The tool registry: schemas from type hints and docstrings, validation, contracts, effects."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity
from errands.tools.tool import (
    Contract,
    PostconditionFailed,
    PreconditionFailed,
    ToolArgumentError,
    ToolContext,
    ToolOutput,
    UnknownTool,
    make_tool,
)
from errands.tools.toolset import FunctionToolset

CTX = ToolContext("e1", 3, "e1:3", Path("."))


def search_listings(
    city: str,
    max_rent: int,
    rooms: Literal[1, 2, 3] = 2,
    tags: list[str] | None = None,
    ctx: ToolContext | None = None,
) -> dict[str, Any]:
    """Search rental listings in a city.

    Only listings still on the market are returned.

    Args:
        city: The city to search in.
        max_rent: Highest monthly rent, in the listing's currency,
            inclusive.
        rooms (int): Number of bedrooms.
        tags: Words a listing must mention.

    Returns:
        The matching listings.
    """
    return {
        "city": city,
        "max_rent": max_rent,
        "rooms": rooms,
        "tags": tags,
        "seq": ctx and ctx.seq,
    }


async def slow_echo(text: str) -> str:
    """Echo the text back after a pause.

    Args:
        text: What to echo.
    """
    await asyncio.sleep(0)
    return text


def test_schema_from_hints_and_docstring() -> None:
    tool = make_tool(search_listings, effect=EffectClass.read)
    schema = tool.schema
    assert schema.name == "search_listings"
    assert schema.description == (
        "Search rental listings in a city. Only listings still on the market are returned."
    )
    params = schema.parameters
    assert params["type"] == "object"
    assert params["additionalProperties"] is False
    assert params["required"] == ["city", "max_rent"]
    assert list(params["properties"]) == ["city", "max_rent", "rooms", "tags"]  # no ctx
    assert params["properties"]["city"] == {
        "description": "The city to search in.",
        "type": "string",
    }
    assert params["properties"]["max_rent"]["description"] == (
        "Highest monthly rent, in the listing's currency, inclusive."
    )
    assert params["properties"]["max_rent"]["type"] == "integer"
    assert params["properties"]["rooms"]["enum"] == [1, 2, 3]
    assert params["properties"]["rooms"]["default"] == 2
    assert params["properties"]["rooms"]["description"] == "Number of bedrooms."
    assert params["properties"]["tags"]["anyOf"][0] == {
        "items": {"type": "string"},
        "type": "array",
    }
    assert tool.takes_ctx


def test_schemas_are_ordered_and_fingerprinted() -> None:
    first = FunctionToolset(
        [
            make_tool(slow_echo, effect=EffectClass.none),
            make_tool(search_listings, effect=EffectClass.read),
        ]
    )
    second = FunctionToolset(
        [
            make_tool(search_listings, effect=EffectClass.read),
            make_tool(slow_echo, effect=EffectClass.none),
        ]
    )
    assert [s.name for s in first.listing.schemas] == ["search_listings", "slow_echo"]
    assert first.listing.fingerprint == second.listing.fingerprint
    renamed = FunctionToolset([make_tool(slow_echo, effect=EffectClass.none, name="echo")])
    assert (
        renamed.listing.fingerprint
        != FunctionToolset([make_tool(slow_echo, effect=EffectClass.none)]).listing.fingerprint
    )


async def test_sync_tool_runs_off_the_event_loop_and_gets_ctx() -> None:
    loop_thread = threading.get_ident()
    ran_in: list[int] = []

    def where(n: int) -> int:
        """Report the thread.

        Args:
            n: A number.
        """
        ran_in.append(threading.get_ident())
        return n * 2

    tool = make_tool(where, effect=EffectClass.none)
    out = await tool.invoke(tool.validate({"n": 21}), CTX)
    assert out.text == "42"
    assert ran_in and ran_in[0] != loop_thread

    listings = make_tool(search_listings, effect=EffectClass.read)
    out = await listings.invoke(listings.validate({"city": "Lyon", "max_rent": "2000"}), CTX)
    assert out.text == '{"city": "Lyon", "max_rent": 2000, "rooms": 2, "tags": null, "seq": 3}'


async def test_async_tool_and_outputs() -> None:
    tool = make_tool(slow_echo, effect=EffectClass.none)
    out = await tool.invoke(tool.validate({"text": "hi"}), CTX)
    assert out == ToolOutput(text="hi")  # a plain string is trusted, private by default

    def labelled() -> ToolOutput:
        """Return a labelled output."""
        return ToolOutput("x", Integrity.untrusted, Confidentiality.public, "https://a.example")

    def nothing() -> None:
        """Do nothing."""

    out = await make_tool(labelled, effect=EffectClass.none).invoke({}, CTX)
    assert out.integrity is Integrity.untrusted and out.source == "https://a.example"
    assert (await make_tool(nothing, effect=EffectClass.none).invoke({}, CTX)).text == "ok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"max_rent": 5}, "city: Field required"),
        ({"city": "Lyon", "max_rent": "a lot"}, "max_rent: Input should be a valid integer"),
        ({"city": "Lyon", "max_rent": 5, "rooms": 7}, "rooms: Input should be 1, 2 or 3"),
        ({"city": "Lyon", "max_rent": 5, "pets": True}, "pets: Extra inputs are not permitted"),
        ({"city": "Lyon", "max_rent": 5, "tags": "x"}, "tags: Input should be a valid list"),
    ],
)
def test_validation_errors_are_clear(args: dict[str, Any], message: str) -> None:
    tool = make_tool(search_listings, effect=EffectClass.read)
    with pytest.raises(ToolArgumentError) as info:
        tool.validate(args)
    assert str(info.value).startswith("bad arguments for search_listings: ")
    assert message in str(info.value)


def test_unknown_tool_names_the_known_ones() -> None:
    registry = FunctionToolset([make_tool(slow_echo, effect=EffectClass.none)])
    with pytest.raises(UnknownTool, match="unknown tool 'rm_rf'; available tools: slow_echo"):
        registry.get("rm_rf")
    assert "slow_echo" in registry and "rm_rf" not in registry
    with pytest.raises(ValueError, match="registered already"):
        registry.add(make_tool(slow_echo, effect=EffectClass.none))


async def test_preconditions_stop_the_call_and_postconditions_flag_it() -> None:
    calls: list[int] = []

    def pay(amount: int) -> str:
        """Pay an amount.

        Args:
            amount: Cents.
        """
        calls.append(amount)
        return f"paid {amount - 1}"  # breaks its promise

    tool = make_tool(
        pay,
        effect=EffectClass.spend,
        pre=[Contract("amount is positive", lambda args, ctx: args["amount"] > 0)],
        post=[
            Contract(
                "says what it paid",
                lambda args, ctx, out: out.text == f"paid {args['amount']}",
            )
        ],
    )
    with pytest.raises(PreconditionFailed, match="pay: precondition failed: amount is positive"):
        await tool.invoke(tool.validate({"amount": -5}), CTX)
    assert calls == []  # the tool did not run
    with pytest.raises(PostconditionFailed, match="pay: postcondition failed: says what it paid"):
        await tool.invoke(tool.validate({"amount": 5}), CTX)
    assert calls == [5]  # it ran; the failure is about its result


async def test_a_crashing_contract_is_a_failed_contract() -> None:
    def f(x: int) -> int:
        """Identity.

        Args:
            x: A number.
        """
        return x

    tool = make_tool(
        f, effect=EffectClass.none, pre=[Contract("has y", lambda args, ctx: args["y"])]
    )
    with pytest.raises(PreconditionFailed, match="could not be checked: 'y'"):
        await tool.invoke({"x": 1}, CTX)
    tool = make_tool(f, effect=EffectClass.none, post=[Contract("odd", lambda a, c, o: 1 / 0 > 0)])
    with pytest.raises(PostconditionFailed, match="could not be checked: division by zero"):
        await tool.invoke({"x": 1}, CTX)


def test_effect_as_a_function_of_the_arguments() -> None:
    def send(to: str, draft: bool = True) -> str:
        """Send or draft a message.

        Args:
            to: The recipient.
            draft: Only save a draft.
        """
        return to

    def effect(args: Mapping[str, Any]) -> EffectClass:
        return EffectClass.write_local if args["draft"] else EffectClass.external

    tool = make_tool(send, effect=effect, honours_idempotency_key=True)
    assert tool.effect(tool.validate({"to": "a@b.example"})) is EffectClass.write_local
    assert tool.effect(tool.validate({"to": "a@b.example", "draft": False})) is EffectClass.external
    assert tool.safe_to_retry
    assert not make_tool(send, effect=EffectClass.external).safe_to_retry


def test_decorator_registers_and_varargs_are_refused() -> None:
    registry = FunctionToolset()

    @registry.tool(effect=EffectClass.read, idempotent=True, name="lookup")
    def find(key: str) -> str:
        """Look a key up.

        Args:
            key: The key.
        """
        return key

    assert registry.get("lookup").fn is find and len(registry) == 1

    def loose(*args: str) -> str:
        """Take anything."""
        return ""

    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs are not supported"):
        make_tool(loose, effect=EffectClass.none)
