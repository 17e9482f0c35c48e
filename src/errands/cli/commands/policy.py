"""``errands policy explain``: the decision the policy makes for one call, and why;
``errands policy reload``: check ``policy.toml`` and have running processes take it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from errands.cli.common import JsonOpt, fail, json_object, out, settings, with_harness
from errands.errors import ErrandsError, UserError
from errands.server.files import live_server

if TYPE_CHECKING:
    from errands.config import Settings
    from errands.harness import Harness
    from errands.policy.rules import Policy
    from errands.store.postgres.policy import PolicyVersions

__all__ = ["register"]

T = TypeVar("T")

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
        policy = in_force(s) or load_policy(s.home)
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
def reload(
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="PostgreSQL store: store the file even if it lacks rules the policy in "
            "force has (standing rules added since: see errands policy show).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check policy.toml and have every running errands process use it (within 2 s).

    A file that is not valid is refused with the reason; running processes then keep
    the policy they have. Running processes also notice an edit on their own: this
    command is the way to check one first. With the store on PostgreSQL the policy
    lives in the store: this stores the file as the policy's next version, for every
    process on every host (docs/scale-out.md).
    """
    from errands.policy.reload import WITHIN, touch
    from errands.policy.rules import load_policy

    version = None
    try:
        s = settings()
        path = s.home / "policy.toml"
        policy = load_policy(s.home)  # (written with the defaults if there is none yet)
        if s.store_url:
            version = _push(s, path, replace)
        else:
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
                    "version": version,
                }
            )
            + "\n"
        )
        return
    rules = f"{len(policy.rules)} rule{'' if len(policy.rules) == 1 else 's'}"
    where = f"the server at {server['url']} and every" if server else "every"
    stored = "" if version is None else f", stored as policy version {version}"
    out.print(
        f"[green]valid[/green] {path} ({rules}{stored}); {where} running errands process "
        f"uses it within {WITHIN:g} s"
    )


def in_force(s: Settings) -> Policy | None:
    """The policy the PostgreSQL store keeps (its newest version); None: a SQLite store
    (the home's policy.toml is the policy)."""
    if not s.store_url:
        return None
    from errands.policy.rules import parse_policy
    from errands.policy.stored import stored_path

    newest = _versions(s, lambda versions: versions.newest())
    if newest is None:
        return None  # (none stored yet: the first process stores policy.toml)
    return parse_policy(newest[1], stored_path(newest[0]))


def _versions(s: Settings, fn: Callable[[PolicyVersions], T]) -> T:
    from errands.store import open_store

    store = open_store(s)
    try:
        return fn(store.policies)  # type: ignore[attr-defined]
    finally:
        asyncio.run(store.close())


def _push(s: Settings, path: Path, replace: bool) -> int:
    """Store *path*'s text as the policy's next version; refused if it lacks a rule the
    policy in force has (unless *replace*)."""
    from errands.policy.rules import parse_policy

    text = path.read_text(encoding="utf-8")
    names = {r.name for r in parse_policy(text, path).rules}

    def edit(old: str | None) -> str:
        if old is not None and not replace:
            lost = [r.name for r in parse_policy(old, path).rules if r.name not in names]
            if lost:
                raise UserError(
                    f"{path} lacks rules the policy in force has ({', '.join(lost)}): write"
                    " `errands policy show > policy.toml` and edit that, or pass --replace"
                )
        return text

    stored = _versions(s, lambda v: v.change(edit, by=f"{_who()} via cli"))
    assert stored is not None
    return stored[0]


def _who() -> str:
    return os.environ.get("USER") or "cli"


@policy_app.command("show")
def show() -> None:
    """Print the policy in force: policy.toml, or with the store on PostgreSQL the
    newest version the store keeps."""
    try:
        s = settings()
        text = _versions(s, lambda v: v.newest()) if s.store_url else None
        if text is None:
            from errands.policy.rules import load_policy

            load_policy(s.home)
            sys.stdout.write((s.home / "policy.toml").read_text(encoding="utf-8"))
            return
    except ErrandsError as exc:
        fail(str(exc))
    sys.stdout.write(text[1])


@policy_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The rule's name, e.g. standing-send_email-1.")],
) -> None:
    """Remove the rule NAME (a standing rule, or any other) from the policy; every
    running errands process stops applying it within 2 s."""
    from errands.policy.reload import WITHIN
    from errands.policy.rules import parse_policy
    from errands.policy.standing import edit_policy_file, without_rule
    from errands.policy.stored import StoredPolicy

    async def go(harness: Harness) -> str:
        policy = harness.policy
        if isinstance(policy, StoredPolicy):
            version = policy.change(lambda old: without_rule(old, name), by=f"{_who()} via cli")
            return f"policy version {version}"
        path = harness.settings.home / "policy.toml"
        edit_policy_file(
            harness.settings.home,
            lambda old: without_rule(old, name),
            lambda text: parse_policy(text, path),
        )
        return str(path)

    where = with_harness(go)
    out.print(
        f"[green]revoked[/green] rule {name} ({where}); every running errands process"
        f" stops applying it within {WITHIN:g} s"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
