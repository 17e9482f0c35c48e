"""Toolsets (list an errand's tools, call one), argument roles, and previews from roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from errands.core.events import EffectClass
from errands.core.labels import BOTTOM
from errands.core.states import ErrandView
from errands.policy.hook import Decision, PolicyCall
from errands.policy.preview import preview_of
from errands.policy.rules import Policy
from errands.tools.builtin import builtin_toolset
from errands.tools.tool import ArgRole, Tool, ToolContext, ToolOutput, UnknownTool, make_tool
from errands.tools.toolset import CombinedToolset, FilteredToolset, FunctionToolset, Toolset

ERRAND = ErrandView(id="e1", workspace="/tmp")


def pay(amount: float, currency: str, merchant: str, memo: str = "") -> str:
    """Pay someone.

    Args:
        amount: How much.
        currency: In what.
        merchant: Who gets it.
        memo: A note.
    """
    return "paid"


def notify(to: list[str], cc: list[str], topic: str, text: str) -> str:
    """Send a notification.

    Args:
        to: Recipients.
        cc: Copied.
        topic: The subject.
        text: The message.
    """
    return "sent"


def archive(target: str, dest: str) -> str:
    """Move a file to the archive.

    Args:
        target: What to move.
        dest: Where to.
    """
    return "moved"


def echo(text: str) -> str:
    """Say it back.

    Args:
        text: What to say.
    """
    return text


def test_roles_are_declared_not_guessed_from_names() -> None:
    tool = make_tool(archive, effect=EffectClass.write_local, roles={"target": "path"})
    assert tool.arg_roles == {"target": ArgRole.path}
    assert tool.args_with(ArgRole.path) == ["target"]
    with pytest.raises(TypeError, match="does not take"):
        make_tool(archive, effect=EffectClass.none, roles={"path": "path"})
    with pytest.raises(ValueError):
        make_tool(archive, effect=EffectClass.none, roles={"target": "filename"})


def test_previews_come_from_roles() -> None:
    ws = Path("/nonexistent-ws")
    payment = make_tool(
        pay,
        effect=EffectClass.spend,
        roles={"amount": "amount", "currency": "currency", "merchant": "payee"},
    )
    text = preview_of(
        payment, {"amount": 12.5, "currency": "EUR", "merchant": "acme", "memo": "x"}, ws
    )
    assert text.startswith("pay 12.5 EUR to acme") and '"memo": "x"' in text
    message = make_tool(
        notify,
        effect=EffectClass.external,
        roles={"to": "recipient", "cc": "recipient", "topic": "subject", "text": "body"},
    )
    text = preview_of(
        message, {"to": ["ann", "bob"], "cc": ["eve"], "topic": "hi", "text": "hello"}, ws
    )
    assert text.splitlines() == ["send to: ann, bob", "cc: eve", "subject: hi", "", "hello"]
    # an argument named like a role but not declared one is shown as it is, nothing guessed
    plain = make_tool(pay, effect=EffectClass.spend)
    text = preview_of(plain, {"amount": 1, "currency": "EUR", "merchant": "m", "memo": ""}, ws)
    assert text.startswith("pay\n{")


def test_a_tools_own_preview_wins_and_a_failing_one_falls_back() -> None:
    ws = Path("/nonexistent-ws")
    own = make_tool(echo, effect=EffectClass.external, preview=lambda a, w: f"SAY {a['text']}")
    assert preview_of(own, {"text": "hi"}, ws) == "SAY hi"

    def broken(args: Any, workspace: Path) -> str:
        raise RuntimeError("oops")

    bad = make_tool(echo, effect=EffectClass.external, preview=broken)
    text = preview_of(bad, {"text": "hi"}, ws)
    assert "own preview failed" in text and '"text": "hi"' in text


def test_the_outside_workspace_vote_follows_the_path_role(tmp_path: Path) -> None:
    def call(tool: Tool, args: dict[str, Any]) -> PolicyCall:
        return PolicyCall(
            errand_id="e",
            tool=tool.name,
            arguments=args,
            effect=tool.effect(args),
            workspace=tmp_path,
            context=BOTTOM,
            roles=tool.arg_roles,
        )

    declared = make_tool(
        archive, effect=EffectClass.write_local, roles={"target": "path", "dest": "path"}
    )
    for args in ({"target": "../x", "dest": "a"}, {"target": "a", "dest": "/etc/passwd"}):
        verdict = Policy().check(call(declared, args))
        assert (verdict.decision, verdict.rule) == (Decision.deny, "outside-workspace")
    assert Policy().check(call(declared, {"target": "a", "dest": "b/c"})).decision is Decision.allow
    undeclared = make_tool(archive, effect=EffectClass.write_local)
    assert (
        Policy().check(call(undeclared, {"target": "../x", "dest": "/"})).decision is Decision.allow
    )


def test_the_builtins_declare_their_roles() -> None:
    tools = builtin_toolset().listing
    assert tools.get("write_file").arg_roles == {"path": ArgRole.path, "content": ArgRole.content}
    assert tools.get("http_request").args_with(ArgRole.url) == ["url"]
    assert tools.get("fetch_url").arg_roles == {"url": ArgRole.url}


def test_a_listing_is_stable_until_a_tool_is_added() -> None:
    ts = FunctionToolset([make_tool(echo, effect=EffectClass.none)])
    first = ts.tools(ERRAND)
    assert ts.tools(ErrandView(id="other")) is first  # the same object: nothing to redo
    ts.add(make_tool(pay, effect=EffectClass.spend))
    assert ts.tools(ERRAND) is not first and ts.tools(ERRAND).names == ("echo", "pay")
    assert isinstance(ts, Toolset)


class Recording(FunctionToolset):
    def __init__(self, *tools: Tool) -> None:
        super().__init__(tools)
        self.calls: list[str] = []

    async def call(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        self.calls.append(tool.name)
        return await super().call(tool, args, ctx)


async def test_a_combined_toolset_routes_each_call_to_its_toolset() -> None:
    a = Recording(make_tool(echo, effect=EffectClass.none))
    b = Recording(make_tool(pay, effect=EffectClass.spend))
    both = CombinedToolset([a, b])
    listing = both.tools(ERRAND)
    assert listing.names == ("echo", "pay") and both.tools(ERRAND) is listing
    ctx = ToolContext("e1", 1, "k", Path("/tmp"))
    assert (await both.call(listing.get("echo"), {"text": "hi"}, ctx)).text == "hi"
    await both.call(listing.get("pay"), {"amount": 1, "currency": "x", "merchant": "m"}, ctx)
    assert (a.calls, b.calls) == (["echo"], ["pay"])
    stranger = make_tool(archive, effect=EffectClass.none)
    with pytest.raises(UnknownTool):
        await both.call(stranger, {"target": "a", "dest": "b"}, ctx)
    clash = CombinedToolset([a, FunctionToolset([make_tool(echo, effect=EffectClass.none)])])
    with pytest.raises(ValueError, match="two tools are named echo"):
        clash.tools(ERRAND)


def test_a_filtered_toolset_keeps_tools_per_errand() -> None:
    inner = FunctionToolset(
        [make_tool(echo, effect=EffectClass.none), make_tool(pay, effect=EffectClass.spend)]
    )
    no_money = FilteredToolset(
        inner, lambda errand, tool: errand.parent is None or tool.name != "pay"
    )
    child = ErrandView(id="c", parent="p")
    assert no_money.tools(ERRAND) is inner.listing  # nothing dropped: the inner list itself
    assert no_money.tools(child).names == ("echo",)
    assert no_money.tools(child) is no_money.tools(child)  # stable: the prompt cache holds
    with pytest.raises(UnknownTool, match="available tools: echo"):
        no_money.tools(child).get("pay")
