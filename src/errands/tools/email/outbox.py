"""Send a mail once, across crashes: the Sent folder settles a send in doubt.

The Message-ID of the mail a call sends is derived from the call's idempotency key
(:func:`~errands.tools.email.message.message_id_for`), so a call the harness runs again
after a crash sends the same Message-ID. With IMAP, before sending, errands looks for it
in the Sent folder:

- there, and complete: the mail left before the crash -- done, nothing is sent;
- there, marked :data:`SENDING`: errands filed its copy and crashed before it knew
  whether the SMTP server took the mail -- **in doubt**: nothing is sent, the call
  fails with ``in_doubt`` and a person decides (a new send needs a new approval);
- not there: it never left -- send.

The copy is filed *before* the SMTP transaction (marked ``$ErrandsSending``) and the mark
is removed once the server accepted it (``sent_copy = "append"``, the default), so no
crash can leave a mail sent without a trace in Sent. With ``sent_copy = "server"`` the
SMTP server files the copy itself (Gmail): errands only looks.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from errands.mailconfig import EmailSettings
from errands.tools.email.client import MailError, imap_session, select, smtp_session
from errands.tools.email.message import header_value, parse

__all__ = ["SENDING", "Outbox", "Settled", "thread"]

SENDING = "$ErrandsSending"

Settled = Literal["sent", "sending", "absent"]


class InDoubt(MailError):
    kind = "in_doubt"


@dataclass
class Outbox:
    """Sends through ``[email]``'s SMTP server, once per Message-ID."""

    settings: EmailSettings

    @property
    def checks_sent(self) -> bool:
        """Can a send in doubt be settled (is there a Sent folder to look in)?"""
        return self.settings.imap_url is not None

    def send(self, msg: EmailMessage) -> str:
        """Send *msg* (its Message-ID set) unless Sent shows it left; what happened."""
        message_id = str(msg["Message-ID"])
        if not self.checks_sent:
            return f"sent {message_id}" + self._smtp(msg)
        with imap_session(self.settings) as imap:
            thread(imap, msg, (self.settings.inbox_folder, self.settings.sent_folder))
            folder = self.settings.sent_folder
            select(imap, folder, readonly=False)
            state, _ = self.settled(imap, message_id)
            if state == "sent":
                return f"{message_id} was sent before (its copy is in {folder}): not sent again"
            if state == "sending":
                raise InDoubt(
                    "send",
                    f"{message_id} may or may not have left: errands stopped while the SMTP "
                    "server had it. It is not sent again on its own: check with the "
                    "recipient, then tell the errand how to go on.",
                )
            if self.settings.sent_copy == "append":
                uid = self._file(imap, folder, msg, message_id)
                note = self._smtp(msg, on_refusal=lambda: self._forget(imap, uid))
                self._mark_sent(imap, uid, message_id)
            else:
                note = self._smtp(msg)
        return f"sent {message_id}" + note

    def settled(self, imap: IMAPClient, message_id: str) -> tuple[Settled, list[int]]:
        """Is *message_id* in the selected Sent folder, and is its send complete?"""
        try:
            uids = imap.search(["HEADER", "Message-ID", message_id])
            if not uids:
                return "absent", []
            flags = imap.get_flags(uids)
        except (IMAPClientError, OSError) as exc:
            raise MailError("mailbox", f"IMAP: cannot search the Sent folder: {exc}") from None
        pending = any(SENDING.encode() in f for f in flags.values())
        return ("sending" if pending else "sent"), list(uids)

    def _file(self, imap: IMAPClient, folder: str, msg: EmailMessage, message_id: str) -> int:
        try:
            imap.append(folder, msg.as_bytes(), flags=(b"\\Seen", SENDING.encode()))
            uids = imap.search(["HEADER", "Message-ID", message_id])
        except (IMAPClientError, OSError) as exc:
            raise MailError("mailbox", f"IMAP: cannot file the copy in {folder}: {exc}") from None
        if not uids:
            raise MailError("mailbox", f"IMAP: the copy filed in {folder} is not found")
        return int(max(uids))

    def _mark_sent(self, imap: IMAPClient, uid: int, message_id: str) -> None:
        try:
            imap.remove_flags([uid], [SENDING.encode()])
        except (IMAPClientError, OSError) as exc:
            raise InDoubt(
                "mailbox",
                f"{message_id} was sent, but its copy in Sent could not be marked so ({exc}); "
                "do not send it again",
            ) from None

    def _forget(self, imap: IMAPClient, uid: int) -> None:
        """Remove the copy of a mail the SMTP server refused outright (it never left)."""
        try:
            imap.delete_messages([uid])
            imap.expunge([uid])
        except (IMAPClientError, OSError):
            pass  # (a pending copy left behind makes a re-run in doubt: the safe side)

    def _smtp(self, msg: EmailMessage, on_refusal: Callable[[], None] | None = None) -> str:
        """Hand *msg* to the SMTP server; a note on recipients it refused ('' if none).
        A refusal of the whole mail (nothing left) runs *on_refusal*, then raises."""
        try:
            return self._transmit(msg)
        except MailError as exc:
            if on_refusal is not None and not isinstance(exc, InDoubt):
                on_refusal()
            raise

    def _transmit(self, msg: EmailMessage) -> str:
        with smtp_session(self.settings) as smtp:
            try:
                refused = smtp.send_message(msg)
            except smtplib.SMTPRecipientsRefused as exc:
                raise MailError(
                    "send", f"SMTP: every recipient was refused: {_refusals(exc.recipients)}"
                ) from None
            except smtplib.SMTPResponseException as exc:
                raise MailError(
                    "send",
                    f"SMTP: the server refused the mail ({exc.smtp_code}): "
                    f"{_text(exc.smtp_error)[:300]}",
                ) from None
            except (OSError, smtplib.SMTPException) as exc:
                raise InDoubt(
                    "send",
                    f"SMTP: the connection failed while sending ({type(exc).__name__}): the "
                    "mail may or may not have left; it is not sent again on its own",
                ) from None
        return f" (refused by the server for: {_refusals(refused)})" if refused else ""


def thread(imap: IMAPClient, msg: EmailMessage, folders: tuple[str, ...]) -> None:
    """A reply's ``References``: the chain of the mail it answers (found in *folders*)
    and that mail's Message-ID, so that every client threads it; just the Message-ID
    when the mail is not found."""
    parent = msg.get("In-Reply-To")
    if not parent:
        return
    for folder in folders:
        try:
            select(imap, folder)
            uids = imap.search(["HEADER", "Message-ID", str(parent)])
            if not uids:
                continue
            field = b"BODY[HEADER.FIELDS (REFERENCES)]"
            got = imap.fetch(uids[-1:], ["BODY.PEEK[HEADER.FIELDS (REFERENCES)]"])
        except (MailError, IMAPClientError, OSError):
            return  # (a reply threads by In-Reply-To alone)
        fields: dict[bytes, bytes] = next(iter(got.values()), {})
        head = parse(fields.get(field, b""))
        chain = " ".join(header_value(head, "References").split()[-20:])
        if chain:
            del msg["References"]
            msg["References"] = f"{chain} {parent}"
        return


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{a} ({c} {m.decode(errors='replace')[:100]})" for a, (c, m) in refused.items()
    )
