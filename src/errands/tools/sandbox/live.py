"""A command's output as it comes: decoded, redacted, and handed on at safe cuts.

The shell tool's result is the durable record; this is the live view of the same output
(the inbox shows it while the command runs). What leaves here has been through the same
redactor as the result, and never in pieces that would let a secret through in halves:
text is handed on only up to a **safe cut**, a place no spelling of a secret can span --

- after a newline, when no secret holds a newline (then no spelling does: the escaped
  spellings write a newline as an escape, :mod:`errands.store.redact`);
- otherwise (a long line, or a secret with a newline in it), only where
  :attr:`LiveStream.hold` characters -- more than the longest spelling of any secret --
  follow, and only if redacting the two sides apart gives what redacting them together
  does (no secret spans the cut).

What has not reached a safe cut waits for more output or for the end, when the rest goes
out whole (redacted like the result, a secret cut off at the end included). Live output
stops where the result's output is cut off (``Limits.output`` bytes of each stream).
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Callable, Iterable

from errands.tools.sandbox.secrets import Redact

__all__ = ["LONG_LINE", "LiveOutput", "LiveStream", "OutputSink", "spelling_room"]

OutputSink = Callable[[str, str], None]  # (stream name, redacted text)

LONG_LINE = 4096  # characters without a newline after which a line is cut up anyway
# the longest spelling of a character the redactor knows (a 4-byte UTF-8 character
# percent-encoded: 12 characters)
_WIDEST = 12


def spelling_room(secrets: Iterable[str]) -> int:
    """More characters than the longest spelling of any of *secrets* can take."""
    return max((len(s) for s in secrets), default=0) * _WIDEST + 16


class LiveStream:
    """One stream (stdout or stderr) of one command: :meth:`feed` it bytes as they are
    read, :meth:`close` it at the end; *sink* gets ``(name, text)`` with text redacted."""

    def __init__(
        self,
        name: str,
        sink: OutputSink,
        redact: Redact,
        secrets: Iterable[str] = (),
        limit: int = 200_000,
    ) -> None:
        values = [s for s in secrets if s]
        self.name = name
        self.sink = sink
        self.redact = redact
        self.hold = spelling_room(values)
        self.by_line = not any("\n" in v or "\r" in v for v in values)
        self.limit = limit
        self.fed = 0
        self.pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._broken = False

    def feed(self, chunk: bytes) -> None:
        if self._broken or self.fed >= self.limit:
            return
        chunk = chunk[: self.limit - self.fed]
        self.fed += len(chunk)
        self.pending += self._decoder.decode(chunk)
        cut = self.safe_cut(self.pending)
        if cut > 0:
            self._send(self.redact(self.pending[:cut]))
            self.pending = self.pending[cut:]

    def close(self, total: int | None = None) -> None:
        """The rest, whole; with *total* (the bytes the stream wrote), a note when the
        live view stopped at the cap."""
        self.pending += self._decoder.decode(b"", final=True)
        rest, self.pending = self.pending, ""
        if rest:
            self._send(self.redact(rest))
        if total is not None and total > self.fed:
            self._send(f"\n[{self.name} cut off after {self.fed} bytes; {total - self.fed} more]")

    def safe_cut(self, text: str) -> int:
        """Where *text* may be cut (0: nowhere yet); see the module docstring."""
        if self.by_line:
            cut = text.rfind("\n") + 1
            if cut > 0 or len(text) <= LONG_LINE:
                return cut
        cut = len(text) - self.hold
        if cut <= 0:
            return 0
        head, tail = text[:cut], text[cut:]
        if self.redact(head) + self.redact(tail) != self.redact(text):
            return 0  # a secret spans the cut: wait for more (or the end)
        return cut

    def _send(self, text: str) -> None:
        try:
            self.sink(self.name, text)
        except Exception:  # a broken viewer never breaks the command: stop showing it
            self._broken = True


class LiveOutput:
    """Both streams of one command, and the end of it."""

    stream_class = LiveStream  # (tests pass a control that cuts anywhere)

    def __init__(
        self, sink: OutputSink, redact: Redact, secrets: Iterable[str], limit: int
    ) -> None:
        values = list(secrets)
        self.sink = sink
        self.streams = {
            name: self.stream_class(name, sink, redact, values, limit)
            for name in ("stdout", "stderr")
        }

    def __call__(self, name: str, chunk: bytes) -> None:
        self.streams[name].feed(chunk)

    def end(self, totals: dict[str, int], status: str) -> None:
        for name, stream in self.streams.items():
            stream.close(totals.get(name))
        with contextlib.suppress(Exception):
            self.sink("exit", status)
