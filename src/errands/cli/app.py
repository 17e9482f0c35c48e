"""The ``errands`` command line: the app, its global options, and its commands.

Each group of commands is a module in :mod:`errands.cli.commands` that registers its
commands here; what they share is in :mod:`errands.cli.common` (consoles, options,
opening errands) and :mod:`errands.cli.live` (running an errand in the foreground).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperOption

from errands import __version__
from errands.cli.commands import (
    approvals,
    cost,
    errands,
    evals,
    gc,
    mcp,
    memory,
    models,
    policy,
    recipes,
    schedules,
    server,
    service,
    store,
    tools,
    workers,
)
from errands.cli.common import BAD_INPUT, err, out, state
from errands.cli.common import settings as common_settings
from errands.errors import ErrandsError, StoreUnavailable

__all__ = ["app", "main"]

_option_type = TyperOption.display_type_rich


def _flag_has_no_type(self: TyperOption, ctx: Any) -> str | None:
    """A flag takes no value: its help row shows none (typer writes ``<bool>``, which
    reads as if ``--json true`` were wanted)."""
    return None if self.is_flag else _option_type(self, ctx)


TyperOption.display_type_rich = _flag_has_no_type  # type: ignore[method-assign]

app = typer.Typer(
    name="errands",
    help="errands: a self-hosted, always-on agent harness. Hand it errands; it runs them "
    "durably, asks before anything consequential, and tells you what each one cost.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


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


def version() -> None:
    """Print the version."""
    out.print(__version__)


errands.register(app)
approvals.register(app)
schedules.register(app)
recipes.register(app)
policy.register(app)
app.command()(version)
cost.register(app)
models.register(app)
store.register(app)
gc.register(app)
tools.register(app)
mcp.register(app)
memory.register(app)
server.register(app)
workers.register(app)
service.register(app)
evals.register(app)


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
        explained = _explained(exc)
        if explained is not None:  # a refusal, or a condition of the world: not a bug
            err.print(f"[bold red]error:[/bold red] {explained}", highlight=False)
            sys.exit(BAD_INPUT)
        err.print(
            f"[bold red]error:[/bold red] {type(exc).__name__}: {exc}\n"
            "[dim](this is a bug in errands; ERRANDS_DEBUG=1 shows the traceback)[/dim]"
        )
        sys.exit(70)


def _explained(exc: BaseException) -> ErrandsError | None:
    """*exc* as what errands tells a person: an ErrandsError that escaped a command, or
    a full disk, a held lock or an I/O error met outside the store (which explains its
    own); None for a bug."""
    if isinstance(exc, ErrandsError):
        return exc
    from errands.store.sqlite.connection import unavailable

    where = "errands' files"
    with contextlib.suppress(Exception):
        where = str(common_settings().db_path)
    found: StoreUnavailable | None = unavailable(exc, where)
    return found
