"""``errands backup PATH`` and ``errands restore PATH``: the store, copied safely.

See :mod:`errands.store.backup` (and docs/store.md, "Backing up") for why a plain copy
of a live database is not a backup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from errands.cli.common import JsonOpt, fail, out, settings
from errands.errors import ErrandsError

__all__ = ["register"]


def backup(
    path: Annotated[Path, typer.Argument(help="The file to write the backup to.")],
    force: Annotated[bool, typer.Option("--force", help="Replace PATH if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy the store to PATH: consistent even while errands up runs (SQLite's online
    backup), one self-contained file, checked before it is given its name.

    The store holds every errand's log, blobs and budgets; the workspaces' files and
    the config (errands.toml, policy.toml) are not in it.
    """
    from errands.store import backup as backups

    try:
        s = settings()
        if s.store_url is not None:
            fail(
                "the store is a PostgreSQL database: back it up with pg_dump, or your"
                " provider's backups (docs/scale-out.md); errands backup copies SQLite stores"
            )
        db = s.db_path
        copied = backups.backup(db, path, force=force)
    except ErrandsError as exc:
        fail(str(exc))
    if as_json:
        print(
            json.dumps(
                {
                    "backup": str(copied.path),
                    "errands": copied.errands,
                    "events": copied.events,
                    "bytes": copied.size,
                }
            )
        )
        return
    out.print(
        f"backed up {db} to {copied.path}: {copied.errands} errands, {copied.events} events, "
        f"{copied.size:,} bytes (quick_check ok)",
        highlight=False,
    )


def restore(
    path: Annotated[Path, typer.Argument(help="A backup made with errands backup.")],
    as_json: JsonOpt = False,
) -> None:
    """Make the backup at PATH this home's store. Refused while errands up runs; the
    backup is checked first (quick_check, schema); the store it replaces is kept beside
    it as errands.sqlite.before-restore-TIME."""
    from errands.store import backup as backups

    try:
        db = settings().db_path
        copied = backups.restore(path, db)
    except ErrandsError as exc:
        fail(str(exc))
    aside = str(copied.aside) if copied.aside else None
    if as_json:
        print(
            json.dumps(
                {
                    "restored": str(path),
                    "store": str(db),
                    "errands": copied.errands,
                    "events": copied.events,
                    "previous": aside,
                }
            )
        )
        return
    out.print(
        f"restored {path} into {db}: {copied.errands} errands, {copied.events} events"
        + (f"; the store it replaced is at {aside}" if aside else ""),
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command()(backup)
    app.command()(restore)
