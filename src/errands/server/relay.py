"""The relay between ``errands up`` and the workers it starts: what only a running
process knows, told at once.

A worker's commits reach the server through the store (:class:`~errands.server.workers.
ChangeFeed`); what is never stored does not: the model's text as it streams and a running
tool's output (the shell's lines), and -- the other way -- a person's decision, which a
worker would otherwise see only at its next look at the store. Each worker ``errands up``
starts gets one end of a Unix socket pair (an inherited file descriptor, ``errands worker
--relay FD``; nothing listens on a path or a port) and the server keeps the other.

Frames are lines of JSON arrays (JSON escapes newlines, so a line is a frame):

- worker -> server: ``["h"]`` it serves (it claims errands from now on: the server is
  ready, ``/readyz``), ``["t", errand, delta]`` model text, ``["r", errand]`` the text so far
  taken back (a retry), ``["o", errand, seq, stream, text]`` a tool's live output -- what
  :class:`~errands.server.hub.LiveText` hands the hub in one process, already redacted at
  the source (the shell's :mod:`~errands.tools.sandbox.live`, the same as in one process);
- server -> worker: ``["w"]`` claim runnable errands now (a decision, a message, a new
  errand), ``["+", errand]`` / ``["-", errand]`` a stream follows / no longer follows the
  errand (model text is sent only for errands followed, as in one process).

All of it is ephemeral: nothing is written to the store, and a frame the other side cannot
take now is dropped, never queued without bound (:data:`MAX_PENDING`): a tool's output that
was dropped is said (``[N characters not shown]``), like the hub's cap for a slow viewer.
The server's end closing (the server is gone) stops the worker. A worker started by hand
(``errands worker`` without ``--relay``) has no relay: its errands' streams show the
committed log only, and it sees decisions at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["MAX_FRAME", "MAX_PENDING", "Link", "WorkerRelay", "frame"]

MAX_FRAME = 1 << 20  # bytes of one frame the reader accepts
PIECE = 64_000  # characters of text per frame (escaped, well under MAX_FRAME)
MAX_PENDING = 1 << 20  # bytes waiting in a socket's buffer past which live frames are dropped

log = logging.getLogger("errands.server")


def frame(*parts: Any) -> bytes:
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)] or [""]


async def _connect(
    sock: socket.socket,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock.setblocking(False)
    return await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)


async def _frames(reader: asyncio.StreamReader) -> Any:
    """Each frame read, decoded; ends at EOF or a frame past :data:`MAX_FRAME`."""
    while True:
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError, ConnectionError) as exc:
            log.warning("relay: a frame could not be read (%s); the relay stops", exc)
            return
        if not line:
            return
        try:
            parts = json.loads(line)
        except ValueError:
            log.warning("relay: a frame that is not JSON was skipped")
            continue
        if isinstance(parts, list) and parts and isinstance(parts[0], str):
            yield parts


class LiveSink(Protocol):
    """Where the server puts what a worker tells (the hub)."""

    def text(self, errand_id: str, delta: str) -> None: ...

    def text_reset(self, errand_id: str) -> None: ...

    def output(self, errand_id: str, seq: int, stream: str, text: str) -> None: ...


class Link:
    """The server's end of one worker's relay."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None
        self.frames = 0  # frames read from the worker
        self.serving = False  # the worker said it serves

    async def serve(self, hub: LiveSink, watched: Callable[[], set[str]]) -> None:
        """Hand what the worker tells to *hub* until the worker's end closes; first tell
        the worker which errands are followed (*watched*)."""
        reader, self.writer = await _connect(self.sock)
        try:
            for errand_id in watched():
                self.send("+", errand_id)
            async for parts in _frames(reader):
                self.frames += 1
                try:
                    self._take(hub, parts)
                except (TypeError, ValueError, IndexError):
                    log.warning("relay: a malformed %r frame was skipped", parts[0][:8])
        finally:
            self.close()

    def _take(self, hub: LiveSink, parts: list[Any]) -> None:
        kind = parts[0]
        if kind == "h":
            self.serving = True
        elif kind == "t":
            hub.text(_str(parts[1]), _str(parts[2]))
        elif kind == "r":
            hub.text_reset(_str(parts[1]))
        elif kind == "o":
            seq = parts[2]
            if not isinstance(seq, int):
                raise TypeError("seq")
            hub.output(_str(parts[1]), seq, _str(parts[3]), _str(parts[4]))

    def send(self, *parts: Any) -> None:
        writer = self.writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > MAX_PENDING:
            return  # (a worker that reads nothing: it looks at the store at its next poll)
        writer.write(frame(*parts))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        else:
            self.sock.close()


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


class WorkerRelay:
    """The worker's end: the runner's text listener (model text, resets, tools' output:
    :class:`~errands.engine.dispatch.ShowsOutput`), and the server's wake-ups."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.watched: set[str] = set()  # errands a stream on the server follows
        self.on_wake: Callable[[], None] = lambda: None
        self.on_gone: Callable[[], None] = lambda: None
        self.dropped: dict[str, tuple[int, int]] = {}  # errand -> (call seq, characters)
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._listening: asyncio.Task[None] | None = None

    @classmethod
    def from_fd(cls, fd: int) -> WorkerRelay:
        return cls(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd))

    async def open(self) -> None:
        self._reader, self._writer = await _connect(self.sock)
        self._listening = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        assert self._reader is not None
        async for parts in _frames(self._reader):
            kind = parts[0]
            if kind == "w":
                self.on_wake()
            elif kind == "+" and len(parts) > 1 and isinstance(parts[1], str):
                self.watched.add(parts[1])
            elif kind == "-" and len(parts) > 1:
                self.watched.discard(parts[1])
        log.debug("the server's relay closed: the server is gone")  # (its stderr is gone too)
        self.on_gone()

    def serving(self) -> None:
        """Tell the server this worker serves (claims errands) from now on."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame("h"))

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        else:
            self.sock.close()

    def _room(self) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        return writer.transport.get_write_buffer_size() <= MAX_PENDING

    # -- the runner's listener (called on the worker's event loop) --------------------------

    def __call__(self, errand_id: str, delta: str, /) -> None:
        if errand_id in self.watched and self._room():
            assert self._writer is not None
            for piece in _pieces(delta):
                self._writer.write(frame("t", errand_id, piece))

    def reset(self, errand_id: str) -> None:
        if errand_id in self.watched and self._room():
            assert self._writer is not None
            self._writer.write(frame("r", errand_id))

    def output(self, errand_id: str, seq: int, stream: str, text: str, /) -> None:
        """Always sent (a page opened while the call runs is given its latest output);
        what the socket cannot take now is dropped and said."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if stream != "exit" and not self._room():
            was_seq, chars = self.dropped.get(errand_id, (seq, 0))
            self.dropped[errand_id] = (seq, chars + len(text) if was_seq == seq else len(text))
            return
        lost = self.dropped.pop(errand_id, None)
        if lost is not None and lost[0] == seq:
            writer.write(frame("o", errand_id, seq, "dropped", f"[{lost[1]} characters not shown]"))
        for piece in _pieces(text):
            writer.write(frame("o", errand_id, seq, stream, piece))
