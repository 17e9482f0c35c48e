"""The ``errands`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.prompt import Prompt

from errands import __version__
from errands.cli import remote
from errands.cli.render import approval_card, errand_json, errands_table, event_line
from errands.config import ConfigError, Settings, load_settings
from errands.core.states import ErrandState, ErrandView, PendingApproval
from errands.engine.operations import UserError, cancel_errand, create_errand, tell_errand
from errands.engine.runner import ErrandBusy, Runner
from errands.models.spec import ModelSpecError
from errands.policy.approvals import ApprovalRefused, approve, deny
from errands.policy.rules import load_policy
from errands.store.base import StoreError
from errands.store.redact import Redactor, secret_env_values
from errands.store.sqlite import SQLiteStore
from errands.tools.builtin import builtin_registry
from errands.tools.workspace import WorkspaceRefused

__all__ = ["app", "main"]

app = typer.Typer(
    name="errands",
    help="errands: a self-hosted, always-on agent harness. Hand it errands; it runs them "
    "durably, asks before anything consequential, and tells you what each one cost.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

# Exit codes (documented in the README)
EXIT = {
    ErrandState.done: 0,
    ErrandState.failed: 1,
    ErrandState.waiting_approval: 3,
    ErrandState.needs_attention: 4,
    ErrandState.cancelled: 5,
}
BAD_INPUT = 2

T = TypeVar("T")


class _State:
    home: str | None = None
    config: str | None = None


state = _State()


@app.callback()
def _root(
    home: Annotated[
        str | None,
        typer.Option("--home", help="ERRANDS_HOME: where the store, config and workspaces live."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="Config file (default ERRANDS_HOME/errands.toml)."),
    ] = None,
) -> None:
    state.home = home
    state.config = config


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(code)


KNOWN_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    ModelSpecError,
    UserError,
    StoreError,
    WorkspaceRefused,
    ErrandBusy,
)


def settings() -> Settings:
    return load_settings(state.home, state.config)


def open_store(s: Settings) -> SQLiteStore:
    return SQLiteStore(s.db_path, redactor=Redactor(secret_env_values()))


def run_async(fn: Callable[[Settings, SQLiteStore], Coroutine[Any, Any, T]]) -> T:
    """Open settings and store, run *fn*, close; known errors become one clear line."""
    try:
        s = settings()
        store = open_store(s)
    except KNOWN_ERRORS as exc:
        fail(str(exc))

    async def body() -> T:
        try:
            return await fn(s, store)
        finally:
            await store.close()

    try:
        return asyncio.run(body())
    except KNOWN_ERRORS as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err.print("[dim]interrupted; the errand is safe in the store (errands resume ID)[/dim]")
        raise typer.Exit(130) from None


# --- a running server (errands up): decisions and messages go through it ----------------


def _via_server(action: Callable[[remote.Remote], None]) -> bool:
    """Run *action* against the server running for this home, if any (see cli/remote.py)."""
    try:
        server = remote.find(settings())
        if server is None:
            return False
        action(server)
    except KNOWN_ERRORS as exc:
        fail(str(exc))
    return True


# ------------------------------------------------------------------------------------------


def resolve_id(store: SQLiteStore, errand_id: str) -> str:
    return store.find_sync(errand_id)


def make_runner(s: Settings, store: SQLiteStore) -> Runner:
    return Runner(store, s, builtin_registry(), load_policy(s.home))


class _LivePrinter:
    """Streams the model's text as it arrives (the loop's text listener)."""

    def __init__(self) -> None:
        self.streaming = False

    def __call__(self, errand_id: str, delta: str, /) -> None:
        if not self.streaming:
            out.print("    [bold]model:[/bold] ", end="")
            self.streaming = True
        out.print(delta, end="", markup=False, highlight=False)

    def reset(self, errand_id: str) -> None:
        """A retry or the next model of a chain starts the reply over."""
        if self.streaming:
            out.print()
            self.streaming = False
        out.print("    [dim](retrying — the text above is discarded)[/dim]")

    def end(self) -> bool:
        was = self.streaming
        if was:
            out.print()
        self.streaming = False
        return was


def _who() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "local"


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise UserError('the arguments must be a JSON object, like {"path": "notes.md"}')
    return value


async def _foreground(
    s: Settings, store: SQLiteStore, errand_id: str, *, as_json: bool, interactive: bool = False
) -> ErrandView:
    """Run the errand here, printing its timeline live (unless --json)."""
    printer = _LivePrinter()
    runner = make_runner(s, store)
    if not as_json:
        runner.loop.on_text = printer
        shown = [0]

        async def show_new() -> None:
            for stored in await store.read(errand_id, after=shown[0]):
                shown[0] = stored.seq
                streamed = printer.end() if stored.event.type == "model_responded" else False
                line = event_line(stored, streamed=streamed)
                if line:
                    out.print(line, highlight=False)

        pending: list[asyncio.Task[None]] = []

        def on_append(eid: str, seq: int) -> None:
            if eid == errand_id:
                pending.append(asyncio.ensure_future(show_new()))

        store.subscribe(on_append)
        await show_new()
    while True:
        view = await runner.run_errand(errand_id)
        if not as_json:
            await asyncio.gather(*pending)
            await show_new()
        if not (interactive and view.state is ErrandState.waiting_approval):
            return view
        for approval in list(view.pending.values()):
            await _ask_inline(store, approval, view.title)


async def _ask_inline(store: SQLiteStore, approval: PendingApproval, title: str) -> None:
    """Show the whole action and record the person's decision (channel: cli)."""
    out.print(approval_card(approval, title))
    while True:
        answer = (
            await asyncio.to_thread(
                Prompt.ask,
                "[bold]approve?[/bold] [y]es / [n]o / [e]dit / [a]lways for this errand",
                choices=["y", "n", "e", "a"],
                console=out,
            )
        ).strip()
        try:
            if answer == "n":
                reason = await asyncio.to_thread(
                    Prompt.ask, "reason (goes back to the model)", console=out
                )
                await deny(store, approval.id, reason=reason or "no", by=_who(), channel="cli")
            elif answer == "e":
                raw = await asyncio.to_thread(
                    Prompt.ask,
                    "arguments (JSON)",
                    default=json.dumps(approval.arguments),
                    console=out,
                )
                await approve(
                    store,
                    builtin_registry(),
                    approval.id,
                    by=_who(),
                    channel="cli",
                    edited_arguments=_json_object(raw),
                    seen_hash=approval.args_hash,
                )
            else:
                await approve(
                    store,
                    builtin_registry(),
                    approval.id,
                    by=_who(),
                    channel="cli",
                    always=answer == "a",
                    seen_hash=approval.args_hash,
                )
            return
        except (ApprovalRefused, UserError) as exc:
            err.print(f"[red]{exc}[/red]")


