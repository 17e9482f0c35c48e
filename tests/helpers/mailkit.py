"""Email test kit: the mail servers as a fixture, ``[email]`` settings pointing at them,
mails to deliver, and a harness whose email tools the test may replace."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest

from errands.config import Settings, load_settings
from helpers.mailserver import PASSWORD, MailServers, start_mail

ERRANDS = "errands@test.example"
BOB = "bob@test.example"
ME = "me@test.example"
AUTHSERV = "mx.test.example"
PASSWORD_ENV = "ERRANDS_TEST_MAIL_PASSWORD"


@contextmanager
def mail_servers() -> Iterator[MailServers]:
    """Dovecot and the SMTP relay with this kit's users; stopped and removed after."""
    root = Path(tempfile.mkdtemp(prefix="errands-mail-"))
    os.chmod(root, 0o755)  # (Dovecot runs as an unprivileged user under root)
    servers = start_mail(root / "srv")
    try:
        for user in (ERRANDS, BOB, ME, "x@evil.example"):
            servers.add_user(user)
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mail() -> Iterator[MailServers]:
    """The mail servers, for the whole module."""
    with mail_servers() as servers:
        yield servers


def email_toml(mail: MailServers, *, imap: bool = True, extra: str = "") -> str:
    lines = [
        "[email]",
        f'smtp_url = "smtp://127.0.0.1:{mail.relay.port}"',
        f'username = "{ERRANDS}"',
        f'password_env = "{PASSWORD_ENV}"',
        f'from = "errands <{ERRANDS}>"',
    ]
    if imap:
        lines += [
            f'imap_url = "imap://127.0.0.1:{mail.imap_port}"',
            f'allowed_senders = ["{ME}"]',
            f'authserv_id = "{AUTHSERV}"',
        ]
    return "\n".join(lines) + "\n" + extra


def mail_settings(
    home: Path, mail: MailServers, monkeypatch: pytest.MonkeyPatch, **kw: bool
) -> Settings:
    (home / "errands.toml").write_text(email_toml(mail, **kw))
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return load_settings(home)


def a_mail(
    sender: str,
    subject: str,
    body: str,
    *,
    to: str = ERRANDS,
    results: list[str] | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
) -> EmailMessage:
    """A mail as the MX hands it on: *results* are its Authentication-Results values,
    topmost first (None: one aligned DKIM pass from :data:`AUTHSERV`)."""
    msg = EmailMessage()
    domain = sender.rsplit("@", 1)[1]
    if results is None:
        results = [f"{AUTHSERV}; dkim=pass header.d={domain} header.s=s1; spf=none"]
    for value in results:
        msg["Authentication-Results"] = value
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body)
    return msg
