"""``errands mcp``: the configured MCP servers, their tools' pins, and approving them.

- ``errands mcp ls [--json]``: every server and each tool's state -- ``pinned``
  (offered), ``new``, ``changed``, ``removed``, ``refused``;
- ``errands mcp diff SERVER [--json]``: what changed since the pins, field by field;
- ``errands mcp approve SERVER [TOOL] [--digest D]``: pin what the server lists now.

Each command starts the servers it looks at (stdio ones as child processes) and stops
them when done; ``errands up`` reads the new pins within seconds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from errands.cli.common import JsonOpt, fail, out, who, with_harness
from errands.cli.render import safe, when

if TYPE_CHECKING:
    from errands.harness import Harness
    from errands.tools.mcp.toolset import McpToolset

__all__ = ["register"]

mcp_app = typer.Typer(
    help="MCP servers ([mcp.servers.NAME] in errands.toml): their tools, pinned over "
    "their whole definitions. A new or changed tool is not offered until you approve it.",
    no_args_is_help=True,
)

ServerArg = Annotated[str, typer.Argument(help="The server's name ([mcp.servers.NAME]).")]
STATE_STYLE = {
    "pinned": "green",
    "new": "yellow",
    "changed": "bold red",
    "removed": "dim",
    "refused": "bold red",
}


def _toolset(harness: Harness) -> McpToolset:
    if harness.mcp is None:
        fail(
            "no MCP servers are configured: add one to errands.toml, e.g.\n"
            '  [mcp.servers.files]\n  command = ["mcp-server-filesystem", "/srv/shared"]'
        )
    return harness.mcp


@mcp_app.command("ls")
def ls(as_json: JsonOpt = False) -> None:
    """Every MCP server, its tools, and each tool's state (pinned, new, changed,
    removed, refused)."""

    async def body(harness: Harness) -> list[Any]:
        return await _toolset(harness).reports()

    reports = with_harness(body)
    if as_json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
        return
    for report in reports:
        info = report.server_info or {}
        about = ", ".join(
            x
            for x in (
                f"protocol {report.protocol_version}" if report.protocol_version else "",
                " ".join(str(info.get(k, "")) for k in ("name", "version")).strip(),
            )
            if x
        )
        out.print(
            f"[bold]{safe(report.server)}[/bold]  {safe(report.transport)}"
            + (f"  [dim]({safe(about)})[/dim]" if about else ""),
            highlight=False,
        )
        if report.error:
            out.print(f"  [red]{safe(report.error)}[/red]", highlight=False)
        if not report.tools:
            out.print("  [dim](no tools)[/dim]")
            continue
        table = Table(header_style="bold", box=None, padding=(0, 2, 0, 2))
        for column in ("tool", "state", "pinned by", "when", "note"):
            table.add_column(column, no_wrap=column != "note")
        for t in report.tools:
            style = STATE_STYLE.get(t.state.value, "")
            table.add_row(
                safe(t.name),
                f"[{style}]{t.state.value}[/{style}]",
                safe(t.pin.pinned_by) if t.pin else "",
                when(t.pin.pinned_at) if t.pin else "",
                _note(t),
            )
        out.print(table)
    pending = sum(1 for r in reports for t in r.tools if t.state.value in ("new", "changed"))
    if pending:
        out.print(
            f"\n[yellow]{pending} tool(s) wait for review[/yellow]: errands mcp diff SERVER, "
            "then errands mcp approve SERVER [TOOL]"
        )


def _note(status: Any) -> str:
    if status.state.value == "refused":
        return safe(status.reason)
    if status.renamed_from:
        return f"probably {safe(status.renamed_from)} renamed"
    return ""


@mcp_app.command("diff")
def diff(server: ServerArg, as_json: JsonOpt = False) -> None:
    """What changed on SERVER since its tools were pinned, field by field (new tools
    in full)."""
    from errands.tools.mcp.service import diff_report, report_of

    async def body(harness: Harness) -> dict[str, Any]:
        return diff_report(await report_of(_toolset(harness), server))

    found = with_harness(body)
    if as_json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return
    _show_diff(found)


def _show_diff(found: dict[str, Any]) -> None:
    from errands.tools.mcp.pins import MISSING
    from errands.tools.mcp.service import show_value

    if found["error"]:
        out.print(f"[red]{safe(found['error'])}[/red]", highlight=False)
    if not found["tools"]:
        out.print(f"{safe(found['server'])}: every tool is as pinned")
        return
    for entry in found["tools"]:
        state = entry["state"]
        style = STATE_STYLE.get(state, "")
        out.print(
            f"[{style}]{state}[/{style}] [bold]{safe(entry['name'])}[/bold]  "
            f"[dim]{safe(entry['reason'])}[/dim]",
            highlight=False,
        )
        if entry.get("pinned_digest"):
            out.print(f"  pinned  {entry['pinned_digest']}", highlight=False)
        if entry.get("digest"):
            out.print(f"  listed  {entry['digest']}", highlight=False)
        for change in entry.get("changes", []):
            out.print(f"  [bold]{safe(change['path'])}[/bold]", highlight=False)
            before = show_value(change.get("before", MISSING))
            after = show_value(change.get("after", MISSING))
            out.print(f"    [red]- {safe(before)}[/red]", highlight=False)
            out.print(f"    [green]+ {safe(after)}[/green]", highlight=False)
        if "definition" in entry:
            text = json.dumps(entry["definition"], indent=2, ensure_ascii=True)
            for line in text.splitlines():
                out.print(f"    [green]+ {safe(line)}[/green]", highlight=False)


@mcp_app.command("approve")
def approve(
    server: ServerArg,
    tool: Annotated[
        str | None,
        typer.Argument(
            help="One tool (its name on the server); default: every new or changed one."
        ),
    ] = None,
    digest: Annotated[
        str | None,
        typer.Option(
            "--digest",
            help="The digest you reviewed (errands mcp diff): refuse if the server lists "
            "anything else now. Needs TOOL.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin what SERVER lists now (all its new and changed tools, or TOOL): errands
    offers them from then on, until their definitions change."""
    from errands.tools.mcp.service import approve as approve_tools

    if digest is not None and tool is None:
        fail("--digest needs the TOOL it is the digest of")

    async def body(harness: Harness) -> Any:
        return await approve_tools(
            _toolset(harness),
            harness.store,
            server,
            tool,
            by=who(),
            expect=None if digest is None else {str(tool): digest},
        )

    done = with_harness(body)
    if as_json:
        print(json.dumps(done.as_dict(), indent=2))
        return
    if not done.pinned and not done.dropped:
        out.print(f"{safe(server)}: nothing to approve; every tool is as pinned")
    for name, pinned_digest in done.pinned:
        out.print(f"pinned  mcp__{safe(server)}__{safe(name)}  {pinned_digest}", highlight=False)
    for name in done.dropped:
        out.print(f"dropped mcp__{safe(server)}__{safe(name)}  (no longer listed)", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(mcp_app, name="mcp")
