"""Fold snapshots: a :class:`~errands.core.progress.Progress` encoded at some sequence
number, so that an errand of 100,000 events resumes by folding only the events after it.

What is encoded, and how (docs/store.md, "Fold snapshots"):

- the **state**: the fold without its two long lists (the transcript and the labelled
  pieces), a few kilobytes however long the errand, with an *anchor* -- the type and time
  of the event at the snapshot's sequence number -- and a CRC-32 of the whole;
- the **parts**: the long lists in pieces, each encoded once, when it was new. The lists
  are :class:`Chain`\\ s, which remember which of their items are encoded already, so a
  new snapshot encodes only what was added since the last one (a few milliseconds per
  thousand events) and the store writes only the new parts. Each part's name carries its
  CRC-32.

Reading one back checks everything before it is trusted: the format (a digest of the
code of the fold: a snapshot written by other fold code is never read), every CRC, every
part present, and the anchor against the log (a log rewritten since -- a purge, a
compaction -- is caught). Any doubt is a full fold instead, never an error. A resumed
errand's lists keep their parts undecoded until they are first read (the next model call
reads the transcript; that call sends it whole anyway); appending to them meanwhile does
not decode them.

Parts and state are pickles read by an unpickler that builds only the classes of
``errands.core`` (and no function): a store file from elsewhere cannot run code through
them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import io
import pickle
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsIndex, TypeVar, overload

if TYPE_CHECKING:
    from errands.core.progress import Progress

__all__ = ["Chain", "Encoded", "decode", "encode", "fmt", "stored"]

T = TypeVar("T")
P = TypeVar("P", bound="Progress")

_PROTOCOL = 5
# the modules whose code decides what a fold is: a change to any of them is a new format
_FOLD_MODULES = (
    "errands.core.events",
    "errands.core.labels",
    "errands.core.messages",
    "errands.core.pieces",
    "errands.core.plan",
    "errands.core.progress",
    "errands.core.states",
    "errands.core.snapshot",
)
_BUILTINS = frozenset({"set", "frozenset"})


@functools.cache
def fmt() -> str:
    """The format of the snapshots this code writes and reads: a digest of the fold's code."""
    digest = hashlib.sha256(f"pickle{_PROTOCOL}".encode())
    for name in _FOLD_MODULES:
        path = getattr(importlib.import_module(name), "__file__", None)
        digest.update(Path(path).read_bytes() if path else name.encode())
    return "fold1:" + digest.hexdigest()[:24]


