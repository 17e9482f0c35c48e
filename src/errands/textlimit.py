"""The one limit on what a person may write to an errand: 50,000 characters.

The errand's text and every follow-up message are capped here, once, for every way in:
the CLI (``errands run``, ``errands tell``), the API (``server/schemas.py``: a body stays
well under the 1 MiB request cap even fully escaped) and the Python API
(``Harness.create`` / ``Harness.tell``). Longer material belongs in a file in the
errand's workspace.
"""

from __future__ import annotations

from errands.errors import UserError

__all__ = ["MAX_TEXT", "check_text", "too_long"]

MAX_TEXT = 50_000  # characters (Python's len: code points)


def too_long(length: int, what: str = "the text") -> str:
    """The one message for text over the limit, naming the limit and the length given."""
    return (
        f"{what} is {length:,} characters; the limit is {MAX_TEXT:,} -- put long material "
        "in a file in the errand's workspace and refer to it"
    )


def check_text(text: str, what: str = "the text") -> None:
    """Refuse (:class:`UserError`) *text* over :data:`MAX_TEXT` characters."""
    if len(text) > MAX_TEXT:
        raise UserError(too_long(len(text), what))
