"""Errand workspaces, and confining model-given paths to them.

Every errand works in one directory. By default that is a fresh directory under
``ERRANDS_HOME/workspaces``; a person may name another one, but only under a workspace
root (``[workspaces] roots``; ``ERRANDS_HOME/workspaces`` always is one), never in a
system directory (``/etc``, ``/usr``, ...: :func:`errands.config.system_directory`),
and never ``/``, their home directory (or a directory holding it), or a directory
holding ``ERRANDS_HOME`` -- the store, the config and other errands' workspaces live
there. Symbolic links are resolved before any of these checks. A workspace errands
creates is mode 0700.

A path the model gives is confined with :func:`resolve_inside`: it is resolved with
every symbolic link followed (also for a file that does not exist yet, and for a
symlinked directory anywhere in the path) and refused unless the result lies inside
the workspace. Resolving first and opening later leaves a window in which a directory
could be swapped for a symlink; :func:`locate_inside` closes it by walking the
*resolved* path one component at a time from a descriptor of the workspace with
``O_NOFOLLOW``, so a symlink that appears after the check is refused, not followed.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from errands.config import system_directory
from errands.errors import UserError
from errands.private import private_dir
from errands.tools.canonical import PathError, resolve_path
from errands.tools.tool import ToolError

if TYPE_CHECKING:
    from errands.config import Settings

__all__ = [
    "Located",
    "PathRefused",
    "WorkspaceRefused",
    "locate_inside",
    "make_workspace",
    "outside_roots",
    "resolve_inside",
]

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_ERRAND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class WorkspaceRefused(UserError, ValueError):
    """A person-given workspace is unsafe or unusable; the message says why in one sentence."""


class PathRefused(ToolError):
    """A model-given path leads outside the workspace (or cannot be used); told to the model."""

    kind = "path_refused"


def make_workspace(settings: Settings, errand_id: str, requested: str | Path | None = None) -> Path:
    """The errand's workspace directory, created if needed, as an absolute real path.

    Without *requested* it is ``settings.workspaces / errand_id``. A *requested* one is
    refused (:class:`WorkspaceRefused`) if it is ``/``, the person's home directory or
    one of its ancestors, ``ERRANDS_HOME`` or one of its ancestors, anything inside
    ``ERRANDS_HOME`` other than a directory below its ``workspaces`` folder, outside
    every workspace root (:func:`outside_roots`), or a file.
    """
    if not _ERRAND_ID.match(errand_id) or errand_id in {".", ".."}:
        raise WorkspaceRefused(f"{errand_id!r} cannot name a workspace directory.")
    errands_home = Path(os.path.realpath(settings.home))
    if requested is None:
        private_dir(settings.workspaces)
        path = Path(os.path.realpath(settings.workspaces / errand_id))
        private_dir(path)
        return path

    text = str(requested)
    if not text.strip() or "\x00" in text:
        raise WorkspaceRefused("The workspace must be a directory path.")
    path = Path(os.path.realpath(Path(text).expanduser()))
    user_home = Path(os.path.realpath(Path.home()))
    if path == Path(path.anchor):
        raise WorkspaceRefused(
            f"The workspace {text!r} is the root directory; choose a project directory."
        )
    if path == user_home or user_home.is_relative_to(path):
        raise WorkspaceRefused(
            f"The workspace {text!r} is (or contains) your home directory; choose a project directory."
        )
    if path == errands_home or errands_home.is_relative_to(path):
        raise WorkspaceRefused(
            f"The workspace {text!r} contains ERRANDS_HOME ({errands_home}), where errands keeps its own data."
        )
    workspaces = Path(os.path.realpath(settings.workspaces))
    if path.is_relative_to(errands_home) and not (
        path.is_relative_to(workspaces) and path != workspaces
    ):
        raise WorkspaceRefused(
            f"The workspace {text!r} is inside ERRANDS_HOME ({errands_home}) but not below its workspaces folder."
        )
    refusal = outside_roots(path, settings)
    if refusal is not None:
        raise WorkspaceRefused(f"The workspace {text!r} {refusal}.")
    if path.exists() and not path.is_dir():
        raise WorkspaceRefused(f"The workspace {text!r} is a file, not a directory.")
    try:
        private_dir(path)
    except OSError as exc:
        raise WorkspaceRefused(
            f"The workspace {text!r} cannot be created: {exc.strerror}."
        ) from None
    return path


def outside_roots(path: Path, settings: Settings) -> str | None:
    """Why the resolved *path* may not be a workspace for its place, or None: it is a
    system directory (unless below ``ERRANDS_HOME/workspaces``, wherever the home is),
    or lies under none of the workspace roots. Completes "The workspace ... "."""
    roots = settings.allowed_workspace_roots
    if path.is_relative_to(roots[0]):
        return None
    why = system_directory(path)
    if why is not None:
        return f"is refused: {why}"
    if any(path.is_relative_to(root) for root in roots[1:]):
        return None
    return (
        "is not under a workspace root; workspaces may be under "
        + ", ".join(str(r) for r in roots)
        + " (add a directory to [workspaces] roots in errands.toml)"
    )


def resolve_inside(workspace: Path, path: str) -> Path:
    """The real absolute path *path* names inside *workspace*, or :class:`PathRefused`.

    *path* may be relative to the workspace or absolute (then it must lie inside).
    Every symbolic link is followed, including a dangling one in the last component
    (so a write through it is judged by where it would land) and symlinked directories
    in the middle; ``..`` is resolved after the links, as the OS would. The result has
    no symlinks left in it at the time of the call.
    """
    try:  # the one resolution, shared with the policy (errands.tools.canonical)
        return Path(resolve_path(workspace, path)[1])
    except PathError as exc:
        raise PathRefused(str(exc)) from None


@dataclass(frozen=True)
class Located:
    """A confined path, opened up to its parent directory without following any symlink.

    ``dir_fd`` is a descriptor of the parent directory (valid inside the ``with`` block
    of :func:`locate_inside`); ``name`` is the last component, to be used with
    ``dir_fd=`` (``"."`` when the path is the workspace itself); ``relative`` is the
    path relative to the workspace, ``"."`` for the workspace.
    """

    dir_fd: int
    name: str
    path: Path
    relative: str


@contextmanager
def locate_inside(workspace: Path, path: str, *, create_parents: bool = False) -> Iterator[Located]:
    """Resolve *path* inside *workspace* and open its parent directory race-free.

    Each directory on the way is opened relative to the previous one with
    ``O_NOFOLLOW``: a component that became a symlink after :func:`resolve_inside`
    checked it is refused. With *create_parents*, missing directories are created
    (inside the workspace only). Open the last component with ``dir_fd=`` and
    ``O_NOFOLLOW`` too.
    """
    resolved = resolve_inside(workspace, path)
    root = Path(os.path.realpath(workspace))
    parts: tuple[str, ...]
    if resolved == root:
        base, parts = root, ()
    elif resolved.is_relative_to(root):
        base, parts = root, resolved.relative_to(root).parts
    else:  # resolve_inside refuses this; a second check costs nothing
        raise PathRefused(f"{path!r} is outside the workspace")
    relative = "/".join(parts) or "."
    fd = os.open(base, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        for part in parts[:-1]:
            fd = _step(fd, part, relative, create_parents)
        yield Located(dir_fd=fd, name=parts[-1] if parts else ".", path=resolved, relative=relative)
    finally:
        os.close(fd)


def _step(fd: int, part: str, relative: str, create: bool) -> int:
    """Open directory *part* under *fd* without following a symlink."""
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise PathRefused(f"{relative!r}: directory {part!r} does not exist") from None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise PathRefused(f"{relative!r}: cannot open {part!r}: {exc.strerror}") from None
        if _is_symlink(fd, part):
            raise PathRefused(
                f"{relative!r}: {part!r} is a symbolic link that was not resolved inside the "
                "workspace (it changed, or it loops); refusing to follow it"
            ) from None
        raise PathRefused(f"{relative!r}: {part!r} is not a directory") from None
    with suppress(FileExistsError):
        os.mkdir(part, 0o755, dir_fd=fd)
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise PathRefused(f"{relative!r}: cannot open {part!r}: {exc.strerror}") from None


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False
