"""``errands models`` (what is configured) and ``errands doctor`` (does it work: the
store, and every provider).

Neither ever prints a key: only whether it is set, under which variable, and from where.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from errands.cli.common import JsonOpt, fail, out, settings
from errands.cli.render import safe
from errands.errors import ErrandsError

if TYPE_CHECKING:
    from pathlib import Path

    from errands.config import Settings
    from errands.models.inventory import Check

__all__ = ["register"]


def _limits(limits: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in limits.items()) or "unlimited"


def models(as_json: JsonOpt = False) -> None:
    """List the model providers, named endpoints, chains and the default model, and which
    keys are present (never their values)."""
    from errands.models.inventory import inventory

    try:
        inv = inventory(settings())
    except ErrandsError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(inv, indent=2))
        return
    out.print(f"[bold]default model:[/bold] {escape(inv['default_model'])}")
    out.print("[bold]providers:[/bold]")
    for p in inv["providers"]:
        tag = " (named endpoint)" if p["named"] and p["name"] != p["kind"] else ""
        key = p["key"]
        if key == "set":
            key = f"set (from {p['key_from']})"
        elif key == "missing":
            key = "missing ($" + " or $".join(p["key_names"]) + ")"
        line = (
            f"  {p['name']}{tag}: kind {p['kind']}, {p['base_url']} [{p['base_url_from']}], "
            f"key {key}, sdk {p['sdk']}, limits {_limits(p['limits'])}"
        )
        if p["models_in_use"]:
            line += ", in use: " + ", ".join(p["models_in_use"])
        out.print(escape(line), highlight=False)
    out.print("[bold]chains:[/bold]" + ("" if inv["chains"] else " none"))
    for name, members in inv["chains"].items():
        out.print(escape(f"  chain:{name} = {', '.join(members)}"), highlight=False)
    out.print(escape(f"keyring: {inv['keyring']}"), highlight=False)
    out.print("[bold]context windows:[/bold] (docs/context.md)")
    for spec, window in inv["context_windows"].items():
        shown = f"{window:,} tokens" if window else "not known (never compacted)"
        out.print(escape(f"  {spec}: {shown}"), highlight=False)


def doctor(
    as_json: JsonOpt = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for each endpoint.", min=0.1)
    ] = 5.0,
) -> None:
    """Check the store (SQLite's full integrity_check, the schema, who may read it) and each
    configured provider: key present, endpoint reachable and accepting the key, model
    names known. One line per problem, saying what to fix; exit 1 if any."""
    from errands.cli.permcheck import permissions_check
    from errands.cli.storecheck import store_check
    from errands.models.inventory import doctor as run_doctor

    try:
        s = settings()
        if s.store_url is not None:  # PostgreSQL: the server, migrations, replication
            checks = [_postgres_check(s.store_url), *run_doctor(s, timeout=timeout)]
        else:
            checks = [_store_check(s.db_path), *run_doctor(s, timeout=timeout)]
            checks.insert(1, store_check(s))  # can the store write right now?
        checks.insert(2, permissions_check(s))  # can other users read it?
        checks.append(_sandbox_check(s))  # can the shell run here?
        checks.extend(_email_checks(s))  # can errands send and read mail ([email])?
    except ErrandsError as exc:
        fail(str(exc))
    problems = [p for c in checks for p in c.problems]
    if as_json:
        print(json.dumps({"ok": not problems, "checks": [c.to_json() for c in checks]}, indent=2))
    else:
        for c in checks:
            if c.ok:
                detail = "; ".join(c.notes) or "ok"
                out.print(safe(f"ok    {c.subject}: {detail}"), highlight=False)
            for problem in c.problems:
                out.print("[bold red]FIX[/bold red]   " + safe(problem), highlight=False)
        summary = f"{len(problems)} problem(s)" if problems else "everything checks out"
        out.print(safe(summary), highlight=False)
    if problems:
        raise typer.Exit(1)


def _postgres_check(url: str) -> Check:
    """The PostgreSQL store (docs/scale-out.md): reachable, its version and migrations,
    and what its commits are durable on (synchronous standbys)."""
    from errands.models.inventory import Check
    from errands.store.postgres.health import check

    found = check(url)
    return Check("store (PostgreSQL)", found.ok, found.problems, found.notes)


def _sandbox_check(s: Settings) -> Check:
    """The shell's sandbox: bubblewrap, user namespaces, the pids cgroup, the egress bridge."""
    from errands.models.inventory import Check
    from errands.tools.sandbox.doctor import sandbox_report

    report = sandbox_report(egress_wanted=bool(s.network.egress_allow))
    return Check(report.subject, report.ok, report.problems, report.notes)


def _email_checks(s: Settings) -> list[Check]:
    """SMTP and IMAP of ``[email]``: where each failed (DNS, TLS, auth, mailbox)."""
    if s.email is None:
        return []
    from errands.models.inventory import Check
    from errands.tools.email import check_libraries

    check_libraries()
    from errands.tools.email.doctor import email_report

    checks = [Check(r.subject, r.ok, r.problems, r.notes) for r in email_report(s.email)]
    note = _mail_in(s)
    if note and len(checks) > 1:
        checks[1].notes.append(note)
    return checks


def _mail_in(s: Settings) -> str | None:
    """Where the mail reader is, and how many mails it refused (from the store)."""
    email = s.email
    if email is None or not email.allowed_senders or not s.db_path.exists():
        return None
    import asyncio

    from errands.channels.email.reader import CursorStore
    from errands.store import open_store

    async def read() -> str | None:
        store = open_store(s, read_only=True)
        try:
            if not isinstance(store, CursorStore):
                return None
            cursor = await store.mail_cursor(email.inbox_folder)
        finally:
            await store.close()
        if cursor is None:
            return "mail in: not read yet (errands up reads it)"
        return (
            f"mail in: up to UID {cursor.last_uid}; {cursor.refused} refused "
            "(not an allowed sender, or not authenticated: see the log)"
        )

    return asyncio.run(read())


def _store_check(db: Path) -> Check:
    """The store, checked in full (O(size of the file): doctor only)."""
    from errands.models.inventory import Check
    from errands.store import health

    report = health.check(db, full=True)
    return Check("store file", report.ok, problems=report.problems, notes=[str(db), *report.notes])


def register(app: typer.Typer) -> None:
    app.command()(models)
    app.command()(doctor)
