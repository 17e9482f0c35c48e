"""Real mail servers for the email tests: Dovecot (IMAP, LMTP) and an SMTP server.

:func:`start_mail` starts Dovecot from Debian's packages as a process of the test, on
free loopback ports, with its own config, mail and users (a passwd-file) in a temp
folder; and an ``aiosmtpd`` SMTP server on 127.0.0.1 that delivers what it accepts into
Dovecot over LMTP (``smtplib.LMTP``, the standard library's client). Nothing is mocked:
the tests read what recipients received over IMAP. A missing ``dovecot`` binary fails
with a clear message (``.ci/run`` installs ``dovecot-imapd dovecot-lmtpd``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from imapclient import IMAPClient

__all__ = ["MailServers", "Relay", "free_port", "start_mail"]

DOVECOT = "/usr/sbin/dovecot"
PASSWORD = "s3cret-mail-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dovecot exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"dovecot did not listen on {port}: {log.read_text()[-2000:]}")


_CONF = """
base_dir = {root}/run
state_dir = {root}/state
instance_name = errands-test-{imap}
log_path = {root}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = plain login
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 0
mail_location = maildir:{root}/mail/%n
mail_privileged_group =
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%n allow_all_users=yes
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
service anvil {{
  chroot =
  # no penalty for failed logins (tests fail some on purpose): auth cannot reach it
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
}}
"""


def lmtp_deliver(port: int, sender: str, rcpts: list[str], data: bytes) -> None:
    """Into Dovecot over LMTP, one recipient a transaction (LMTP answers DATA once per
    recipient; smtplib's client reads one answer)."""
    for rcpt in rcpts:
        with smtplib.LMTP("127.0.0.1", port) as lmtp:
            lmtp.sendmail(sender, [rcpt], data)


class _Deliver:
    """aiosmtpd handler: each accepted message goes into Dovecot over LMTP."""

    def __init__(self, lmtp_port: int, on_data: Callable[[Envelope], None] | None) -> None:
        self.lmtp_port = lmtp_port
        self.on_data = on_data
        self.accepted: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        import asyncio

        data = envelope.original_content or b""
        await asyncio.to_thread(self._deliver, envelope.mail_from, envelope.rcpt_tos, data)
        self.accepted.append(envelope)
        if self.on_data is not None:
            self.on_data(envelope)
        return "250 OK delivered"

    def _deliver(self, sender: str | None, rcpts: list[str], data: bytes) -> None:
        lmtp_deliver(self.lmtp_port, sender or "", rcpts, data)


class _Auth:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode()
            ok = self.users.get(user) == auth_data.password.decode()
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)


@dataclass
class Relay:
    """The SMTP server (aiosmtpd) in front of Dovecot's LMTP."""

    port: int
    handler: _Deliver
    controller: Controller

    @property
    def accepted(self) -> list[Envelope]:
        return self.handler.accepted


@dataclass
class MailServers:
    root: Path
    imap_port: int
    lmtp_port: int
    relay: Relay
    users: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def add_user(self, address: str, password: str = PASSWORD) -> None:
        self.users[address] = password
        lines = "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items())
        path = self.root / "passwd"
        path.write_text(lines)
        if os.getuid() == 0:
            me = _runs_as()
            os.chown(path, me.pw_uid, me.pw_gid)

    @contextmanager
    def imap(self, user: str, folder: str = "INBOX") -> Iterator[IMAPClient]:
        client = IMAPClient("127.0.0.1", port=self.imap_port, ssl=False, timeout=10)
        try:
            client.login(user, self.users[user])
            client.select_folder(folder)
            yield client
        finally:
            with suppress(Exception):
                client.logout()

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """Every message in *user*'s *folder*, as raw bytes, oldest first."""
        with self.imap(user, folder) as c:
            uids = c.search("ALL")
            got = c.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [got[u][b"BODY[]"] for u in sorted(got)]

    def append(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        with self.imap(user, folder) as c:
            c.append(folder, raw)

    def deliver(self, msg: EmailMessage | bytes, to: list[str]) -> None:
        """Deliver straight over LMTP, as an MX that wrote Authentication-Results would."""
        data = msg if isinstance(msg, bytes) else msg.as_bytes()
        lmtp_deliver(self.lmtp_port, "mx@test.example", to, data)

    def stop(self) -> None:
        self.relay.controller.stop(no_assert=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _runs_as() -> pwd.struct_passwd:
    """The user Dovecot runs as: this one, or (under root, as in CI's containers) an
    unprivileged system user -- Dovecot refuses to serve logins as root."""
    if os.getuid() != 0:
        return pwd.getpwuid(os.getuid())
    for name in ("dovecot", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user to run dovecot as (dovecot, nobody)")


def start_mail(root: Path, on_data: Callable[[Envelope], None] | None = None) -> MailServers:
    """Dovecot and the SMTP relay under *root*; the caller stops them (:meth:`stop`)."""
    binary = shutil.which("dovecot") or (DOVECOT if os.path.exists(DOVECOT) else None)
    if binary is None:
        raise RuntimeError(
            "dovecot is not installed: the email tests need a real IMAP server "
            "(apt-get install -y dovecot-imapd dovecot-lmtpd, as .ci/run does)"
        )
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir(exist_ok=True)
    me = _runs_as()
    imap_port, lmtp_port = free_port(), free_port()
    conf = root / "dovecot.conf"
    conf.write_text(
        _CONF.format(
            root=root,
            imap=imap_port,
            lmtp=lmtp_port,
            user=me.pw_name,
            group=grp.getgrgid(me.pw_gid).gr_name,
            uid=me.pw_uid,
            gid=me.pw_gid,
        )
    )
    (root / "passwd").write_text("")
    if os.getuid() == 0:  # (Dovecot's processes must not run as root: hand it all)
        for path in (root, *root.rglob("*")):
            os.chown(path, me.pw_uid, me.pw_gid)
    proc = subprocess.Popen(
        [binary, "-F", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        user=me.pw_uid if os.getuid() == 0 else None,
        group=me.pw_gid if os.getuid() == 0 else None,
        extra_groups=[] if os.getuid() == 0 else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handler = _Deliver(lmtp_port, on_data)
    servers = MailServers(root, imap_port, lmtp_port, relay=None, proc=proc)  # type: ignore[arg-type]
    smtp_port = free_port()
    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=smtp_port,
        data_size_limit=80_000_000,
        authenticator=_Auth(servers.users),
        auth_require_tls=False,
        auth_required=True,
    )
    servers.relay = Relay(smtp_port, handler, controller)
    try:
        _wait_port(imap_port, proc, root / "dovecot.log")
        _wait_port(lmtp_port, proc, root / "dovecot.log")
        controller.start()
    except BaseException:
        servers.stop()
        raise
    return servers


def serve_in_thread(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t
