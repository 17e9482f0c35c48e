"""File tools confined to the errand's workspace: read_file, write_file, list_files.

Every path goes through :func:`errands.tools.workspace.locate_inside`: resolved with all
symlinks followed, refused if it leaves the workspace, then opened component by
component without following a symlink, so nothing swapped in after the check is
followed either. What a file holds may have come from anywhere, so what ``read_file``
and ``list_files`` return is labelled untrusted.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from errands.core.labels import Confidentiality, Integrity
from errands.tools.tool import Contract, ToolContext, ToolError, ToolOutput
from errands.tools.workspace import PathRefused, locate_inside

__all__ = [
    "LIST_CAP",
    "READ_CAP",
    "holds_content",
    "list_files",
    "read_file",
    "write_file",
]

READ_CAP = 256 * 1024  # bytes of one file shown to the model
LIST_CAP = 500  # entries listed at most
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv"})

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _open_error(path: str, exc: OSError) -> ToolError:
    if exc.errno == errno.ENOENT:
        return ToolError(f"no such file: {path}")
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return PathRefused(f"{path!r} became a symbolic link while it was being opened; refusing")
    if exc.errno == errno.EISDIR:
        return ToolError(f"{path} is a directory; use list_files to see what it holds")
    return ToolError(f"cannot open {path}: {exc.strerror}")


def _read_bytes(workspace: Path, path: str, cap: int) -> tuple[bytes, int, str]:
    """Up to *cap* bytes of the regular file *path*, its size, and its workspace-relative path."""
    with locate_inside(workspace, path) as loc:
        try:
            fd = os.open(
                loc.name, os.O_RDONLY | os.O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, dir_fd=loc.dir_fd
            )
        except OSError as exc:
            raise _open_error(path, exc) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ToolError(f"{path} is a directory; use list_files to see what it holds")
            if not stat.S_ISREG(info.st_mode):
                raise ToolError(f"{path} is not a regular file")
            chunks: list[bytes] = []
            remaining = cap
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 65536))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks), info.st_size, loc.relative
        finally:
            os.close(fd)


def read_file(path: str, ctx: ToolContext) -> ToolOutput:
    """Read a text file from the workspace.

    Files larger than 256 KiB are cut off, and the cut is marked. Binary files are not
    shown.

    Args:
        path: The file's path, relative to the workspace (for example `notes/todo.md`).
    """
    data, size, relative = _read_bytes(ctx.workspace, path, READ_CAP)
    if b"\x00" in data[:8192]:
        raise ToolError(f"{path} is a binary file ({size} bytes); read_file shows text only")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    truncated = size > len(data)
    try:
        text = decoder.decode(data, final=not truncated)
    except UnicodeDecodeError:
        raise ToolError(
            f"{path} is not UTF-8 text ({size} bytes); read_file shows text only"
        ) from None
    if truncated:
        text += f"\n[... cut off: the file has {size} bytes, only the first {len(data)} are shown]"
    return ToolOutput(
        text=text,
        integrity=Integrity.untrusted,
        confidentiality=Confidentiality.private,
        source=relative,
    )


def write_file(path: str, content: str, ctx: ToolContext) -> ToolOutput:
    """Write a text file in the workspace, replacing it if it exists.

    Missing parent directories are created. The file is replaced atomically: a reader
    sees either the old or the new content, never a mix.

    Args:
        path: The file's path, relative to the workspace (for example `out/report.md`).
        content: The complete new content of the file (UTF-8 text).
    """
    data = content.encode("utf-8")
    with locate_inside(ctx.workspace, path, create_parents=True) as loc:
        if loc.name == ".":
            raise ToolError(f"{path!r} is the workspace itself, not a file")
        mode = 0o644
        try:
            existing = os.lstat(loc.name, dir_fd=loc.dir_fd)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(existing.st_mode):
                raise ToolError(f"{path} is a directory; give a file path")
            if stat.S_ISREG(existing.st_mode):
                mode = stat.S_IMODE(existing.st_mode)
        temp = f".{loc.name}.{os.urandom(6).hex()}.tmp"
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC,
            mode,
            dir_fd=loc.dir_fd,
        )
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # rename replaces the last component itself; a symlink there is not followed
            os.rename(temp, loc.name, src_dir_fd=loc.dir_fd, dst_dir_fd=loc.dir_fd)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp, dir_fd=loc.dir_fd)
            raise
        with suppress(OSError):  # some filesystems cannot sync a directory
            os.fsync(loc.dir_fd)
        relative = loc.relative
    return ToolOutput(
        text=f"wrote {len(data)} bytes to {relative}",
        integrity=Integrity.trusted,
        confidentiality=Confidentiality.private,
        source=relative,
    )


def holds_content(args: Mapping[str, Any], ctx: ToolContext, output: ToolOutput) -> bool:
    """Postcondition of write_file: the file now holds exactly the content given."""
    expected = str(args["content"]).encode("utf-8")
    data, size, _ = _read_bytes(ctx.workspace, str(args["path"]), len(expected) + 1)
    return size == len(expected) and data == expected


WROTE_EXACTLY = Contract("the file holds exactly the content written", holds_content)


def list_files(path: str = ".", *, ctx: ToolContext) -> ToolOutput:
    """List the files under a directory of the workspace, recursively, with their sizes.

    Directories end with `/`; symbolic links are shown with their target and not
    followed. Version-control and dependency folders (`.git`, `node_modules`, ...)
    are listed but not descended into. At most 500 entries are listed.

    Args:
        path: The directory to list, relative to the workspace; `.` (the default) is the
            whole workspace.
    """
    found: list[tuple[str, str]] = []  # (path, description)
    more = False
    with locate_inside(ctx.workspace, path) as loc:
        try:
            top = os.open(
                loc.name,
                os.O_RDONLY | _O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC,
                dir_fd=loc.dir_fd,
            )
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise ToolError(f"{path} is a file, not a directory; use read_file") from None
            raise _open_error(path, exc) from None
        prefix = "" if loc.relative == "." else loc.relative + "/"
        try:
            for dirpath, dirnames, filenames, dir_fd in os.fwalk(
                ".", dir_fd=top, follow_symlinks=False
            ):
                dirnames.sort()
                base = "" if dirpath == "." else dirpath[2:] + "/"
                entries = sorted([(d, True) for d in dirnames] + [(f, False) for f in filenames])
                for name, is_dir in entries:
                    if len(found) >= LIST_CAP:
                        more = True
                        break
                    found.append((prefix + base + name, _describe(name, is_dir, dir_fd)))
                if more:
                    break
                dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
        finally:
            os.close(top)
        relative = loc.relative
    found.sort()
    lines = [where + shown for where, shown in found]
    if not lines:
        lines.append(f"({relative} is empty)")
    if more:
        lines.append(f"[... stopped after {LIST_CAP} entries; list a subdirectory to see more]")
    return ToolOutput(
        text="\n".join(lines),
        integrity=Integrity.untrusted,  # file names can carry text from anywhere
        confidentiality=Confidentiality.private,
        source=relative,
    )


def _describe(name: str, is_dir: bool, dir_fd: int) -> str:
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return "/" if is_dir else ""
    if stat.S_ISLNK(info.st_mode):
        try:
            return f" -> {os.readlink(name, dir_fd=dir_fd)}"
        except OSError:
            return " -> ?"
    if is_dir or stat.S_ISDIR(info.st_mode):
        return "/  (not listed)" if name in SKIPPED_DIRS else "/"
    if stat.S_ISREG(info.st_mode):
        return f"  {info.st_size}"
    return "  (special file)"
