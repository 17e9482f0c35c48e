"""Schedules and watches: ``errands schedule ...`` and ``errands watch ...``.

A schedule starts an ordinary errand on a cron expression, an interval or once; a
watch is a schedule whose slots are model-free checks of a page, starting an errand
only for new items. Both fire inside ``errands up``. The commands write to the store
(the running server's scheduler picks a change up within a second), except ``run-now``,
which goes through the server when one runs so that it claims the run at once; with no
server it runs the errand here, in the foreground, like ``errands run``.

Bad input is one line naming the option at fault (``--cron: …``), exit 2, and nothing
is written: the operations (:mod:`errands.engine.schedules`) validate everything first.
They, and the store they write to, are imported by the commands that use them.
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from errands.cli.common import (
    EXIT,
    JsonOpt,
    NoInputOpt,
    fail,
    out,
    server_for_home,
    settings,
    who,
    with_harness,
)
from errands.cli.render import STATE_STYLE, safe
from errands.errors import ErrandsError, UserError

if TYPE_CHECKING:
    from errands.core.states import ErrandView
    from errands.engine.schedules import RunNow, ScheduleRequest
    from errands.harness import Harness

__all__ = ["register"]

schedule_app = typer.Typer(
    help="Schedules: an errand that starts on a cron expression, an interval or once, "
    "while errands up runs. Watches are schedules too: ls, show, pause, resume, rm and "
    "run-now cover both.",
    no_args_is_help=True,
)
watch_app = typer.Typer(
    help="Watches: a page checked without the model, on an interval, that starts an "
    "errand only when it has new items (the first check records what is there).",
    no_args_is_help=True,
)


class CatchUp(StrEnum):
    one = "one"
    all = "all"
    skip = "skip"


class Overlap(StrEnum):
    skip = "skip"
    allow = "allow"


# the API's field -> the option a person typed (an error names what they can fix)
OPTION = {
    "name": "NAME",
    "text": "TEXT",
    "cron": "--cron",
    "tz": "--tz",
    "every": "--every",
    "at": "--at",
    "url": "--url",
    "select": "--select",
    "json_path": "--json-path",
    "headers": "--header",
    "model": "--model",
    "max_cost_usd": "--max-cost",
    "daily_usd": "--daily",
    "max_steps": "--max-steps",
    "tools": "--tool",
}

NameArg = Annotated[str, typer.Argument(help="The schedule's (or watch's) name.")]
TextArg = Annotated[str, typer.Argument(help="What each run should do, in plain words.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="PROVIDER:MODEL for every run (default: errands.toml's), pinned now."
    ),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option("--max-cost", help="Each run's budget in USD (it stops before passing it)."),
]
DailyOpt = Annotated[
    float | None,
    typer.Option(
        "--daily", help="A cap in USD on what every run of it spends per day (your time zone)."
    ),
]
ToolsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tool", help="Each run may use only these tools (repeat it; default: every tool)."
    ),
]
PlanOpt = Annotated[
    bool,
    typer.Option(
        "--plan",
        help="Each run in plan mode: the model never reads untrusted content (a watch's "
        "items, pages, files); see docs/security.md.",
    ),
]
MaxStepsOpt = Annotated[
    int | None, typer.Option("--max-steps", help="Each run's step limit (default: errands.toml's).")
]
EveryHelp = "An interval: 30s, 15m, 1h30m, 1d (at least 1s)."


def local_time(ts: float | None, zone: str) -> str:
    """:func:`errands.core.localtime.local_time` (imported when a time is shown)."""
    from errands.core.localtime import local_time as shown

    return shown(ts, zone)


def _one_line(exc: ErrandsError) -> str:
    """The error, naming the option a person typed rather than the API's field."""
    text = " ".join(str(exc).split())
    field = getattr(exc, "field", None)
    if isinstance(field, str) and field in OPTION and text.startswith(f"{field}: "):
        return f"{OPTION[field]}: {text[len(field) + 2 :]}"
    return text


def _run(fn: Any, *, write: bool = True) -> Any:
    """:func:`with_harness`, with a refusal named by its option (one line, exit 2)."""

    async def go(h: Harness) -> Any:
        try:
            return await fn(h)
        except ErrandsError as exc:
            raise UserError(_one_line(exc)) from None

    return with_harness(go, write=write)


def _zone() -> str:
    try:
        return settings().timezone
    except ErrandsError:
        return "local"


def _no_server_hint() -> None:
    if server_for_home() is None:
        out.print(
            "[dim]no errands up runs for this home: schedules and watches fire only while "
            "it runs (errands up)[/dim]"
        )


