"""``errands recipe add``: validate a recipe's options, then add its schedule once."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from errands.clock import SYSTEM, Clock
from errands.config import Settings
from errands.core.schedules import describe
from errands.engine.schedules import add_schedule
from errands.errors import ScheduleExists, UserError
from errands.recipes.catalog import RECIPES, RecipeError, RecipeOptions

__all__ = ["Made", "add_recipe", "recipe_named"]

# a schedule's field -> the recipe option a person typed
OPTION = {"name": "--name", "url": "--url", "select": "--select", "every": "--every",
          "cron": "--cron", "tz": "--tz", "model": "--model"}  # fmt: skip


@dataclass(frozen=True)
class Made:
    """What a recipe made, and how to see it."""

    recipe: str
    name: str
    kind: str
    when: str
    tools: list[str]
    policy: list[str]
    see: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "name": self.name, "kind": self.kind, "when": self.when,
                "tools": self.tools, "policy": self.policy, "see": self.see}  # fmt: skip


def recipe_named(name: str) -> Any:
    try:
        return RECIPES[name]
    except KeyError:
        raise RecipeError(
            f"no recipe named {name!r}: choose one of {', '.join(RECIPES)} (errands recipe ls)"
        ) from None


def _named(exc: UserError) -> RecipeError:
    text = " ".join(str(exc).split())
    where = getattr(exc, "field", None)
    if isinstance(where, str) and where in OPTION and text.startswith(f"{where}: "):
        text = f"{OPTION[where]}: {text[len(where) + 2 :]}"
    return RecipeError(text)


async def add_recipe(
    store: Any,
    settings: Settings,
    recipe: str,
    options: RecipeOptions,
    *,
    clock: Clock = SYSTEM,
    by: str = "local",
    known_tools: Collection[str] | None = None,
) -> Made:
    """Check the recipe's options, then add its schedule (which validates it whole
    before writing): nothing is written on a refusal."""
    chosen = recipe_named(recipe)
    chosen.check(options, settings)
    request, policy = chosen.build(options, settings, clock.wall())
    try:
        row = await add_schedule(
            store, settings, request, clock=clock, by=by, known_tools=known_tools
        )
    except ScheduleExists:
        raise RecipeError(
            f"--name: a schedule named {request.name.strip()!r} exists already "
            "(errands schedule ls)"
        ) from None
    except UserError as exc:  # (a ScheduleError, a watch's WatchSpecError: naming the field)
        raise _named(exc) from None
    name = row.spec.name
    see = [f"errands schedule show {name}", "errands ls   (its runs, marked with the name)"]
    see.append(
        "the inbox: each run, and every approval card it asks" if request.tools else
        "the inbox: each run's answer"
    )  # fmt: skip
    return Made(
        recipe=chosen.name, name=name, kind=row.spec.kind,
        when=describe(row.spec) + (f" on {row.spec.url}" if row.spec.url else ""),
        tools=list(row.spec.tools or []), policy=policy, see=see,
    )  # fmt: skip
