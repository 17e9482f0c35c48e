"""Email: tools that search, read, draft and send mail (``[email]``; docs/email.md),
and the reader that turns mail from allowed senders into errands (:mod:`.inbound`).

Needs the ``email`` extra (``pip install 'errands[email]'``: imapclient, authres);
:func:`check_libraries` says so in one line when it is missing.
"""

from __future__ import annotations

import importlib.util

from errands.errors import ConfigError

__all__ = ["check_libraries"]


def check_libraries() -> None:
    """ConfigError naming the extra when the email libraries are not installed."""
    missing = [m for m in ("imapclient", "authres") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"[email] needs {', '.join(missing)}: pip install 'errands[email]'")