def _added(request: ScheduleRequest, as_json: bool) -> None:
    from errands.engine.schedules import add_schedule as add_operation
    from errands.engine.schedules import schedule_info

    async def go(h: Harness) -> tuple[dict[str, Any], str]:
        await add_operation(h.store, h.settings, request, by=who(), known_tools=h.tool_names())
        info = await schedule_info(h.store, request.name.strip())
        return info.as_dict(full=True), h.settings.timezone

    shown, zone = _run(go)
    if as_json:
        sys.stdout.write(json.dumps(shown) + "\n")
        return
    name, first = safe(shown["name"]), local_time(shown["next_at"], zone)
    if shown["kind"] == "watch":
        out.print(
            f"watch {name} added: {safe(shown['when'])} on {safe(shown['url'])}; the first "
            f"check ({first}) records what is there, later ones start an errand only for "
            "new items"
        )
    else:
        out.print(f"schedule {name} added: {safe(shown['when'])}; next run {first}")
    _no_server_hint()


# -------------------------------------------------------------------- adding


@schedule_app.command("add")
def add(
    name: NameArg,
    text: TextArg,
    cron: Annotated[
        str | None,
        typer.Option(
            "--cron", help="A cron expression, 5 fields: '0 8 * * 1-5' is 08:00 on weekdays."
        ),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option(
            "--tz", help="The time zone of --cron and --at (default: timezone in errands.toml)."
        ),
    ] = None,
    every: Annotated[str | None, typer.Option("--every", help=EveryHelp)] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Once, at this time: 2026-12-08T09:00 (in --tz) or with an offset (+01:00).",
        ),
    ] = None,
    model: ModelOpt = None,
    max_cost: MaxCostOpt = None,
    daily: DailyOpt = None,
    max_steps: MaxStepsOpt = None,
    tools: ToolsOpt = None,
    plan: PlanOpt = False,
    catch_up: Annotated[
        CatchUp,
        typer.Option(
            "--catch-up",
            help="Slots missed while errands was down: one run for them all, all, or skip.",
        ),
    ] = CatchUp.one,
    overlap: Annotated[
        Overlap,
        typer.Option(
            "--overlap", help="A slot that falls while the previous run goes on: skip or allow."
        ),
    ] = Overlap.skip,
    as_json: JsonOpt = False,
) -> None:
    """Add a schedule: each slot starts a new errand that does TEXT.

    Give one of --cron (with --tz), --every or --at. Example: errands schedule add
    morning --cron '0 8 * * 1-5' --tz Europe/Paris "summarise my board".
    """
    given = {"cron": cron, "every": every, "at": at}
    chosen = [k for k, v in given.items() if v is not None]
    if len(chosen) != 1:
        fail(
            "give one of --cron, --every or --at"
            if not chosen
            else f"give one of --cron, --every or --at, not {' and '.join('--' + k for k in chosen)}"
        )
    from errands.engine.schedules import ScheduleRequest

    request = ScheduleRequest(
        name=name,
        kind=chosen[0],
        text=text,
        cron=cron,
        tz=tz,
        every=every,
        at=at,
        model=model,
        max_cost_usd=max_cost,
        daily_usd=daily,
        max_steps=max_steps,
        tools=tools,
        mode="plan" if plan else "default",
        catch_up=catch_up.value,
        overlap=overlap.value,
    )
    _added(request, as_json)


