"""``errands eval``: errands measured against outside suites (AgentDojo; BFCL's tools for
the tool search)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from errands.cli.common import JsonOpt, fail, out
from errands.errors import UserError

if TYPE_CHECKING:
    from errands.evals.agentdojo_run import Flow, Mode

__all__ = ["register"]

eval_app = typer.Typer(
    help="Measure errands against outside suites: its permission boundary (agentdojo), its "
    "tool search (tool-search).",
    no_args_is_help=True,
)


class FlowChoice(StrEnum):
    on = "on"
    off = "off"
    both = "both"


class ModeChoice(StrEnum):
    default = "default"
    plan = "plan"
    both = "both"


class StandingChoice(StrEnum):
    roles = "roles"
    tool = "tool"


@eval_app.command("agentdojo")
def agentdojo(
    suite: Annotated[
        list[str] | None,
        typer.Option("--suite", help="banking or slack (repeat for both; default both)."),
    ] = None,
    flow: Annotated[
        FlowChoice, typer.Option(help="Flow control on, off (the negative control) or both.")
    ] = FlowChoice.both,
    standing: Annotated[
        StandingChoice,
        typer.Option(
            help="The standing rules of the person: errands' own pattern (roles: payee, "
            "recipient or URL prefix pinned) or the whole tool (tool)."
        ),
    ] = StandingChoice.roles,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N user tasks of each suite.")
    ] = None,
    mode: Annotated[
        ModeChoice,
        typer.Option(
            help="Errands in the default mode, in plan mode (the model never reads untrusted "
            "content; a perfect planner, an extractor that obeys the injection) or both."
        ),
    ] = ModeChoice.default,
    as_json: JsonOpt = False,
) -> None:
    """Run AgentDojo's suites through errands (a model that always obeys the injection,
    a person who approves only what they asked for) and report what got through.

    Runs on a temporary home; needs the agentdojo extra (pip install 'errands[agentdojo]').
    """
    import asyncio

    from errands.evals.report import evaluate, table  # (it imports agentdojo only when run)

    flows: list[Flow] = ["on", "off"]
    if flow is not FlowChoice.both:
        flows = ["on"] if flow is FlowChoice.on else ["off"]
    modes: list[Mode] = ["default", "plan"]
    if mode is not ModeChoice.both:
        modes = ["default"] if mode is ModeChoice.default else ["plan"]
    try:
        records = asyncio.run(
            evaluate(
                suite or ["banking", "slack"],
                flows,
                standing=standing.value,
                limit=limit,
                modes=modes,
            )
        )
    except UserError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(records) + "\n")
        return
    out.print(table(records))


@eval_app.command("tool-search")
def tool_search(
    tools: Annotated[Path, typer.Option("--tools", help="The tool pool: JSONL, one tool a line.")],
    queries: Annotated[
        Path, typer.Option("--queries", help="The questions: JSONL, one a line, with gold.")
    ],
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Tools one search finds.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """How well the tool search finds the tools questions need: recall@1, recall@k and
    the tool-schema tokens of a request, by category (multi-turn ones at k=20).

    The format is that of tests/data/tool-retrieval (BFCL's 3,386 tools), e.g.
    errands eval tool-search --tools tests/data/tool-retrieval/tools.jsonl
    --queries tests/data/tool-retrieval/queries-dev.jsonl
    """
    from errands.tools.search.evaluate import evaluate, load_queries, load_tools, table

    try:
        result = evaluate(load_tools(tools), load_queries(queries), k)
    except UserError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    sys.stdout.write(table(result) + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
