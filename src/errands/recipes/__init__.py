"""Recipes: the four always-on workloads (issue 20) as one command each.

A recipe turns a few options into a schedule or watch (named by the person), its prompt,
the tools its runs may use and what the policy will ask -- all validated before anything
is written, then written once through :func:`errands.engine.schedules.add_schedule`.
"""

from errands.recipes.catalog import RECIPES, Recipe, RecipeError, RecipeOptions
from errands.recipes.install import Made, add_recipe

__all__ = ["RECIPES", "Made", "Recipe", "RecipeError", "RecipeOptions", "add_recipe"]
