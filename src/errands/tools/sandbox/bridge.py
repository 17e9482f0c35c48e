"""The bridge inside the sandbox: its loopback port, forwarded to errands' egress proxy.

Run by the sandbox's own ``python3`` (standard library only, nothing of errands), as
``python3 -I -S bridge.py SOCKET PORT -- COMMAND...``: it listens on ``127.0.0.1:PORT``
in the sandbox's network namespace (which has nothing else), starts COMMAND, forwards
every connection to the unix socket SOCKET (errands' proxy, bound into the sandbox) and
exits with COMMAND's status when it ends. It decides nothing: the proxy does.

This file is bound into the sandbox read-only as it is (:data:`FILE`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["FILE", "pipe"]

FILE = Path(__file__).resolve()


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    spend: Callable[[int], bool] = lambda size: True,
) -> None:
    """Copy *reader* to *writer* until its end (then half-close *writer*), or until
    *spend* (told each chunk's size) says no more."""
    try:
        while chunk := await reader.read(65536):
            if not spend(len(chunk)):
                return
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def _forward(socket_path: str, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        ur, uw = await asyncio.open_unix_connection(socket_path)
    except OSError:
        w.close()
        return
    try:
        await asyncio.gather(pipe(r, uw), pipe(ur, w))
    finally:
        uw.close()
        w.close()


async def _main(socket_path: str, port: int, command: list[str]) -> int:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _forward(socket_path, r, w)

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        proc = await asyncio.create_subprocess_exec(*command)
        return await proc.wait()


def main(argv: list[str]) -> int:
    socket_path, port, sep, *command = argv
    if sep != "--" or not command:
        print("usage: bridge.py SOCKET PORT -- COMMAND...", file=sys.stderr)
        return 2
    code = asyncio.run(_main(socket_path, int(port), command))
    return 128 - code if code < 0 else code  # a signal, as a shell reports it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
