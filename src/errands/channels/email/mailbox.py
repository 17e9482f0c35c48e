"""The IMAP side of reading work by mail: what is new in a folder since a UID.

Blocking (``imapclient``); the reader runs it in a thread. The first look at a folder
only records where it is (mail that was there before errands first read it is not
taken as work), as does a folder whose UIDVALIDITY changed (its UIDs mean something
else now).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from imapclient.exceptions import IMAPClientError

from errands.mailconfig import EmailSettings
from errands.tools.email.client import MailError, imap_session, select

__all__ = ["BATCH", "Fetched", "Mail", "fetch_new"]

BATCH = 50  # mails taken per look (the rest at the next)


@dataclass(frozen=True)
class Mail:
    uid: int
    raw: bytes  # at most max_message_bytes of it
    size: int


@dataclass
class Fetched:
    uidvalidity: int
    baseline: int | None = None  # set: start over from this UID (nothing taken)
    mails: list[Mail] = field(default_factory=list)


def fetch_new(
    settings: EmailSettings, folder: str, uidvalidity: int | None, after: int | None
) -> Fetched:
    """The mails of *folder* with a UID above *after* (at most :data:`BATCH`), oldest
    first; or, for a first look or a changed UIDVALIDITY, only the baseline."""
    cap = settings.max_message_bytes
    with imap_session(settings) as imap:
        validity = select(imap, folder)
        try:
            if after is None or validity != uidvalidity:
                top = imap.search(["ALL"])
                return Fetched(validity, baseline=int(max(top)) if top else 0)
            uids = sorted(int(u) for u in imap.search(["UID", f"{after + 1}:*"]) if u > after)
            uids = uids[:BATCH]
            if not uids:
                return Fetched(validity)
            sizes = imap.fetch(uids, ["RFC822.SIZE"])
            mails = []
            for uid in uids:
                size = int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0))
                part = f"BODY.PEEK[]<0.{cap}>" if size > cap else "BODY.PEEK[]"
                got = imap.fetch([uid], [part]).get(uid, {})
                raw = next((v for k, v in got.items() if k.startswith(b"BODY[")), b"")
                mails.append(Mail(uid, bytes(raw), size))
        except (IMAPClientError, OSError) as exc:
            raise MailError("mailbox", f"IMAP: cannot read {folder}: {exc}") from None
    return Fetched(validity, mails=mails)


def wait_for_mail(
    settings: EmailSettings, folder: str, seconds: float, stop: threading.Event, after: int | None
) -> bool:
    """Wait up to *seconds* for the server to say *folder* changed (IDLE) -- at once if
    a mail above UID *after* is there already (it came after the last look, before the
    wait began) -- or until *stop* is set (checked every second); False at once when
    the server does not offer IDLE."""
    with imap_session(settings) as imap:
        if b"IDLE" not in imap.capabilities():
            return False
        select(imap, folder)
        try:
            if after is not None and any(u > after for u in imap.search(["UID", f"{after + 1}:*"])):
                return True
            imap.idle()
            try:
                deadline = time.monotonic() + seconds
                while not stop.is_set() and time.monotonic() < deadline:
                    if imap.idle_check(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                        break
            finally:
                imap.idle_done()
        except (IMAPClientError, OSError):
            pass  # (the server dropped it: the next look says what is wrong)
    return True
