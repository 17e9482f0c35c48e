"""Short, sortable identifiers for errands."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_errand_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_MS_BITS = 40
_RANDOM_BITS = 20
_lock = threading.Lock()
_last = 0  # the value of the last id this process made


def new_errand_id() -> str:
    """12 characters: 40 bits of milliseconds then 20 random bits; sorts by creation time.

    Within one process ids are strictly increasing: an id made in the same millisecond
    as the previous one (a fan-out creates hundreds at once) is the previous one plus
    one, so a process never makes the same id twice. Across processes the 20 random
    bits keep a collision unlikely, and creation refuses a duplicate id anyway.
    """
    global _last
    ms = int(time.time() * 1000) & ((1 << _MS_BITS) - 1)
    value = (ms << _RANDOM_BITS) | (
        int.from_bytes(os.urandom(3), "big") & ((1 << _RANDOM_BITS) - 1)
    )
    with _lock:
        if value <= _last:
            value = _last + 1
        _last = value
    out = []
    for _ in range(12):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "e" + "".join(reversed(out))
