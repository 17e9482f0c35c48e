"""``errands doctor`` on the mail servers (issue 20): it says exactly where a connection
failed -- DNS, the connection, TLS, the login, a mailbox -- on a real Dovecot and SMTP
server; the password never shows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from helpers.mailkit import PASSWORD_ENV, email_toml, mail
from helpers.mailserver import PASSWORD, MailServers, free_port

from errands.config import load_settings
from errands.store.sqlite import SQLiteStore
from errands.store.sqlite.mail_cursor import MailCursor
from errands.tools.email.doctor import email_report

__all__ = ["mail"]
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def report(home: Path, mail: MailServers, edit: tuple[str, str] | None = None) -> list[str]:
    text = email_toml(mail)
    if edit is not None:
        text = text.replace(*edit)
    (home / "errands.toml").write_text(text)
    settings = load_settings(home)
    assert settings.email is not None
    return [p for r in email_report(settings.email) for p in r.problems]


@pytest.mark.parametrize(
    ("edit", "stage", "says"),
    [
        (("127.0.0.1", "no-such-host.invalid"), "dns", "cannot resolve no-such-host.invalid"),
        (("{port}", "{dead}"), "connect", "connection refused"),
        (("smtp://", "smtps://"), "tls", "TLS failed"),
        (("starttls", "starttls"), "tls", "does not offer STARTTLS"),
        (("imap://", "imaps://"), "tls", "TLS failed"),
        (("allowed_senders", 'sent_folder = "Outbox"\nallowed_senders'), "mailbox", "'Outbox'"),
        ((PASSWORD, "wrong-password"), "auth", "refused the login"),
    ],
    ids=["dns", "refused", "smtps-on-plain", "no-starttls", "imaps-on-plain", "mailbox", "auth"],
)
def test_doctor_names_the_stage_that_failed(
    home: Path, mail: MailServers, monkeypatch: pytest.MonkeyPatch,
    edit: tuple[str, str], stage: str, says: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    if edit[0] == PASSWORD:
        monkeypatch.setenv(PASSWORD_ENV, edit[1])
        edit = ("\n\n", "\n\n")
    elif edit[0] == "{port}":
        edit = (f":{mail.relay.port}", f":{free_port()}")
    elif edit[0] == "starttls":
        edit = ("[email]\n", "[email]\nstarttls = true\n")
    problems = report(home, mail, edit)
    assert problems, "the doctor found nothing wrong"
    assert any(f": {stage}: " in p and says in p for p in problems), problems
    assert not any(PASSWORD in p or "wrong-password" in p for p in problems)


def test_doctor_cli_checks_both_and_says_what_failed(
    home: Path, mail: MailServers, cli: Any
) -> None:
    (home / "errands.toml").write_text(email_toml(mail))
    store = SQLiteStore(load_settings(home).db_path)  # the reader refused two mails so far
    asyncio.run(store.move_mail_cursor(MailCursor("INBOX", 1, 5, 2)))
    asyncio.run(store.close())
    good = cli("doctor", "--json", **{PASSWORD_ENV: PASSWORD})
    checks = {c["subject"]: c for c in json.loads(good.stdout)["checks"]}
    email = {k: v for k, v in checks.items() if k.startswith("email")}
    assert len(email) == 2 and all(c["ok"] for c in email.values()), email
    assert any("up to UID 5; 2 refused" in n for c in email.values() for n in c["notes"])
    bad = cli("doctor", **{PASSWORD_ENV: "nope-not-it"})
    assert bad.returncode == 1
    assert (
        "email smtp" in bad.stdout
        and "auth: SMTP" in bad.stdout
        and "refused the login" in bad.stdout
    )
    assert "auth: IMAP" in bad.stdout and "nope-not-it" not in bad.stdout + bad.stderr
    unset = cli("doctor")
    assert f"export {PASSWORD_ENV}" in unset.stdout and "Traceback" not in unset.stderr
