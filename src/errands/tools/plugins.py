"""Tools from outside errands: installed plugins and modules named in the config.

Two ways in, one hook:

- **plugins**: installed packages that declare an entry point in the group
  ``errands.tools`` (as Simon Willison's ``llm`` does); errands' own built-in tools are
  registered the same way (``builtin = "errands.tools.builtin:builtin_toolset"`` in its
  ``pyproject.toml``);
- **modules** named in ``errands.toml``::

      [tools]
      modules = ["my_tools"]          # importable names; each defines errands_tools

What an entry point or a module's ``errands_tools`` gives may be a
:class:`~errands.tools.toolset.Toolset`, a :class:`~errands.tools.tool.Tool`, a list of
tools, or a callable (taking no arguments) returning one of those. Tools keep what
they declare: effect classes, argument roles, previews, idempotency.

A plugin's code runs inside errands -- the server included -- with errands' own
rights, **unsandboxed**: install only plugins you would run yourself. One that cannot
be loaded stops the start with one line naming it (a ConfigError), never silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from errands.errors import ConfigError
from errands.tools.tool import Tool
from errands.tools.toolset import FunctionToolset, Toolset

__all__ = ["GROUP", "Source", "load_tools"]

GROUP = "errands.tools"
BUILTIN = "builtin"


@dataclass(frozen=True)
class Source:
    """Where a toolset came from: ``plugin NAME (DIST)`` or ``module NAME``."""

    kind: str  # "builtin" | "plugin" | "module"
    name: str
    toolset: Toolset


def load_tools(modules: Iterable[str] = (), *, plugins: bool = True) -> list[Source]:
    """Every toolset errands gives errands: the built-ins and the installed plugins
    (unless *plugins* is false: a program that brings its own tools), then the config's
    modules (in that order)."""
    sources: list[Source] = []
    found_builtin = False
    eps = entry_points(group=GROUP) if plugins else ()
    for ep in sorted(eps, key=lambda e: (e.name != BUILTIN, e.name)):
        if ep.name == BUILTIN:
            if found_builtin:
                continue
            found_builtin = True
        where = f"plugin {ep.name!r} (entry point {ep.value} in the group {GROUP})"
        try:
            loaded = ep.load()
        except Exception as exc:
            raise ConfigError(f"{where} failed to load: {type(exc).__name__}: {exc}") from None
        kind = "builtin" if ep.name == BUILTIN else "plugin"
        sources.append(Source(kind, ep.name, _toolset(loaded, where)))
    if plugins and not found_builtin:  # an errands run from a tree without its metadata
        from errands.tools.builtin import builtin_toolset

        sources.insert(0, Source("builtin", BUILTIN, builtin_toolset()))
    for name in modules:
        where = f"[tools] modules: {name!r}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise ConfigError(
                f"{where} cannot be imported ({type(exc).__name__}: {exc}); "
                "is it installed, or on PYTHONPATH?"
            ) from None
        if not hasattr(module, "errands_tools"):
            raise ConfigError(f"{where} has no errands_tools (a Toolset, tools, or a function)")
        sources.append(Source("module", name, _toolset(module.errands_tools, where)))
    return sources


def _toolset(obj: Any, where: str) -> Toolset:
    if callable(obj) and not isinstance(obj, Tool) and not _is_toolset(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(f"{where} failed: {type(exc).__name__}: {exc}") from None
    if _is_toolset(obj):
        return obj  # type: ignore[no-any-return]
    if isinstance(obj, Tool):
        return FunctionToolset([obj])
    if isinstance(obj, list | tuple) and all(isinstance(t, Tool) for t in obj):
        return FunctionToolset(obj)
    raise ConfigError(
        f"{where} gave a {type(obj).__name__}: expected a Toolset, a Tool or a list of tools"
    )


def _is_toolset(obj: Any) -> bool:
    return callable(getattr(obj, "tools", None)) and callable(getattr(obj, "call", None))
