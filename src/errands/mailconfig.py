"""``[email]`` in ``errands.toml``: the mail server errands sends through and reads from.

::

    [email]
    smtp_url = "smtps://smtp.example.com:465"   # or "smtp://host:587" with starttls = true
    starttls = true                             # smtp:// only: upgrade with STARTTLS
    imap_url = "imaps://imap.example.com:993"   # optional: sending works without it
    username = "errands@example.com"
    password_env = "ERRANDS_MAIL_PASSWORD"      # the *name* of the variable, never the password
    from = "errands@example.com"
    allowed_senders = ["me@example.com", "@example.com"]
    authserv_id = "mx.example.com"              # whose Authentication-Results to believe
    max_message_bytes = 10_000_000

Validated here, so a bad section is one clear :class:`~errands.errors.ConfigError` when
the config loads, before anything connects (docs/email.md).
"""

from __future__ import annotations

import os
import re
from email.utils import parseaddr
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["EmailSettings", "MailEndpoint", "address_ok"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ADDRESS = re.compile(r"^[^@\s<>\"]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")
_DOMAIN = re.compile(r"^@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")


def address_ok(text: str) -> bool:
    """Is *text* a bare mail address (``name@host.tld``), with nothing around it?"""
    return bool(_ADDRESS.match(text))


class MailEndpoint(BaseModel):
    """A parsed ``smtp://``, ``smtps://``, ``imap://`` or ``imaps://`` URL."""

    model_config = ConfigDict(frozen=True)

    scheme: Literal["smtp", "smtps", "imap", "imaps"]
    host: str
    port: int

    @property
    def tls(self) -> bool:
        """TLS from the first byte (smtps, imaps)."""
        return self.scheme.endswith("s")


_PORTS = {"smtp": 25, "smtps": 465, "imap": 143, "imaps": 993}


def _endpoint(url: str, kinds: tuple[str, str]) -> MailEndpoint:
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL errands can use: {exc}") from None
    if parts.scheme not in kinds:
        raise ValueError(f"{url!r}: the scheme must be {' or '.join(kinds)}")
    if parts.username or parts.password:
        raise ValueError(f"{url!r}: no user or password in the URL; use username and password_env")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: only scheme://host:port")
    return MailEndpoint(
        scheme=parts.scheme,  # (checked just above)
        host=parts.hostname,
        port=port or _PORTS[parts.scheme],
    )


class EmailSettings(BaseModel):
    """``[email]``; absent: errands has no email tools and reads no mail."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    smtp_url: str
    starttls: bool = False
    imap_url: str | None = None
    username: str = ""
    password_env: str = ""
    sender: str = Field(alias="from")
    allowed_senders: list[str] = []
    authserv_id: str = ""
    max_message_bytes: int = Field(default=10_000_000, gt=0, le=200_000_000)
    # the folders errands reads new work from, and files a copy of what it sends in
    inbox_folder: str = "INBOX"
    sent_folder: str = "Sent"
    # "append": errands files the copy (most servers); "server": the SMTP server does (Gmail)
    sent_copy: Literal["append", "server"] = "append"
    # seconds between looks at the inbox when the server does not offer IDLE
    poll_seconds: float = Field(default=60.0, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("smtp_url")
    @classmethod
    def _smtp(cls, url: str) -> str:
        _endpoint(url, ("smtp", "smtps"))
        return url

    @field_validator("imap_url")
    @classmethod
    def _imap(cls, url: str | None) -> str | None:
        if url is not None:
            _endpoint(url, ("imap", "imaps"))
        return url

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        if name and not _ENV_NAME.match(name):
            raise ValueError(
                "password_env is the NAME of an environment variable that holds the "
                "password (letters, digits and _), not the password itself"
            )
        return name

    @field_validator("sender")
    @classmethod
    def _sender(cls, sender: str) -> str:
        _, address = parseaddr(sender)
        if not address_ok(address):
            raise ValueError(f"from: {sender!r} is not a mail address")
        return sender

    @field_validator("allowed_senders")
    @classmethod
    def _allowed(cls, senders: list[str]) -> list[str]:
        for s in senders:
            if not (address_ok(s) or _DOMAIN.match(s)):
                raise ValueError(
                    f"allowed_senders: {s!r} is neither an address (me@example.com) nor "
                    "a domain (@example.com)"
                )
        return [s.lower() for s in senders]

    @model_validator(mode="after")
    def _coherent(self) -> EmailSettings:
        if self.starttls and self.smtp.tls:
            raise ValueError("starttls = true goes with smtp://, not smtps:// (TLS already)")
        if self.allowed_senders and not self.imap_url:
            raise ValueError("allowed_senders needs imap_url: errands reads work from IMAP")
        if self.allowed_senders and not self.authserv_id:
            raise ValueError(
                "allowed_senders needs authserv_id: the server whose Authentication-Results "
                "errands believes (a From header alone can be forged)"
            )
        if (self.username or self.imap_url) and not self.password_env:
            raise ValueError("password_env: name the environment variable with the password")
        return self

    @property
    def smtp(self) -> MailEndpoint:
        return _endpoint(self.smtp_url, ("smtp", "smtps"))

    @property
    def imap(self) -> MailEndpoint | None:
        return None if self.imap_url is None else _endpoint(self.imap_url, ("imap", "imaps"))

    @property
    def address(self) -> str:
        """The bare address of ``from``."""
        return parseaddr(self.sender)[1]

    def password(self) -> str:
        """The password, from the environment; ValueError naming the variable if unset."""
        if not self.password_env:
            return ""
        value = os.environ.get(self.password_env)
        if not value:
            raise ValueError(
                f"the mail password is not set: export {self.password_env} "
                "(named by password_env in [email])"
            )
        return value
