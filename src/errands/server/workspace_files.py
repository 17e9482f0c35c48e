"""An errand's workspace, read-only, for the inbox's files page.

Confined exactly as the file tools are (:func:`errands.tools.workspace.locate_inside`):
a path is resolved with every link followed and refused unless it lies inside the
workspace, then opened one component at a time without following a link. The listing
walks the workspace without following links (a link is shown with its target, never
followed); a file is read by the ``read_file`` tool's own code (text only, the first
256 KiB).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from errands.tools.builtin.files import LIST_CAP, SKIPPED_DIRS, read_file
from errands.tools.tool import ToolContext, ToolError
from errands.tools.workspace import PathRefused, locate_inside

__all__ = ["Entry", "FileText", "Listing", "list_workspace", "read_workspace_file"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the workspace
    kind: str  # file | dir | link | special
    size: int | None = None
    target: str | None = None  # a link's target (not followed)
    skipped: bool = False  # a directory not descended into (.git, node_modules, ...)


@dataclass(frozen=True)
class Listing:
    entries: list[Entry]
    more: bool  # stopped at LIST_CAP entries
    problem: str | None = None  # why nothing could be listed


@dataclass(frozen=True)
class FileText:
    path: str
    text: str | None  # None: refused or not shown
    problem: str | None = None
    status: int = 200  # 403 outside the workspace, 404 no such file


def list_workspace(workspace: Path) -> Listing:
    """Every entry under *workspace* (at most :data:`LIST_CAP`), links not followed."""
    found: list[Entry] = []
    more = False
    try:
        with locate_inside(workspace, ".") as loc:
            top = os.open(
                loc.name, os.O_RDONLY | _O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC, dir_fd=loc.dir_fd
            )
            try:
                for dirpath, dirnames, filenames, dir_fd in os.fwalk(
                    ".", dir_fd=top, follow_symlinks=False
                ):
                    dirnames.sort()
                    base = "" if dirpath == "." else dirpath[2:] + "/"
                    for name in sorted([*dirnames, *filenames]):
                        if len(found) >= LIST_CAP:
                            more = True
                            break
                        found.append(_entry(base + name, name, dir_fd))
                    if more:
                        break
                    dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
            finally:
                os.close(top)
    except FileNotFoundError:
        return Listing([], False, f"the workspace {workspace} does not exist (any more)")
    except (PathRefused, OSError) as exc:
        return Listing([], False, f"the workspace cannot be listed: {exc}")
    found.sort(key=lambda e: e.path)
    return Listing(found, more)


def _entry(path: str, name: str, dir_fd: int) -> Entry:
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return Entry(path, "special")
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return Entry(path, "link", target=target)
    if stat.S_ISDIR(info.st_mode):
        return Entry(path, "dir", skipped=name in SKIPPED_DIRS)
    if stat.S_ISREG(info.st_mode):
        return Entry(path, "file", size=info.st_size)
    return Entry(path, "special")


def read_workspace_file(workspace: Path, errand_id: str, path: str) -> FileText:
    """The text of *path* in *workspace*, as ``read_file`` would give it to the model."""
    ctx = ToolContext(errand_id=errand_id, seq=0, idempotency_key="", workspace=workspace)
    try:
        return FileText(path, read_file(path, ctx).text)
    except PathRefused as exc:
        if "does not exist" in str(exc):
            return FileText(path, None, str(exc), status=404)
        return FileText(path, None, f"refused: {exc}", status=403)
    except ToolError as exc:
        missing = str(exc).startswith("no such file")
        return FileText(path, None, str(exc), status=404 if missing else 200)
    except OSError as exc:
        status = 404 if exc.errno == errno.ENOENT else 200
        return FileText(path, None, f"cannot read {path}: {exc.strerror}", status=status)
