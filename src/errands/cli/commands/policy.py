"""``errands policy explain``: the decision the policy makes for one call, and why;
``errands policy reload``: check ``policy.toml`` and have running processes take it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from errands.cli.common import JsonOpt, fail, json_object, out, settings
from errands.errors import ErrandsError
from errands.server.files import live_server

__all__ = ["register"]

policy_app = typer.Typer(
    help="Inspect the policy (ERRANDS_HOME/policy.toml).", no_args_is_help=True
)


@policy_app.command("explain")
def explain(
    tool: Annotated[str, typer.Argument(help="Tool name, e.g. http_request.")],
    args_json: Annotated[str, typer.Argument(help="The call's arguments as a JSON object.")] = "{}",
    workspace: Annotated[
        str | None, typer.Option("--workspace", help="The errand workspace to judge paths against.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the decision the policy makes for one call, and the rule that made it."""
    from errands.core.labels import BOTTOM
    from errands.core.states import ErrandView
    from errands.harness import toolset_for
    from errands.policy.hook import PolicyCall
    from errands.policy.rules import load_policy
    from errands.tools.tool import ToolError

    try:
        s = settings()
        policy = load_policy(s.home)
        where = Path(workspace).resolve() if workspace else s.workspaces / "example"
        toolset = toolset_for(s)  # the tools an errand would have
        tool_obj = toolset.tools(ErrandView(id="explain", workspace=str(where))).get(tool)
        args = tool_obj.validate(json_object(args_json))
    except (ErrandsError, ToolError) as exc:
        fail(str(exc))
    effect = tool_obj.effect(args)
    verdict = policy.check(
        PolicyCall(
            errand_id="explain",
            tool=tool,
            arguments=args,
            effect=effect,
            workspace=where,
            context=BOTTOM,
            roles=tool_obj.arg_roles,
        )
    )
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "decision": verdict.decision.value,
                    "rule": verdict.rule,
                    "reason": verdict.reason,
                    "effect": effect.value,
                }
            )
            + "\n"
        )
        return
    style = {"allow": "green", "ask": "yellow", "deny": "red"}[verdict.decision.value]
    out.print(
        f"[bold {style}]{verdict.decision.value}[/bold {style}] — rule [bold]{verdict.rule}[/bold]"
        f" (effect {effect.value})" + (f": {verdict.reason}" if verdict.reason else "")
    )


@policy_app.command("reload")
def reload(as_json: JsonOpt = False) -> None:
    """Check policy.toml and have every running errands process use it (within 2 s).

    A file that is not valid is refused with the reason; running processes then keep
    the policy they have. Running processes also notice an edit on their own: this
    command is the way to check one first.
    """
    from errands.policy.reload import WITHIN, touch
    from errands.policy.rules import load_policy

    try:
        s = settings()
        path = s.home / "policy.toml"
        policy = load_policy(s.home)  # (written with the defaults if there is none yet)
        touch(path)
    except ErrandsError as exc:
        fail(f"{exc}; running errands processes keep the policy they have")
    except OSError as exc:
        fail(f"{path}: cannot mark it changed: {exc.strerror}")
    server = live_server(s.home)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "valid": True,
                    "path": str(path),
                    "rules": len(policy.rules),
                    "server": server["url"] if server else None,
                    "within_seconds": WITHIN,
                }
            )
            + "\n"
        )
        return
    rules = f"{len(policy.rules)} rule{'' if len(policy.rules) == 1 else 's'}"
    where = f"the server at {server['url']} and every" if server else "every"
    out.print(
        f"[green]valid[/green] {path} ({rules}); {where} running errands process "
        f"uses it within {WITHIN:g} s"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
