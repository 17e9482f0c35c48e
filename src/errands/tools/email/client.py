"""Connections to the mail server, with errors that say exactly what failed.

SMTP through the standard library's ``smtplib`` and IMAP through ``imapclient``, both
blocking: callers run them in a thread (``asyncio.to_thread``). Every failure becomes a
:class:`MailError` whose ``stage`` names where it failed -- ``dns``, ``connect``,
``tls``, ``auth``, ``mailbox``, ``send`` -- and whose text says what to do; the
password never appears in one.
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from errands.mailconfig import EmailSettings, MailEndpoint
from errands.models.keys import find_key
from errands.tools.tool import ToolError

__all__ = ["MailError", "Stage", "imap_session", "smtp_session"]

Stage = Literal["config", "dns", "connect", "tls", "auth", "mailbox", "send"]


class MailError(ToolError):
    """A mail server could not do what was asked; ``stage`` says where it failed."""

    kind = "mail_error"

    def __init__(self, stage: Stage, text: str) -> None:
        super().__init__(text)
        self.stage = stage


def _password(settings: EmailSettings) -> str:
    """From the variable ``password_env`` names, else the OS keyring under that name
    (``keyring set errands ERRANDS_MAIL_PASSWORD``, with the keyring extra)."""
    try:
        return settings.password()
    except ValueError as exc:
        found = find_key(settings.password_env)
        if found is not None:
            return found[0]
        raise MailError(
            "config", f"{exc}, or keyring set errands {settings.password_env}"
        ) from None


def _resolve(where: MailEndpoint, what: str) -> None:
    try:
        socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MailError(
            "dns", f"{what}: cannot resolve {where.host}: {exc.strerror or exc}"
        ) from None


def _network(exc: BaseException, where: MailEndpoint, what: str) -> MailError:
    """A connection-level failure, named."""
    place = f"{what} at {where.host}:{where.port}"
    if isinstance(exc, ssl.SSLError):
        return MailError("tls", f"{place}: TLS failed: {exc.reason or exc}")
    if isinstance(exc, socket.gaierror):
        return MailError("dns", f"{place}: cannot resolve the host: {exc.strerror or exc}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return MailError("connect", f"{place}: no answer (timed out)")
    if isinstance(exc, ConnectionRefusedError):
        return MailError("connect", f"{place}: connection refused (is the server running?)")
    if isinstance(exc, OSError):
        return MailError("connect", f"{place}: cannot connect: {exc.strerror or exc}")
    return MailError("connect", f"{place}: {type(exc).__name__}: {exc}")


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


@contextmanager
def smtp_session(settings: EmailSettings) -> Iterator[smtplib.SMTP]:
    """A logged-in SMTP connection (TLS as the URL and ``starttls`` say)."""
    where = settings.smtp
    password = _password(settings)
    _resolve(where, "SMTP")
    timeout = settings.timeout_seconds
    try:
        if where.tls:
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                where.host, where.port, timeout=timeout, context=_tls()
            )
        else:
            conn = smtplib.SMTP(where.host, where.port, timeout=timeout)
    except (OSError, smtplib.SMTPException) as exc:
        raise _network(exc, where, "SMTP") from None
    try:
        try:
            if settings.starttls:
                conn.starttls(context=_tls())
        except (OSError, smtplib.SMTPException) as exc:
            if isinstance(exc, smtplib.SMTPNotSupportedError):
                raise MailError("tls", "SMTP: the server does not offer STARTTLS") from None
            raise _network(ssl.SSLError(str(exc)), where, "SMTP") from None
        if settings.username:
            try:
                conn.login(settings.username, password)
            except smtplib.SMTPAuthenticationError as exc:
                raise MailError(
                    "auth",
                    f"SMTP: {where.host} refused the login of {settings.username} "
                    f"({exc.smtp_code}): check the user and the password in "
                    f"{settings.password_env}",
                ) from None
            except (OSError, smtplib.SMTPException) as exc:
                raise MailError("auth", f"SMTP: login failed: {type(exc).__name__}") from None
        yield conn
    finally:
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            conn.close()


@contextmanager
def imap_session(settings: EmailSettings) -> Iterator[IMAPClient]:
    """A logged-in IMAP connection (``imap_url`` must be set)."""
    where = settings.imap
    if where is None:
        raise MailError("config", "no imap_url in [email]: errands cannot read mail")
    password = _password(settings)
    _resolve(where, "IMAP")
    try:
        client = IMAPClient(
            where.host,
            port=where.port,
            ssl=where.tls,
            ssl_context=_tls(),
            timeout=settings.timeout_seconds,
        )
    except (OSError, IMAPClientError, imaplib.IMAP4.error) as exc:
        raise _network(exc, where, "IMAP") from None
    try:
        try:
            client.login(settings.username, password)
        except LoginError:
            raise MailError(
                "auth",
                f"IMAP: {where.host} refused the login of {settings.username}: check the "
                f"user and the password in {settings.password_env}",
            ) from None
        except (OSError, IMAPClientError, imaplib.IMAP4.error) as exc:
            raise _network(exc, where, "IMAP") from None
        yield client
    finally:
        try:
            client.logout()
        except (OSError, IMAPClientError, imaplib.IMAP4.error):
            with suppress(OSError, IMAPClientError, imaplib.IMAP4.error):
                client.shutdown()


def select(client: IMAPClient, folder: str, readonly: bool = True) -> int:
    """Select *folder*; its UIDVALIDITY. MailError ``mailbox`` if it is not there."""
    try:
        info = client.select_folder(folder, readonly=readonly)
    except (IMAPClientError, imaplib.IMAP4.error) as exc:
        raise MailError("mailbox", f"IMAP: cannot open the folder {folder!r}: {exc}") from None
    return int(info.get(b"UIDVALIDITY", 0))
