"""Live updates for the server-sent event streams.

The store calls :meth:`Hub.committed` after each durable commit (in this process);
the runner (through :class:`LiveText`) calls :meth:`Hub.text` for each streamed model
text delta and :meth:`Hub.text_reset` when a retry or fallback takes the text of a
failed attempt back, and :meth:`Hub.output` for what a running tool prints (the shell's
output, redacted by the tool). With ``errands up --workers N`` the workers' runners tell
the same through their relay (:mod:`errands.server.relay`), and :attr:`Hub.on_watch` tells
the workers which errands a stream follows. Subscribers are woken, not fed: a stream reads what is new from
the store itself, so a slow client can never make the server hold an unbounded queue,
and a woken stream always sends exactly the committed log. A tool's live output is
held per subscriber up to a cap (what is past it is dropped and said so), and the latest
of each running call is kept for a stream that opens while it runs; neither is ever
written to the store -- the call's result is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from errands.store import Store

__all__ = ["Hub", "LiveText", "Output", "Subscription"]

MAX_BUFFERED_TEXT = 64_000  # characters of model text held for one slow subscriber
MAX_BUFFERED_OUTPUT = 64_000  # characters of a tool's live output held for one subscriber
MAX_RECENT_OUTPUT = 16_000  # characters of a running call's output a new stream is given


@dataclass
class Output:
    """A piece of a running tool call's live output: *stream* is ``stdout``, ``stderr``,
    ``exit`` (its status line, at the end) or ``dropped`` (what a slow viewer missed)."""

    seq: int  # the call's intent
    stream: str
    text: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "stream": self.stream, "text": self.text}


def _append(outputs: list[Output], piece: Output) -> None:
    """Add *piece*, merged into the last one when it continues it (fewer SSE events)."""
    last = outputs[-1] if outputs else None
    if last is not None and (last.seq, last.stream) == (piece.seq, piece.stream):
        last.text += piece.text
    else:
        outputs.append(Output(piece.seq, piece.stream, piece.text))


class Subscription:
    def __init__(self, errand_id: str | None) -> None:
        self.errand_id = errand_id
        self.wake = asyncio.Event()
        self.texts: list[str] = []
        self.text_chars = 0
        self.text_reset = False  # the text sent so far is to be discarded
        self.changed: set[str] = set()
        self.outputs: list[Output] = []
        self.output_chars = 0
        self.output_dropped = 0

    def take_outputs(self) -> list[Output]:
        """The live output since the last take, merged; what the cap dropped, said."""
        outputs, dropped = self.outputs, self.output_dropped
        self.outputs, self.output_chars, self.output_dropped = [], 0, 0
        if dropped and outputs:
            outputs.append(Output(outputs[-1].seq, "dropped", f"[{dropped} characters not shown]"))
        return outputs

    def take_texts(self) -> tuple[bool, list[str]]:
        """(was the text sent so far reset?, the deltas since)."""
        reset, texts = self.text_reset, self.texts
        self.text_reset, self.texts, self.text_chars = False, [], 0
        return reset, texts

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed


class Hub:
    def __init__(self, store: Store) -> None:
        self._by_errand: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._recent: dict[str, list[Output]] = {}  # errand -> its running call's output
        self.closing = asyncio.Event()
        # told (errand, True) when a stream starts following an errand no other stream
        # follows, (errand, False) when the last one stops (the workers' relay)
        self.on_watch: Callable[[str, bool], None] | None = None
        store.subscribe(self.committed)

    def committed(self, errand_id: str, seq: int) -> None:
        for sub in self._by_errand.get(errand_id, ()):
            sub.wake.set()
        for sub in self._all:
            sub.changed.add(errand_id)
            sub.wake.set()

    def text(self, errand_id: str, delta: str) -> None:
        for sub in self._by_errand.get(errand_id, ()):
            if sub.text_chars < MAX_BUFFERED_TEXT:
                sub.texts.append(delta)
                sub.text_chars += len(delta)
            sub.wake.set()

    def text_reset(self, errand_id: str) -> None:
        """The text streamed so far for the current model call is to be discarded."""
        for sub in self._by_errand.get(errand_id, ()):
            sub.texts, sub.text_chars, sub.text_reset = [], 0, True  # unsent: just drop it
            sub.wake.set()

    def output(self, errand_id: str, seq: int, stream: str, text: str) -> None:
        """A running tool call's live output (already redacted by the tool)."""
        piece = Output(seq, stream, text)
        recent = self._recent.setdefault(errand_id, [])
        if stream == "exit" or (recent and recent[0].seq != seq):
            recent.clear()  # the call ended (or a newer one runs): nothing to replay
        if stream != "exit":
            _append(recent, piece)
            while len(recent) > 1 and sum(len(o.text) for o in recent) > MAX_RECENT_OUTPUT:
                recent.pop(0)
            if recent and len(recent[0].text) > MAX_RECENT_OUTPUT:
                recent[0].text = recent[0].text[-MAX_RECENT_OUTPUT:]
        else:
            del self._recent[errand_id]
        for sub in self._by_errand.get(errand_id, ()):
            if sub.output_chars + len(text) <= MAX_BUFFERED_OUTPUT or stream == "exit":
                _append(sub.outputs, piece)
                sub.output_chars += len(text)
            else:
                sub.output_dropped += len(text)
            sub.wake.set()

    def recent_output(self, errand_id: str) -> list[Output]:
        """The latest output of the errand's running call (for a stream opening now)."""
        return [Output(o.seq, o.stream, o.text) for o in self._recent.get(errand_id, ())]

    def watched_errands(self) -> set[str]:
        """The errands some stream follows."""
        return set(self._by_errand)

    def watched(self, errand_id: str) -> bool:
        """Does any stream follow this errand? (Safe to ask from another thread.)"""
        return errand_id in self._by_errand

    @contextlib.contextmanager
    def subscribe(self, errand_id: str | None) -> Iterator[Subscription]:
        """Wake-ups for one errand (or, with None, for every errand) while in the block."""
        sub = Subscription(errand_id)
        if errand_id is None:
            self._all.add(sub)
        else:
            following = self._by_errand.setdefault(errand_id, set())
            following.add(sub)
            if len(following) == 1 and self.on_watch is not None:
                self.on_watch(errand_id, True)
        try:
            yield sub
        finally:
            if errand_id is None:
                self._all.discard(sub)
            else:
                subs = self._by_errand.get(errand_id)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._by_errand[errand_id]
                        if self.on_watch is not None:
                            self.on_watch(errand_id, False)

    async def wait(self, sub: Subscription, timeout: float) -> None:
        """Until *sub* is woken, the hub closes, or *timeout* passes."""
        if not sub.wake.is_set() and not self.closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), timeout)
        sub.wake.clear()

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_errand.values())

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self.closing.set()
        for sub in self._all:
            sub.wake.set()
        for subs in self._by_errand.values():
            for sub in subs:
                sub.wake.set()


class LiveText:
    """The runner's text listener: hands deltas and resets from the runner's thread to
    the hub on the API's event loop, for errands a stream follows."""

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop

    def __call__(self, errand_id: str, delta: str, /) -> None:
        if self.hub.watched(errand_id):  # each hand-over costs a wake-up of the API loop
            self.loop.call_soon_threadsafe(self.hub.text, errand_id, delta)

    def reset(self, errand_id: str) -> None:
        if self.hub.watched(errand_id):
            self.loop.call_soon_threadsafe(self.hub.text_reset, errand_id)

    def output(self, errand_id: str, seq: int, stream: str, text: str, /) -> None:
        """A tool's live output (errands.engine.dispatch.ShowsOutput): always handed
        over, so that a page opened while the call runs gets its latest output."""
        self.loop.call_soon_threadsafe(self.hub.output, errand_id, seq, stream, text)
