"""Streamed text, and how a wrapper says "discard what this call streamed so far".

The provider clients call the :data:`~errands.models.protocol.TextSink` they are given
with text deltas, nothing else. A wrapper that starts the reply over --
:class:`~errands.models.wrappers.retry.RetryingModel` before another attempt,
:class:`~errands.models.wrappers.fallback.FallbackModel` before the next member of its chain --
must first take back the failed attempt's text, which has already reached the person.
It does so through a :class:`TextStream`: a sink that also has :meth:`~TextStream.reset`.

- Each wrapper hands its inner model an :class:`AttemptText` around the sink it got,
  which notes whether anything streamed; before starting over it calls
  :meth:`AttemptText.reset`, which passes the reset outwards only if something did.
  Wrappers nest (a chain of retrying models): an inner reset goes out through every
  outer ``AttemptText`` to the loop's sink.
- The loop's sink for an errand is an :class:`ErrandText`: deltas go to the loop's text
  listener as ``listener(errand_id, delta)``; a reset goes to ``listener.reset(errand_id)``
  if the listener has one (:class:`ResettableListener`). The server's listener sends an
  ``event: text_reset`` on the errand's stream; the CLI's marks the text as discarded.

A sink without ``reset`` (a plain function) still works: it only cannot be told, so it
shows the failed attempt's text followed by the new attempt's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from errands.core.faults import fault
from errands.models.protocol import TextSink

__all__ = ["AttemptText", "ErrandText", "ResettableListener", "TextStream", "attempt_text"]


@runtime_checkable
class TextStream(Protocol):
    """A text sink that can be told to discard what the current call streamed so far."""

    def __call__(self, delta: str, /) -> None: ...

    def reset(self) -> None: ...


@runtime_checkable
class ResettableListener(Protocol):
    """A loop text listener that can be told to discard an errand's partial text."""

    def __call__(self, errand_id: str, delta: str, /) -> None: ...

    def reset(self, errand_id: str) -> None: ...


class AttemptText:
    """The sink a wrapper gives its inner model: forwards to *outer*, noting whether
    anything streamed since the last reset."""

    __slots__ = ("outer", "streamed")

    def __init__(self, outer: TextSink) -> None:
        self.outer = outer
        self.streamed = False

    def __call__(self, delta: str, /) -> None:
        if delta:
            self.streamed = True
        self.outer(delta)

    def reset(self) -> None:
        """Take back what streamed since the last reset, if anything did."""
        if self.streamed and isinstance(self.outer, TextStream):
            self.outer.reset()
        self.streamed = False


def attempt_text(on_text: TextSink | None) -> AttemptText | None:
    """The sink for a wrapper's attempts (None stays None: the caller wants no stream)."""
    return None if on_text is None else AttemptText(on_text)


class ErrandText:
    """The sink of one errand's model call, built by the loop around its text listener."""

    __slots__ = ("errand_id", "listener")

    def __init__(self, listener: Callable[[str, str], None], errand_id: str) -> None:
        self.listener = listener
        self.errand_id = errand_id

    def __call__(self, delta: str, /) -> None:
        fault("mid_stream")
        self.listener(self.errand_id, delta)

    def reset(self) -> None:
        if isinstance(self.listener, ResettableListener):
            self.listener.reset(self.errand_id)
