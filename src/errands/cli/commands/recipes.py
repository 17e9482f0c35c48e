"""Recipes: ``errands recipe ls`` and ``errands recipe add RECIPE --name NAME ...``.

A recipe makes a schedule or watch, its prompt, its tools and says what will ask, in one
step (:mod:`errands.recipes`). Bad input is one line naming the option, exit 2, and
nothing is written."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from errands.cli.common import JsonOpt, out, server_for_home, who, with_harness
from errands.cli.render import safe

if TYPE_CHECKING:
    from errands.harness import Harness
    from errands.recipes import Made

__all__ = ["register"]

recipe_app = typer.Typer(
    help="Recipes: the always-on workloads -- listings-monitor, board-summary, "
    "overnight-drafts, vendor-chase -- each started with one command (docs/recipes/).",
    no_args_is_help=True,
)


@recipe_app.command("ls")
def ls(as_json: JsonOpt = False) -> None:
    """List the recipes and the options each takes."""
    from errands.recipes import RECIPES

    rows = [{"recipe": r.name, "summary": r.summary, "usage": r.usage} for r in RECIPES.values()]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table(box=None)
    for column in ("recipe", "what it does", "options"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["recipe"], row["summary"], row["usage"])
    out.print(table)
    out.print("errands recipe add RECIPE --name NAME [options]   (docs/recipes/RECIPE.md)")


@recipe_app.command("add")
def add(
    recipe: Annotated[str, typer.Argument(help="Which recipe (errands recipe ls).")],
    name: Annotated[str, typer.Option("--name", help="The schedule's (or watch's) name.")],
    url: Annotated[str | None, typer.Option("--url", help="listings: the page.")] = None,
    select: Annotated[
        str | None, typer.Option("--select", help="listings: a CSS selector, one per item.")
    ] = None,
    every: Annotated[
        str | None, typer.Option("--every", help="listings: check interval; vendor: wait.")
    ] = None,
    notify: Annotated[
        str | None, typer.Option("--notify", help="listings: inbox, email or webhook.")
    ] = None,
    board: Annotated[
        str | None, typer.Option("--board", help="board: a GitHub-REST-shaped issues URL.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="board: the [secrets.NAME] sent as its Bearer token."),
    ] = None,
    cron: Annotated[str | None, typer.Option("--cron", help="A 5-field cron expression.")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="The zone of --cron.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Who is mailed.")] = None,
    about: Annotated[str | None, typer.Option("--about", help="vendor: what to chase.")] = None,
    max_follow_ups: Annotated[
        int | None, typer.Option("--max-follow-ups", help="vendor: at most this many.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="PROVIDER:MODEL (default: errands.toml's).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a recipe: its schedule or watch, prompt, tools and policy, in one step.

    Example: errands recipe add listings-monitor --name flats --url
    https://flats.example/list --select '.listing' --every 1h. The recipes and their
    options: errands recipe ls; each has a page in docs/recipes/.
    """
    from pydantic import ValidationError

    from errands.errors import UserError
    from errands.recipes import RecipeOptions, add_recipe

    given: dict[str, Any] = {
        "name": name, "url": url, "select": select, "every": every, "notify": notify,
        "board": board, "token": token, "cron": cron, "tz": tz, "to": to, "about": about,
        "max_follow_ups": max_follow_ups, "model": model,
    }  # fmt: skip

    async def go(h: Harness) -> Made:
        try:
            options = RecipeOptions(**given)
        except ValidationError:
            raise UserError("--notify: give inbox, email or webhook") from None
        return await add_recipe(
            h.store, h.settings, recipe, options, by=who(), known_tools=h.tool_names()
        )

    made = with_harness(go)
    if as_json:
        sys.stdout.write(json.dumps(made.as_dict()) + "\n")
        return
    out.print(f"recipe {safe(made.recipe)} added as {made.kind} {safe(made.name)}: "
              f"{safe(made.when)}")  # fmt: skip
    out.print(f"  tools: {', '.join(made.tools) or 'none'}")
    for line in made.policy:
        out.print(f"  policy: {safe(line)}")
    if made.kind == "watch":
        out.print("  the first check records what is there; later ones start an errand only "
                  "for new items (an unchanged page calls no model)")  # fmt: skip
    for line in made.see:
        out.print(f"  see it: {safe(line)}")
    if server_for_home() is None:
        out.print("[dim]no errands up runs for this home: recipes run only while it runs "
                  "(errands up)[/dim]")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.add_typer(recipe_app, name="recipe")