class _Unpickler(pickle.Unpickler):
    """Builds the classes of ``errands.core`` and two built-in containers; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module.startswith("errands.core.") and not name.startswith("_")) or (
            module == "builtins" and name in _BUILTINS
        ):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"a snapshot may not hold {module}.{name}")


def _loads(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


class Chain(list[T]):
    """A list that may hold its first items still encoded, and knows which are encoded.

    After a resume its head is the snapshot's parts, decoded when the list is first read;
    appending (the loop folding the tail) does not decode them, and ``len`` counts them.
    Any change other than adding at the end (a compaction replacing the transcript)
    decodes and forgets the parts: the next snapshot encodes the list afresh.
    """

    __slots__ = ("_hidden", "_hidden_parts", "_parts", "_stored")

    def __init__(self, items: Iterable[T] = ()) -> None:
        super().__init__(items)
        self._parts: list[tuple[str, bytes]] = []  # (name, bytes), covering the first items
        self._stored = 0  # how many of the parts the store has (written with a snapshot)
        self._hidden = 0  # how many first items are still encoded (in the first parts)
        self._hidden_parts = 0

    # ------------------------------------------------------------ parts

    @property
    def encoded(self) -> int:
        """How many of the first items the parts hold."""
        return sum(_count(name) for name, _ in self._parts)

    def fresh(self) -> list[T]:
        """The items no part holds yet (without decoding any)."""
        return list.__getitem__(self, slice(self.encoded - self._hidden, None))

    def encode(self, kind: str) -> tuple[list[tuple[str, bytes]], int]:
        """Encode the items added since the last call as one more part; return every part
        and how many of them the store has."""
        start = self.encoded
        new = self.fresh()
        if new:
            data = pickle.dumps(new, protocol=_PROTOCOL)
            self._parts.append((f"{kind}{start}-{start + len(new)}.{_crc(data)}", data))
        return list(self._parts), self._stored

    def stored(self, parts: Sequence[tuple[str, bytes]]) -> None:
        """The store has *parts* (as :meth:`encode` returned them) now."""
        if parts and len(self._parts) >= len(parts) and self._parts[len(parts) - 1] is parts[-1]:
            self._stored = max(self._stored, len(parts))

    @classmethod
    def of_parts(cls, parts: Sequence[tuple[str, bytes]]) -> Chain[T]:
        """The list the *parts* hold, decoded when first read (the parts were checked)."""
        chain: Chain[T] = cls()
        chain._parts = list(parts)
        chain._stored = len(parts)
        chain._hidden_parts = len(parts)
        chain._hidden = chain.encoded
        return chain

    def _load(self) -> None:
        if self._hidden:
            head = [x for _, data in self._parts[: self._hidden_parts] for x in _loads(data)]
            list.__setitem__(self, slice(0, 0), head)
            self._hidden = self._hidden_parts = 0

    def _changed(self) -> None:
        self._load()
        self._parts, self._stored = [], 0

    # ------------------------------------------------------------ the list, read

    def __len__(self) -> int:
        return list.__len__(self) + self._hidden

    def __iter__(self) -> Iterator[T]:
        self._load()
        return list.__iter__(self)

    def __reversed__(self) -> Iterator[T]:
        self._load()
        return list.__reversed__(self)

    @overload
    def __getitem__(self, i: SupportsIndex) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> list[T]: ...
    def __getitem__(self, i: SupportsIndex | slice) -> T | list[T]:
        self._load()
        return list.__getitem__(self, i)

    def __contains__(self, item: object) -> bool:
        self._load()
        return list.__contains__(self, item)

    def __eq__(self, other: object) -> bool:
        self._load()
        if isinstance(other, Chain):
            other._load()
        return list.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None

    def __repr__(self) -> str:
        self._load()
        return list.__repr__(self)

    def __add__(self, other: list[T]) -> list[T]:  # type: ignore[override]
        return list(self) + list(other)

    def __radd__(self, other: list[T]) -> list[T]:
        return list(other) + list(self)

    def index(self, *args: Any) -> int:
        self._load()
        return list.index(self, *args)

    def count(self, item: Any) -> int:
        self._load()
        return list.count(self, item)

    def copy(self) -> list[T]:
        self._load()
        return list.copy(self)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return (list, (list(self),))

    # ------------------------------------------------------------ the list, changed

    def __setitem__(self, i: Any, value: Any) -> None:
        self._changed()
        list.__setitem__(self, i, value)

    def __delitem__(self, i: Any) -> None:
        self._changed()
        list.__delitem__(self, i)

    def insert(self, i: SupportsIndex, item: T) -> None:
        self._changed()
        list.insert(self, i, item)

    def pop(self, i: SupportsIndex = -1) -> T:
        self._changed()
        return list.pop(self, i)

    def remove(self, item: T) -> None:
        self._changed()
        list.remove(self, item)

    def sort(self, *args: Any, **kwargs: Any) -> None:
        self._changed()
        list.sort(self, *args, **kwargs)

    def reverse(self) -> None:
        self._changed()
        list.reverse(self)

    def clear(self) -> None:
        self._changed()
        list.clear(self)

    def __imul__(self, n: SupportsIndex) -> Chain[T]:
        self._changed()
        list.__imul__(self, n)
        return self

    def __mul__(self, n: SupportsIndex) -> list[T]:
        return list(self) * int(n)

    __rmul__ = __mul__


def _count(name: str) -> int:
    start, end = name[1:].split(".", 1)[0].split("-")
    return int(end) - int(start)


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    """A snapshot made by :func:`encode`: what :meth:`Store.put_snapshot` takes (``seq``,
    ``state``, the names of ``parts`` and the bytes of those the store lacks), and the
    lists to tell once it is stored."""

    seq: int
    state: bytes
    parts: tuple[str, ...]
    new: dict[str, bytes]
    made: tuple[tuple[Chain[Any], list[tuple[str, bytes]]], ...]


def _chain(items: list[T]) -> Chain[T]:
    return items if isinstance(items, Chain) else Chain(items)


def encode(p: Progress, anchor: tuple[str, float]) -> Encoded:
    """Encode *p*; *anchor* is the type and time of the event at ``p.last_seq``.

    *p*'s two long lists become :class:`Chain`\\ s if they were not (the same items)."""
    p.messages = _chain(p.messages)
    p.pieces = _chain(p.pieces)
    made = []
    names: list[str] = []
    new: dict[str, bytes] = {}
    for kind, chain in (("m", p.messages), ("p", p.pieces)):
        parts, stored_count = chain.encode(kind)
        names.extend(name for name, _ in parts)
        new.update(parts[stored_count:])
        made.append((chain, parts))
    core = dataclasses.replace(p, messages=[], pieces=[])
    counts = (len(p.messages), len(p.pieces))
    payload = pickle.dumps((core, anchor, counts), protocol=_PROTOCOL)
    state = struct.pack(">I", zlib.crc32(payload)) + payload
    return Encoded(p.last_seq, state, tuple(names), new, tuple(made))


def stored(encoded: Encoded) -> None:
    """The store has *encoded* now: its lists need not send these parts again."""
    for chain, parts in encoded.made:
        chain.stored(parts)


def decode(
    seq: int, state: bytes, parts: Sequence[str], data: Mapping[str, bytes], cls: type[P]
) -> tuple[P, tuple[str, float]] | None:
    """The fold a snapshot holds and its anchor, or None if anything is amiss: a CRC that
    does not match, a part missing, another class of fold, counts that do not add up."""
    if len(state) < 4 or struct.unpack(">I", state[:4])[0] != zlib.crc32(state[4:]):
        return None
    chains: dict[str, list[tuple[str, bytes]]] = {"m": [], "p": []}
    for name in parts:
        body = data.get(name)
        if body is None or name[:1] not in chains or name.rsplit(".", 1)[-1] != _crc(body):
            return None
        chains[name[:1]].append((name, body))
    try:
        core, anchor, counts = _loads(state[4:])
    except Exception:  # (a checked CRC over bytes this code did not write: not ours)
        return None
    if type(core) is not cls or core.last_seq != seq:
        return None
    messages: Chain[Any] = Chain.of_parts(chains["m"])
    pieces: Chain[Any] = Chain.of_parts(chains["p"])
    if (len(messages), len(pieces)) != tuple(counts):
        return None
    core.messages, core.pieces = messages, pieces
    return core, (str(anchor[0]), float(anchor[1]))
