"""The approval queue: ``approvals``, ``approve``, ``deny``.

With a server up for this home they go through its API (it picks the decision up at
once, and the inbox updates live); otherwise they write to the store. Both paths
record the same events, with the channel ``cli``.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from errands.cli import remote
from errands.cli.common import JsonOpt, fail, json_object, out, server_for_home, who, with_harness
from errands.cli.render import approval_card, policy_line
from errands.errors import ErrandsError, UserError

if TYPE_CHECKING:
    from errands.core.errand import ApprovalOut
    from errands.harness import Harness

__all__ = ["register"]

HINT = "[dim]errands approve ID [--always] [--edit JSON] · errands deny ID --reason TEXT[/dim]"


def approvals(as_json: JsonOpt = False) -> None:
    """List every action waiting for your approval, in full."""
    server = server_for_home()
    if server is not None:
        try:
            remote.approvals(server, as_json=as_json)
        except ErrandsError as exc:
            fail(str(exc))
        return

    async def go(h: Harness) -> list[ApprovalOut]:
        from errands.core.errand import ApprovalOut

        return await ApprovalOut.waiting(h.store)

    items = with_harness(go)
    if as_json:
        sys.stdout.write(json.dumps([a.model_dump() for a in items]) + "\n")
        return
    if not items:
        out.print("Nothing waits for your approval.")
        return
    for item in items:
        out.print(approval_card(item.pending(), item.errand_title))
    out.print(HINT)


def _always_pattern(pattern: str | None, always: bool) -> dict[str, str] | None:
    if pattern is None:
        return None
    if not always:
        raise UserError("--pattern goes with --always or --standing")
    return {k: str(v) for k, v in json_object(pattern).items()}


def approve(
    approval_id: Annotated[
        str, typer.Argument(help="The approval's id, as errands approvals shows it.")
    ],
    always: Annotated[
        bool,
        typer.Option(
            "--always",
            help="Also allow later calls of this tool with arguments like these, for this errand.",
        ),
    ] = False,
    edit: Annotated[
        str | None,
        typer.Option("--edit", help="Approve these arguments instead (a JSON object)."),
    ] = None,
    standing: Annotated[
        bool,
        typer.Option(
            "--standing",
            help="Also allow later calls like this one in every errand, from now on: a "
            "standing rule written to the policy (policy.toml; with the store on PostgreSQL, "
            "the store's) with your name (never applied after "
            "untrusted content was read).",
        ),
    ] = False,
    pattern: Annotated[
        str | None,
        typer.Option(
            "--pattern",
            help="With --always or --standing: argument globs that later calls must match, as "
            'JSON (e.g. {"url": "https://api.example.com/*"}); default: the same values '
            "(--always) or the recipient, URL prefix, path and method (--standing).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a pending action (optionally edited). The errand then runs it, exactly once."""
    try:
        edited = json_object(edit) if edit is not None else None
        glob = _always_pattern(pattern, always or standing)
    except ErrandsError as exc:
        fail(str(exc))
    always_glob = glob if always else None
    standing_glob = glob if standing else None
    server = server_for_home()
    if server is not None:
        try:
            remote.approve(
                server,
                approval_id,
                edited=edited,
                always=always,
                pattern=always_glob,
                as_json=as_json,
                standing=standing,
                standing_pattern=standing_glob,
            )
        except ErrandsError as exc:
            fail(str(exc))
        return

    async def go(h: Harness) -> str:
        if edited is not None and not as_json:  # the card's new decision, before the yes
            verdict = await h.approvals.decision_for(approval_id, edited)
            if verdict is not None:
                out.print(policy_line(verdict.decision.value, verdict.rule, verdict.reason))
        await h.approvals.approve(
            approval_id,
            by=who(),
            channel="cli",
            edited_arguments=edited,
            always=always,
            always_pattern=always_glob,
            standing=standing,
            standing_pattern=standing_glob,
        )
        return approval_id.rpartition(".")[0]

    errand_id = with_harness(go)
    if as_json:
        sys.stdout.write(json.dumps({"approved": approval_id, "errand": errand_id}) + "\n")
    else:
        out.print(
            f"[green]approved[/green] {approval_id}; a running server carries on, "
            f"or continue here: errands resume {errand_id}"
        )
    if standing and not as_json:
        out.print(
            "[dim]standing rule added to the policy (errands policy show; errands policy"
            " revoke NAME undoes it)[/dim]"
        )


def deny(
    approval_id: Annotated[
        str, typer.Argument(help="The approval's id, as errands approvals shows it.")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why; it goes back to the model.")],
    as_json: JsonOpt = False,
) -> None:
    """Deny a pending action; the reason goes back to the model."""
    server = server_for_home()
    if server is not None:
        try:
            remote.deny(server, approval_id, reason=reason, as_json=as_json)
        except ErrandsError as exc:
            fail(str(exc))
        return

    async def go(h: Harness) -> str:
        await h.approvals.deny(approval_id, reason=reason, by=who(), channel="cli")
        return approval_id.rpartition(".")[0]

    errand_id = with_harness(go)
    if as_json:
        sys.stdout.write(json.dumps({"denied": approval_id, "errand": errand_id}) + "\n")
    else:
        out.print(f"[red]denied[/red] {approval_id}; continue: errands resume {errand_id}")


def register(app: typer.Typer) -> None:
    app.command()(approvals)
    app.command("approve")(approve)
    app.command("deny")(deny)