def _finish(view: ErrandView, store: SQLiteStore, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(errand_json(view)) + "\n")
    else:
        if view.state is ErrandState.waiting_approval:
            err.print(
                f"[yellow]errand {view.id} is waiting for your approval[/yellow]: "
                f"errands approvals, then errands approve ID or errands deny ID --reason …, "
                f"then errands resume {view.id}"
            )
        elif view.state is ErrandState.needs_attention:
            err.print(
                f"[magenta]errand {view.id} needs your attention:[/magenta] {view.reason}\n"
                f'tell it how to go on: errands tell {view.id} "…" && errands resume {view.id}'
            )
        cost = f"${view.usage.cost_usd:.4f}"
        out.print(
            f"[dim]{view.id} · {view.state.value} · {view.steps} steps · "
            f"{view.usage.input_tokens} in / {view.usage.output_tokens} out · {cost}[/dim]"
        )
    code = EXIT.get(view.state, 0)
    if code:
        raise typer.Exit(code)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
NoInputOpt = Annotated[
    bool, typer.Option("--no-input", help="Never ask on the terminal; leave approvals waiting.")
]
IdArg = Annotated[str, typer.Argument(help="The errand's id (a unique prefix will do).")]


def _interactive(no_input: bool, as_json: bool) -> bool:
    return not (no_input or as_json) and sys.stdin.isatty() and sys.stdout.isatty()


