"""The server's files in ``ERRANDS_HOME``: ``server.json`` (where a running server is)
and ``server-token`` (its token, mode 0600).

Kept free of web-framework imports: the CLI reads these on every decision command.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from errands.errors import ErrandsError
from errands.registry import pid_alive

__all__ = [
    "SERVER_FILE",
    "TOKEN_FILE",
    "ServerRefused",
    "is_loopback",
    "live_server",
    "load_token",
    "pid_alive",
]

SERVER_FILE = "server.json"
TOKEN_FILE = "server-token"


class ServerRefused(ErrandsError):
    """The server cannot start (or be reached) as asked; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def live_server(home: Path) -> dict[str, Any] | None:
    """The running server's ``server.json`` for this home; None if none, or stale (its
    process is gone, e.g. after a crash)."""
    try:
        info = json.loads((home / SERVER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    if not isinstance(info.get("url"), str) or not pid_alive(info["pid"]):
        return None
    return info


def load_token(home: Path, *, create: bool) -> tuple[str | None, bool]:
    """The server token from ``home/server-token``; created (mode 0600) if *create*.

    Returns (token, created). Refuses (:class:`ServerRefused`) a token file that other
    users can read, or that this user cannot read, saying how to fix it.
    """
    path = home / TOKEN_FILE
    try:
        info = path.stat()
    except FileNotFoundError:
        if not create:
            return None, False
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_token(home, create=False)  # another process made it just now
        except OSError as exc:
            raise ServerRefused(
                f"cannot create the token file {path}: {exc.strerror}; "
                "check that ERRANDS_HOME is yours and writable"
            ) from None
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return token, True
    except OSError as exc:
        raise ServerRefused(f"cannot read the token file {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ServerRefused(
            f"the token file {path} can be read by other users (mode {mode:04o}); "
            f"fix it with: chmod 600 {path}"
        )
    try:
        token = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ServerRefused(
            f"cannot read the token file {path}: {exc.strerror}; "
            "run errands as the user who owns ERRANDS_HOME"
        ) from None
    except UnicodeDecodeError:
        token = ""
    if len(token) < 16:
        raise ServerRefused(
            f"the token file {path} does not hold a usable token; "
            "delete it and errands up makes a new one"
        )
    return token, False
