"""``errands doctor``'s email lines: can errands send (SMTP) and read (IMAP)?

Each connection is tried as errands uses it -- DNS, the TCP connection, TLS (smtps/imaps
or STARTTLS), the login, and for IMAP the inbox and the Sent folder -- and a failure
says at which of those it failed (:attr:`MailError.stage`) and what to fix. Nothing is
sent; the password is never shown.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass, field

from errands.mailconfig import EmailSettings
from errands.tools.email.client import MailError, imap_session, select, smtp_session

__all__ = ["MailReport", "email_report"]


@dataclass
class MailReport:
    subject: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _smtp(settings: EmailSettings) -> MailReport:
    subject = f"email smtp ({settings.smtp_url})"
    try:
        with smtp_session(settings) as smtp:
            try:
                smtp.noop()
            except (OSError, smtplib.SMTPException) as exc:
                raise MailError("connect", f"SMTP: the server stopped answering: {exc}") from None
    except MailError as exc:
        return MailReport(subject, False, [f"{subject}: {exc.stage}: {exc}"])
    tls = "TLS" if settings.smtp.tls else ("STARTTLS" if settings.starttls else "no TLS")
    return MailReport(subject, True, notes=[f"logged in as {settings.username or '-'}, {tls}"])


def _imap(settings: EmailSettings) -> MailReport:
    subject = f"email imap ({settings.imap_url})"
    try:
        with imap_session(settings) as imap:
            idle = b"IDLE" in imap.capabilities()
            for folder in (settings.inbox_folder, settings.sent_folder):
                select(imap, folder)
    except MailError as exc:
        return MailReport(subject, False, [f"{subject}: {exc.stage}: {exc}"])
    way = "IDLE" if idle else f"polling every {settings.poll_seconds:g}s"
    return MailReport(
        subject,
        True,
        notes=[f"{settings.inbox_folder} and {settings.sent_folder} open; new mail by {way}"],
    )


def email_report(settings: EmailSettings) -> list[MailReport]:
    """One report per configured connection (IMAP only when ``imap_url`` is set)."""
    reports = [_smtp(settings)]
    if settings.imap_url:
        reports.append(_imap(settings))
    return reports