@app.command()
def run(
    text: Annotated[str, typer.Argument(help="What you want done, in plain words.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="PROVIDER:MODEL, e.g. openai:gpt-4o-mini or scripted:demo."
        ),
    ] = None,
    workspace: Annotated[
        str | None, typer.Option("--workspace", "-w", help="Directory the errand may work in.")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            "--max-cost",
            min=0.0,
            help="Budget in USD for this errand and any errands it starts; each model call "
            "reserves its worst case first, so the errand stops before passing it.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    no_input: NoInputOpt = False,
) -> None:
    """Start an errand and run it here, showing its timeline live.

    On a terminal, actions that need approval are shown in full and you are asked
    inline; without one (or with --no-input) the errand is left waiting.

    Exit codes: 0 done, 1 failed, 2 bad input, 3 waiting for approval,
    4 needs attention, 5 cancelled.
    """

    async def go(s: Settings, store: SQLiteStore) -> tuple[ErrandView, SQLiteStore]:
        errand_id = await create_errand(
            store, s, text, model=model, workspace=workspace, max_cost_usd=max_cost
        )
        interactive = _interactive(no_input, as_json)
        return await _foreground(
            s, store, errand_id, as_json=as_json, interactive=interactive
        ), store

    view, store = run_async(go)
    _finish(view, store, as_json=as_json)


@app.command()
def demo(as_json: JsonOpt = False) -> None:
    """Run the bundled scripted demo errand (no model key needed)."""
    run(
        "Make me a shopping list for the weekend (oat milk, coffee beans, lemons, basil) "
        "and save it in my workspace.",
        model="scripted:demo",
        workspace=None,
        as_json=as_json,
        no_input=True,
    )


@app.command()
def resume(
    errand_id: IdArg,
    as_json: JsonOpt = False,
    no_input: NoInputOpt = False,
) -> None:
    """Continue an errand in the foreground (after a crash, a decision or a message)."""

    async def go(s: Settings, store: SQLiteStore) -> tuple[ErrandView, SQLiteStore]:
        full = resolve_id(store, errand_id)
        interactive = _interactive(no_input, as_json)
        return await _foreground(s, store, full, as_json=as_json, interactive=interactive), store

    view, store = run_async(go)
    _finish(view, store, as_json=as_json)


@app.command("ls")
def list_errands(
    as_json: JsonOpt = False,
    state_filter: Annotated[
        list[ErrandState] | None, typer.Option("--state", help="Only errands in this state.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """List errands, newest first."""

    async def go(s: Settings, store: SQLiteStore) -> list[ErrandView]:
        return await store.list_errands(states=state_filter, limit=limit)

    views = run_async(go)
    if as_json:
        sys.stdout.write(
            json.dumps(
                [
                    {
                        "id": v.id,
                        "status": v.state.value,
                        "title": v.title,
                        "created_at": v.created_at,
                        "steps": v.steps,
                        "cost_usd": v.usage.cost_usd,
                        "pending_approvals": len(v.pending),
                    }
                    for v in views
                ]
            )
            + "\n"
        )
    elif not views:
        out.print('No errands yet. Try [bold]errands demo[/bold] or [bold]errands run "…"[/bold].')
    else:
        out.print(errands_table(views))


@app.command()
def show(
    errand_id: IdArg,
    as_json: JsonOpt = False,
) -> None:
    """Show an errand's timeline (every event in its log)."""

    async def go(s: Settings, store: SQLiteStore) -> None:
        full = resolve_id(store, errand_id)
        view = await store.view(full)
        events = await store.read(full)
        if as_json:
            sys.stdout.write(json.dumps(errand_json(view, events), default=str) + "\n")
            return
        for stored in events:
            line = event_line(stored)
            if line:
                out.print(line, highlight=False)
        out.print(
            f"[dim]{view.id} · {view.state.value} · {view.steps} steps · "
            f"{view.usage.input_tokens} in / {view.usage.output_tokens} out · "
            f"${view.usage.cost_usd:.4f}[/dim]"
        )

    run_async(go)


@app.command()
def cancel(
    errand_id: IdArg,
    reason: Annotated[str, typer.Option(help="Why (kept in the log).")] = "",
) -> None:
    """Cancel an errand; the process that runs it stops at its next step."""

    async def go(s: Settings, store: SQLiteStore) -> str:
        full = resolve_id(store, errand_id)
        await cancel_errand(store, full, reason=reason)
        return full

    full = run_async(go)
    out.print(f"cancelled {full}")


@app.command()
def tell(
    errand_id: IdArg,
    text: Annotated[str, typer.Argument(help="Your message to the errand.")],
) -> None:
    """Send a follow-up message: it reopens a finished errand or joins a running one."""
    if _via_server(lambda server: remote.tell(server, settings(), errand_id, text)):
        return

    async def go(s: Settings, store: SQLiteStore) -> str:
        full = resolve_id(store, errand_id)
        await tell_errand(store, full, text)
        return full

    full = run_async(go)
    out.print(f"told {full}; a running server picks it up, or continue here: errands resume {full}")


@app.command()
def approvals(as_json: JsonOpt = False) -> None:
    """List every action waiting for your approval, in full."""
    if _via_server(lambda server: remote.approvals(server, as_json=as_json)):
        return

    async def go(s: Settings, store: SQLiteStore) -> list[tuple[PendingApproval, str]]:
        pending = await store.pending_approvals()
        titles = {
            v.id: v.title
            for v in await store.list_errands(states=[ErrandState.waiting_approval], limit=10_000)
        }
        return [(p, titles.get(p.errand_id, "")) for p in pending]

    pending = run_async(go)
    if as_json:
        sys.stdout.write(
            json.dumps([p.model_dump() | {"id": p.id, "errand_title": t} for p, t in pending])
            + "\n"
        )
        return
    if not pending:
        out.print("Nothing waits for your approval.")
        return
    for p, title in pending:
        out.print(approval_card(p, title))
    out.print(
        "[dim]errands approve ID [--always] [--edit JSON] · errands deny ID --reason TEXT[/dim]"
    )


def _always_pattern(pattern: str | None, always: bool) -> dict[str, str] | None:
    if pattern is None:
        return None
    if not always:
        raise UserError("--pattern goes with --always")
    return {k: str(v) for k, v in _json_object(pattern).items()}


@app.command("approve")
def approve_cmd(
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
    pattern: Annotated[
        str | None,
        typer.Option(
            "--pattern",
            help="With --always: argument globs that later calls must match, as JSON "
            '(e.g. {"url": "https://api.example.com/*"}); default: the same values.',
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a pending action (optionally edited). The errand then runs it, exactly once."""
    if _via_server(
        lambda server: remote.approve(
            server,
            approval_id,
            edited=_json_object(edit) if edit is not None else None,
            always=always,
            pattern=_always_pattern(pattern, always),
            as_json=as_json,
        )
    ):
        return

    async def go(s: Settings, store: SQLiteStore) -> str:
        edited = _json_object(edit) if edit is not None else None
        glob = _always_pattern(pattern, always)
        await approve(
            store,
            builtin_registry(),
            approval_id,
            by=_who(),
            channel="cli",
            edited_arguments=edited,
            always=always,
            always_pattern=glob,
        )
        return approval_id.rpartition(".")[0]

    errand_id = run_async(go)
    if as_json:
        sys.stdout.write(json.dumps({"approved": approval_id, "errand": errand_id}) + "\n")
    else:
        out.print(
            f"[green]approved[/green] {approval_id}; a running server carries on, "
            f"or continue here: errands resume {errand_id}"
        )


@app.command("deny")
def deny_cmd(
    approval_id: Annotated[
        str, typer.Argument(help="The approval's id, as errands approvals shows it.")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why; it goes back to the model.")],
    as_json: JsonOpt = False,
) -> None:
    """Deny a pending action; the reason goes back to the model."""
    if _via_server(lambda server: remote.deny(server, approval_id, reason=reason, as_json=as_json)):
        return

    async def go(s: Settings, store: SQLiteStore) -> str:
        await deny(store, approval_id, reason=reason, by=_who(), channel="cli")
        return approval_id.rpartition(".")[0]

    errand_id = run_async(go)
    if as_json:
        sys.stdout.write(json.dumps({"denied": approval_id, "errand": errand_id}) + "\n")
    else:
        out.print(f"[red]denied[/red] {approval_id}; continue: errands resume {errand_id}")


policy_app = typer.Typer(
    help="Inspect the policy (ERRANDS_HOME/policy.toml).", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")


@policy_app.command("explain")
def policy_explain(
    tool: Annotated[str, typer.Argument(help="Tool name, e.g. http_request.")],
    args_json: Annotated[str, typer.Argument(help="The call's arguments as a JSON object.")] = "{}",
    workspace: Annotated[
        str | None, typer.Option("--workspace", help="The errand workspace to judge paths against.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the decision the policy makes for one call, and the rule that made it."""
    from pathlib import Path

    from errands.core.labels import BOTTOM
    from errands.policy.hook import PolicyCall
    from errands.tools.registry import ToolError

    try:
        s = settings()
        policy = load_policy(s.home)
        registry = builtin_registry()
        tool_obj = registry.get(tool)
        args = tool_obj.validate(_json_object(args_json))
    except Exception as exc:
        if not isinstance(exc, (*KNOWN_ERRORS, ToolError)):
            raise
        fail(str(exc))
    effect = tool_obj.effect(args)
    verdict = policy.check(
        PolicyCall(
            errand_id="explain",
            tool=tool,
            arguments=args,
            effect=effect,
            workspace=Path(workspace).resolve() if workspace else s.workspaces / "example",
            context=BOTTOM,
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


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


# `errands up` and `errands inbox` live in their own module; importing it registers them.
from errands.cli import cost_cmds as _cost_cmds  # noqa: E402, F401
from errands.cli import models_cmds as _models_cmds  # noqa: E402, F401
from errands.cli import server_cmds as _server_cmds  # noqa: E402, F401


def main() -> None:
    """Entry point: no tracebacks for users unless ERRANDS_DEBUG is set."""
    from errands.engine.runtime import tune_gc

    tune_gc()
    try:
        app()
    except (typer.Exit, SystemExit):
        raise
    except Exception as exc:  # the last line of defence: one clear line, no traceback
        if os.environ.get("ERRANDS_DEBUG"):
            raise
        err.print(
            f"[bold red]error:[/bold red] {type(exc).__name__}: {exc}\n"
            "[dim](this is a bug in errands; ERRANDS_DEBUG=1 shows the traceback)[/dim]"
        )
        sys.exit(70)