def _headers(pairs: list[str] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs or []:
        header, sep, value = pair.partition("=")
        if not sep or not header.strip():
            fail(
                "--header: write HEADER=secret:NAME (e.g. Authorization=secret:BOARD_TOKEN), "
                f"not {pair!r}"
            )
        found[header.strip()] = value.strip()
    return found


@watch_app.command("add")
def watch_add(
    name: NameArg,
    text: Annotated[str, typer.Argument(help="What to do with the new items, in plain words.")],
    url: Annotated[str, typer.Option("--url", help="The page to watch (http or https).")],
    every: Annotated[str, typer.Option("--every", help=EveryHelp)],
    select: Annotated[
        str | None,
        typer.Option("--select", help="A CSS selector: each match is one item (e.g. '.listing')."),
    ] = None,
    json_path: Annotated[
        str | None,
        typer.Option(
            "--json-path", help="A JSONPath for a JSON page: each match (array element) an item."
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            help="A header sent with each check, its value a secret: 'Authorization=secret:NAME' "
            "(NAME declared in [secrets] of errands.toml with the hosts it may go to; never "
            "shown to the model).",
        ),
    ] = None,
    model: ModelOpt = None,
    max_cost: MaxCostOpt = None,
    daily: DailyOpt = None,
    max_steps: MaxStepsOpt = None,
    tools: ToolsOpt = None,
    plan: PlanOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a watch: check URL every DURATION without the model; new items start an errand.

    With neither --select nor --json-path, each line of the page's visible text is an
    item. The first check records what is there; an errand starts only for items not
    seen in the last 7 days, and is given only those, as untrusted content.
    """
    from errands.engine.schedules import ScheduleRequest

    request = ScheduleRequest(
        name=name,
        kind="watch",
        text=text,
        every=every,
        url=url,
        select=select,
        json_path=json_path,
        headers=_headers(header),
        model=model,
        max_cost_usd=max_cost,
        daily_usd=daily,
        max_steps=max_steps,
        tools=tools,
        mode="plan" if plan else "default",
    )
    _added(request, as_json)


# -------------------------------------------------------------------- looking


def _state(shown: dict[str, Any]) -> str:
    state = str(shown["state"])
    style = {"active": "green", "paused": "dim", "erroring": "bold red", "done": "dim"}[state]
    errors = f" ({shown['errors']})" if state == "erroring" else ""
    return f"[{style}]{state}{errors}[/{style}]"


def _next(shown: dict[str, Any], zone: str) -> str:
    if shown["paused"]:
        return "— (paused)"
    if shown.get("retry_at"):
        return f"retry {local_time(shown['retry_at'], zone)}"
    return local_time(shown["next_at"], zone)


def _last(shown: dict[str, Any], *, with_id: bool = True) -> str:
    if not shown["last_run"]:
        return "—"
    state = str(shown["last_run_state"] or "gone")
    style = STATE_STYLE.get(state, "")
    return (
        f"{shown['last_run']} [{style}]{state}[/{style}]"
        if style
        else f"{shown['last_run']} {state}"
    )


def _today(shown: dict[str, Any]) -> str:
    spent = f"${shown['spent_today_usd']:.4f}"
    return f"{spent} of ${shown['daily_usd']:.2f}" if shown["daily_usd"] is not None else spent


def schedules_table(rows: list[dict[str, Any]], zone: str, width: int = 120) -> Table:
    """One line a schedule; under 120 columns without *when* and the last run's id
    (``errands schedule show NAME`` has them)."""
    wide = width >= 120
    table = Table(header_style="bold")
    table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=24)
    if wide:
        table.add_column("when", overflow="ellipsis", no_wrap=True, max_width=40)
    table.add_column("state", no_wrap=True)
    table.add_column("next run", no_wrap=True)
    table.add_column("last run", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    table.add_column("today", no_wrap=True)
    for shown in rows:
        runs = str(shown["runs"])
        if shown["kind"] == "watch" and wide:
            runs += f" [dim]/ {shown['checks']} checks[/dim]"
        elif shown["skipped"] and wide:
            runs += f" [dim]({shown['skipped']} skipped)[/dim]"
        cells = [
            safe(shown["name"]),
            _state(shown),
            _next(shown, zone),
            _last(shown, with_id=wide),
            runs,
            _today(shown),
        ]
        if wide:
            cells.insert(1, safe(shown["when"]))
        table.add_row(*cells)
    return table


def _list(as_json: bool, kinds: tuple[str, ...] | None) -> None:
    from errands.engine.schedules import schedule_infos

    async def go(h: Harness) -> list[dict[str, Any]]:
        infos = await schedule_infos(h.store)
        return [i.as_dict(full=False) for i in infos if kinds is None or i.row.spec.kind in kinds]

    rows: list[dict[str, Any]] = _run(go, write=False)
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
    elif not rows:
        what = "watches" if kinds == ("watch",) else "schedules"
        out.print(
            f'No {what} yet. Try [bold]errands schedule add NAME --every 1h "…"[/bold] or '
            '[bold]errands watch add NAME --url URL --every 1h "…"[/bold].'
        )
    else:
        out.print(schedules_table(rows, _zone(), out.width))


@schedule_app.command("ls")
def ls(as_json: JsonOpt = False) -> None:
    """Every schedule and watch: when, state, next run (your time zone), last run, cost today."""
    _list(as_json, None)


@watch_app.command("ls")
def watch_ls(as_json: JsonOpt = False) -> None:
    """Every watch (errands schedule ls lists schedules too)."""
    _list(as_json, ("watch",))


def _grid(pairs: list[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for key, value in pairs:
        grid.add_row(key, value)
    return grid


def _detail(shown: dict[str, Any], zone: str) -> list[tuple[str, str]]:
    spec = shown["spec"]
    kind = "watch" if shown["kind"] == "watch" else "schedule"
    pairs = [
        (kind, safe(shown["name"])),
        ("when", safe(shown["when"])),
        ("state", _state(shown)),
        ("does", safe(shown["text"])),
        ("model", safe(shown["model"])),
        ("next run", _next(shown, zone)),
    ]
    if shown["last_error"]:  # (a page's words, or a server's: shown, never obeyed)
        pairs.append(("last error", f"[red]{safe(shown['last_error'])}[/red]"))
    if shown.get("note"):
        pairs.append(("waiting", f"[yellow]{safe(shown['note'])}[/yellow]"))
    if kind == "watch":
        extract = (
            f"CSS {safe(shown['select'])}"
            if shown["select"]
            else f"JSONPath {safe(shown['json_path'])}"
            if shown["json_path"]
            else "each line of its text"
        )
        pairs += [
            ("url", safe(shown["url"])),
            ("items", extract),
            ("checks", f"{shown['checks']}, {shown['changes']} with new items"),
            ("last check", local_time(shown["last_check_at"], zone)),
        ]
        if spec.get("headers"):
            pairs.append(
                ("headers", safe(", ".join(f"{k}: {v}" for k, v in spec["headers"].items())))
            )
    runs = f"{shown['runs']}" + (f", {shown['skipped']} slots skipped" if shown["skipped"] else "")
    limits = []
    if shown["max_cost_usd"] is not None:
        limits.append(f"at most ${shown['max_cost_usd']:.2f} a run")
    if spec.get("max_steps") is not None:
        limits.append(f"{spec['max_steps']} steps a run")
    if spec.get("tools") is not None:
        pairs.append(("tools", safe(", ".join(spec["tools"])) or "none"))
    if spec.get("mode") == "plan":
        pairs.append(("mode", "plan (the model never reads untrusted content)"))
    pairs += [
        ("runs", runs),
        ("cost today", _today(shown) + (f" ({', '.join(limits)})" if limits else "")),
        ("catch up", f"{spec['catch_up']} · overlap {spec['overlap']}"),
    ]
    if shown["last_run"]:
        pairs.append(("last run", _last(shown)))
        if shown["last_run_result"]:
            result = " ".join(str(shown["last_run_result"]).split())
            pairs.append(("its result", safe(result[:300])))
    return pairs


def _recent_table(recent: list[dict[str, Any]], zone: str, width: int) -> Table:
    """The newest slots: the run each started (its state and cost), or why it was skipped."""
    table = Table(title="newest runs", title_justify="left", header_style="bold")
    for column in ("slot", "outcome"):
        table.add_column(column, no_wrap=True)
    # (the other columns and the borders take about 64 columns; the reason gets the rest)
    why = max(13, width - 64)
    table.add_column("errand, or why not", no_wrap=True, overflow="ellipsis", max_width=why)
    for column in ("state", "cost"):
        table.add_column(column, no_wrap=True)
    for r in recent:
        started = r["outcome"] != "skipped"
        table.add_row(
            local_time(r["slot"], zone),
            r["outcome"] if started else f"skipped {r['count']}",
            (r["errand_id"] or "") if started else f"[dim]{safe(r['reason'])}[/dim]",
            r["state"] or "",
            f"${r['cost_usd']:.4f}" if r["cost_usd"] is not None else "",
        )
    return table


@schedule_app.command("show")
def show(name: NameArg, as_json: JsonOpt = False) -> None:
    """A schedule or watch: next slot, newest runs with state and cost, cost today, last error."""
    from errands.engine.schedules import schedule_info

    async def go(h: Harness) -> tuple[dict[str, Any], str]:
        return (await schedule_info(h.store, name)).as_dict(full=True), h.settings.timezone

    shown, zone = _run(go, write=False)
    if as_json:
        sys.stdout.write(json.dumps(shown) + "\n")
        return
    out.print(_grid(_detail(shown, zone)))
    if shown["recent"]:
        out.print(_recent_table(shown["recent"], zone, out.width))


# -------------------------------------------------------------------- changing


def _change(name: str, operation: Any, as_json: bool) -> tuple[dict[str, Any], str]:
    """Pause or resume *name*; its JSON (printed with --json) and the person's zone."""
    from errands.engine.schedules import schedule_info

    async def go(h: Harness) -> tuple[dict[str, Any], str]:
        await operation(h.store, name)
        return (await schedule_info(h.store, name)).as_dict(full=True), h.settings.timezone

    shown, zone = _run(go)
    if as_json:
        sys.stdout.write(json.dumps(shown) + "\n")
    return shown, zone


@schedule_app.command("pause")
def pause(name: NameArg, as_json: JsonOpt = False) -> None:
    """Pause a schedule or watch: its slots start nothing until resumed."""
    from errands.engine.schedules import pause_schedule

    _change(name, pause_schedule, as_json)
    if not as_json:
        out.print(
            f"{safe(name)} paused: no slot starts a run until errands schedule resume {safe(name)}"
        )


@schedule_app.command("resume")
def resume(name: NameArg, as_json: JsonOpt = False) -> None:
    """Resume it from its next slot after now (slots missed while paused are not run)."""
    from errands.engine.schedules import resume_schedule

    shown, zone = _change(name, resume_schedule, as_json)
    if not as_json:
        out.print(
            f"{safe(name)} resumed: next run {local_time(shown['next_at'], zone)} "
            "(the slots that fell while it was paused are not run)"
        )


@schedule_app.command("rm")
def rm(name: NameArg, as_json: JsonOpt = False) -> None:
    """Remove a schedule or watch; the errands it started stay."""
    from errands.engine.schedules import remove_schedule

    async def go(h: Harness) -> int:
        runs = (await h.store.schedule(name)).status.runs
        await remove_schedule(h.store, name)
        return runs

    runs = _run(go)
    if as_json:
        sys.stdout.write(json.dumps({"removed": name, "runs": runs}) + "\n")
    else:
        kept = f"; its {runs} run{'s' if runs != 1 else ''} stay, as errands" if runs else ""
        out.print(f"{safe(name)} removed{kept}")


# -------------------------------------------------------------------- run now


QueueOpt = Annotated[
    bool,
    typer.Option(
        "--queue",
        help="With no server running: only queue the run (errands up, or errands resume ID, "
        "runs it) instead of running it here.",
    ),
]


@schedule_app.command("run-now")
def run_now_command(
    name: NameArg, as_json: JsonOpt = False, queue: QueueOpt = False, no_input: NoInputOpt = False
) -> None:
    """Start a run now (a watch: check it now). Through the server when one runs (it
    claims the run at once); otherwise the run goes on here, in the foreground, like
    errands run (--queue: leave it for errands up).

    Prints the errand's id first. Exit codes when it runs here: those of errands run.
    """
    from errands.engine.schedules import RunNow, run_now
    from errands.server.schemas import SCHEDULE_NAME

    server = server_for_home()
    if server is not None:
        if not re.fullmatch(SCHEDULE_NAME, name):  # (the server would say only "pattern")
            fail(f"no schedule named {name!r} (errands schedule ls lists them)")
        try:
            said = server.call("POST", f"/api/schedules/{quote(name, safe='')}/run")
        except ErrandsError as exc:
            fail(str(exc))
        done = RunNow(**said)
        if as_json:
            sys.stdout.write(json.dumps({**done.as_dict(), "via": server.url}) + "\n")
            return
        out.print(
            safe(done.detail) + (" [dim](the server runs it now)[/dim]" if done.errand_id else "")
        )
        if done.errand_id:
            page = f"{server.url.rstrip('/')}/errands/{done.errand_id}"
            out.print(f"[dim]follow it: errands show {done.errand_id} · {page}[/dim]")
        return
    from errands.cli.live import finish, foreground, interactive
    from errands.core.errand import Errand

    async def go(h: Harness) -> tuple[RunNow, ErrandView | None]:
        done = await run_now(h.store, h.settings, name)
        if not done.errand_id or queue:
            return done, None
        if not as_json:
            out.print(f"{safe(done.detail)} [dim](no server runs: running it here)[/dim]")
        view = await foreground(
            h, done.errand_id, as_json=as_json, interactive=interactive(no_input, as_json)
        )
        return done, view

    done, view = _run(go)
    if as_json:  # (one shape, wherever it ran: the run, and the errand when it ran here)
        ran = {"errand": Errand.of(view).row()} if view is not None else {}
        sys.stdout.write(json.dumps({**done.as_dict(), "via": None, **ran}) + "\n")
        if view is not None and EXIT.get(view.state, 0):
            raise typer.Exit(EXIT[view.state])
        return
    if view is not None:
        finish(view, as_json=False)
        return
    out.print(safe(done.detail))
    if done.errand_id:
        out.print(
            f"[dim]queued: errands up runs it, or run it here: errands resume {done.errand_id}[/dim]"
        )


# `errands watch ls|show|pause|resume|rm|run-now`: the same commands (watches are schedules)
watch_app.command("show")(show)
watch_app.command("pause")(pause)
watch_app.command("resume")(resume)
watch_app.command("rm")(rm)
watch_app.command("run-now")(run_now_command)


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")
    app.add_typer(watch_app, name="watch")
