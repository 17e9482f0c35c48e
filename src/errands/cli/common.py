"""What every command shares: the consoles, the options, errors as one line, and
opening errands (:func:`with_harness`) for the length of one command.

Cheap to import: ``errands --help`` imports this and every command module, so what a
command needs to run (the harness, the store, the config, the HTTP client) is imported
by the function that uses it (tests/test_startup.py checks)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from errands.cli import remote
from errands.cli.render import safe
from errands.cli.whoami import who
from errands.errors import ErrandsError, UserError

if TYPE_CHECKING:
    from errands.config import Settings
    from errands.harness import Harness

__all__ = [
    "BAD_INPUT",
    "EXIT",
    "IdArg",
    "JsonOpt",
    "NoInputOpt",
    "StateName",
    "err",
    "fail",
    "json_object",
    "out",
    "server_for_home",
    "settings",
    "state",
    "who",
    "with_harness",
]

out = Console()
err = Console(stderr=True)


# An errand's state as the command line takes it (``errands ls --state``): the values of
# errands.core.states.ErrandState, which cannot be imported without pydantic and the
# events (tests/test_startup.py checks that the two agree). Each equals the state it names.
StateName = StrEnum(
    "StateName", "queued running waiting_approval sleeping done failed cancelled needs_attention"
)


# Exit codes (documented in the README), by the errand's state (an ErrandState is equal
# to its value, so either looks these up)
EXIT: dict[str, int] = {
    StateName.done: 0,
    StateName.failed: 1,
    StateName.waiting_approval: 3,
    StateName.needs_attention: 4,
    StateName.cancelled: 5,
    StateName.sleeping: 6,
}
BAD_INPUT = 2

T = TypeVar("T")


class _State:
    home: str | None = None
    config: str | None = None


state = _State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
NoInputOpt = Annotated[
    bool, typer.Option("--no-input", help="Never ask on the terminal; leave approvals waiting.")
]
IdArg = Annotated[str, typer.Argument(help="The errand's id (a unique prefix will do).")]


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    # (a message may quote what came from outside: a server's answer, a file's name)
    err.print(f"[bold red]error:[/bold red] {safe(message)}", highlight=False)
    raise typer.Exit(code)


def settings() -> Settings:
    from errands.config import load_settings

    return load_settings(state.home, state.config)


def json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise UserError('the arguments must be a JSON object, like {"path": "notes.md"}')
    return value


def with_harness(fn: Callable[[Harness], Coroutine[Any, Any, T]], *, write: bool = True) -> T:
    """Build errands for this home, run *fn*, close; a refusal becomes one clear line.

    A command that only reads (``write=False``: ``ls``, ``show``, ``cost``) opens the
    store read-only when this user cannot write the home, so another user's home (or a
    read-only mount) can still be looked at. A store SQLite finds damaged while *fn*
    reads it is explained as such, with the way out, rather than as a bug."""
    import asyncio
    import sqlite3

    from errands.harness import build
    from errands.store import health, open_store, writable

    try:
        s = settings()
        store = None if write or writable(s) else open_store(s, read_only=True)
        harness = build(s, store=store)
    except ErrandsError as exc:
        fail(str(exc))

    async def body() -> T:
        try:
            return await fn(harness)
        finally:
            await harness.close()

    try:
        return asyncio.run(body())
    except ErrandsError as exc:
        fail(str(exc))
    except sqlite3.Error as exc:
        explained = health.explain(s.db_path, exc, writing=write)
        if explained is None:
            raise
        fail(str(explained))
    except KeyboardInterrupt:
        err.print("[dim]interrupted; the errand is safe in the store (errands resume ID)[/dim]")
        raise typer.Exit(130) from None


def server_for_home() -> remote.Remote | None:
    """The server running for this home (``errands up``), if any (see cli/remote.py)."""
    try:
        return remote.find(settings())
    except ErrandsError as exc:
        fail(str(exc))
