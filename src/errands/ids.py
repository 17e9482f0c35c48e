"""Short, sortable identifiers for errands."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_errand_id() -> str:
    """12 characters: 40 bits of milliseconds then 20 random bits; sorts by creation time."""
    value = ((int(time.time() * 1000) & ((1 << 40) - 1)) << 20) | int.from_bytes(
        os.urandom(3), "big"
    ) & ((1 << 20) - 1)
    out = []
    for _ in range(12):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "e" + "".join(reversed(out))
