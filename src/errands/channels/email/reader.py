"""The mail reader: mail from an allowed sender starts an errand or continues one.

Each new mail in the inbox (``[email] inbox_folder``), oldest first:

- from anyone but an allowed sender the configured server authenticated
  (:class:`~errands.channels.email.senders.SenderCheck`): nothing starts; it is logged
  and counted (``refused`` in the store's mail cursor) -- with one exception, the
  **answer of someone an errand mailed**: a mail whose ``In-Reply-To``/``References``
  name a mail an errand sent (its Message-ID, derived from the send's idempotency key,
  :func:`~errands.tools.email.message.message_id_for`), from an address that send went to
  (``to`` or ``cc``), which the configured server authenticated like an allowed sender's,
  continues that errand (a vendor's reply wakes the chase). It can never start one, nor
  continue an errand that did not mail that address (:meth:`MailReader.mailed_back`);
- a reply -- ``In-Reply-To``/``References`` naming a mail an errand sent, or the mail
  that started one -- joins that errand as a message (it wakes a sleeping one);
- otherwise it starts an errand whose id comes from its Message-ID.

Its text -- headers and body -- is **untrusted** content (provenance ``external``,
``email``, the sender), never the person's own words: flow control judges every call it
steers. After each mail the cursor (the last UID dealt with) moves on in the store, so
across restarts no mail is taken twice or skipped: a crash between a mail's errand and
the cursor's move takes it again, and the errand's id (or, for a reply, the Message-ID
in the errand's log) makes the second time change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Container, Sequence
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from typing import Protocol, runtime_checkable

from errands.channels.email.mailbox import Fetched, Mail, fetch_new, wait_for_mail
from errands.channels.email.senders import SenderCheck, Verdict
from errands.config import Settings
from errands.core import events as ev
from errands.core.labels import Confidentiality, Integrity, Provenance
from errands.errors import ErrandExists, NotFound, StoreError
from errands.mailconfig import EmailSettings
from errands.store import Store, StoredEvent
from errands.store.sqlite.mail_cursor import MailCursor
from errands.tools.email.client import MailError
from errands.tools.email.message import (
    addresses,
    errand_for_mail,
    errand_of,
    header_value,
    parse,
    render,
)
from errands.tools.workspace import make_workspace

__all__ = ["CursorStore", "MailReader", "Tally"]

log = logging.getLogger("errands.email")

_SENT = re.compile(r"^<errands\.([A-Za-z0-9_.-]{1,200})@[^<>\s]+>$")


def _sent_key(message_id: str) -> str | None:
    """The idempotency key of the send that made *message_id* (None: not one of ours)."""
    found = _SENT.match(message_id.strip())
    return found.group(1) if found else None


def _sent_to(logged: Sequence[StoredEvent], key: str) -> set[str]:
    """The addresses (lower-cased) the errand's ``send_email`` call *key* mailed, if it
    ran and succeeded."""
    intents = {
        s.seq: s.event
        for s in logged
        if isinstance(s.event, ev.ToolIntent)
        and s.event.tool == "send_email"
        and s.event.idempotency_key == key
    }
    for stored in logged:
        event = stored.event
        if isinstance(event, ev.ToolResult) and event.ok and event.intent_seq in intents:
            args = intents[event.intent_seq].arguments
            named: list[str] = []
            for field in ("to", "cc"):
                value = args.get(field) or []
                named += [value] if isinstance(value, str) else [str(v) for v in value]
            return {address.strip().lower() for _, address in getaddresses(named) if address}
    return set()


@runtime_checkable
class CursorStore(Protocol):
    async def mail_cursor(self, folder: str) -> MailCursor | None: ...
    async def move_mail_cursor(self, cursor: MailCursor) -> None: ...


@dataclass
class Tally:
    started: int = 0
    continued: int = 0
    refused: int = 0
    again: int = 0  # taken before (a crash before the cursor moved): nothing done


class MailReader:
    """Reads ``[email]``'s inbox into errands; :meth:`poll` once, or :meth:`start`."""

    def __init__(
        self, settings: Settings, store: Store, *, check: SenderCheck | None = None
    ) -> None:
        if settings.email is None or settings.email.imap_url is None:
            raise ValueError("the mail reader needs [email] with imap_url")
        if not isinstance(store, CursorStore):
            raise TypeError(f"{type(store).__name__} cannot keep a mail cursor")
        self.settings = settings
        self.email: EmailSettings = settings.email
        self.store = store
        self.cursors: CursorStore = store
        self.check = check or SenderCheck(self.email)
        self.folder = self.email.inbox_folder
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()  # (ends a wait in IDLE within a second)

    async def poll(self) -> Tally:
        """Take every new mail now (in batches); what happened to them."""
        tally = Tally()
        while True:
            cursor = await self.cursors.mail_cursor(self.folder)
            fetched: Fetched = await asyncio.to_thread(
                fetch_new,
                self.email,
                self.folder,
                None if cursor is None else cursor.uidvalidity,
                None if cursor is None else cursor.last_uid,
            )
            if fetched.baseline is not None:
                if cursor is not None:
                    log.warning("mail: %s has a new UIDVALIDITY: starting over", self.folder)
                refused = 0 if cursor is None else cursor.refused
                await self.cursors.move_mail_cursor(
                    MailCursor(self.folder, fetched.uidvalidity, fetched.baseline, refused)
                )
                continue
            assert cursor is not None
            if not fetched.mails:
                return tally
            for mail in fetched.mails:
                refused = not await self._take(mail, fetched.uidvalidity, tally)
                cursor = MailCursor(
                    self.folder, cursor.uidvalidity, mail.uid, cursor.refused + refused
                )
                await self.cursors.move_mail_cursor(cursor)

    async def _take(self, mail: Mail, uidvalidity: int, tally: Tally) -> bool:
        """Start or continue an errand with *mail*; False if it was refused."""
        msg = parse(mail.raw)
        verdict = self.check.check(msg)
        target: str | None = None
        if verdict.sender is None:
            answered = await self.mailed_back(msg)
            if answered is not None:
                target, sender = answered
                verdict = Verdict(sender, f"answers a mail errand {target} sent to {sender}")
        if verdict.sender is None:
            tally.refused += 1
            log.warning(
                "mail: refused UID %s in %s (From %s): %s",
                mail.uid, self.folder, header_value(msg, "From")[:200], verdict.reason,
            )  # fmt: skip
            return False
        key = header_value(msg, "Message-ID").strip()[:200] or f"<{uidvalidity}.{mail.uid}@imap>"
        shown = render(
            mail.raw, size=mail.size, truncated=mail.size > len(mail.raw),
            ident=f"{self.folder}:{mail.uid}",
        )  # fmt: skip
        content = ev.Content(
            text=f"A mail from {verdict.sender} ({key}); its text is not the person's own "
            f"words:\n\n{shown.text}",
            provenance=Provenance(kind="external", name="email", source=verdict.sender),
            integrity=Integrity.untrusted,
            confidentiality=Confidentiality.private,
        )
        target = target or await self._answers(msg)
        if target is not None:
            return await self._continue(target, key, content, verdict.sender, tally)
        return await self._start(key, msg, content, verdict.sender, tally)

    async def _answers(self, msg: Message) -> str | None:
        """The errand a reply answers (the newest reference first), if any."""
        refs = " ".join(header_value(msg, h) for h in ("In-Reply-To", "References"))
        for ref in reversed(refs.split()):
            ref = ref.strip()
            if not ref.startswith("<"):
                continue
            for errand_id in (errand_of(ref), errand_for_mail(ref)):
                if errand_id is None:
                    continue
                with contextlib.suppress(NotFound):
                    await self.store.view(errand_id)
                    return errand_id
        return None

    async def mailed_back(self, msg: Message) -> tuple[str, str] | None:
        """(errand, sender) when *msg* answers a mail an errand sent, from an address that
        mail went to, authenticated by the configured server; None otherwise."""
        froms = addresses(msg, "From")
        if len(froms) != 1:
            return None
        sender = froms[0].lower()
        refs = " ".join(header_value(msg, h) for h in ("In-Reply-To", "References"))
        for ref in reversed(refs.split()):
            errand_id = errand_of(ref)
            key = _sent_key(ref)
            if errand_id is None or key is None:
                continue
            try:
                logged = await self.store.read(errand_id)
            except NotFound:
                continue
            if sender in self.recipients(logged, key):
                why = self.check.authenticated(msg, sender)
                if why is not None:
                    log.warning("mail: a reply to errand %s from %s: %s", errand_id, sender, why)
                    return None
                return errand_id, sender
        return None

    def recipients(self, logged: Sequence[StoredEvent], key: str) -> Container[str]:
        """Who the errand's send *key* mailed (tests pass a control that says anyone)."""
        return _sent_to(logged, key)

    async def _start(
        self, key: str, msg: Message, content: ev.Content, sender: str, tally: Tally
    ) -> bool:
        errand_id = self.errand_id_for(key)
        subject = header_value(msg, "Subject")[:60] or "(no subject)"
        created = ev.ErrandCreated(
            title=f"mail: {subject}",
            content=content,
            model=self.settings.default_model,
            timezone=self.settings.timezone,
            workspace=str(make_workspace(self.settings, errand_id)),
            limits=self.settings.limits,
            by=f"email:{sender}",
            channel="email",
        )
        try:
            await self.store.create(errand_id, created)
        except ErrandExists:
            tally.again += 1
            return True
        tally.started += 1
        log.info("mail: %s started errand %s", key, errand_id)
        return True

    def errand_id_for(self, key: str) -> str:
        """The id of the errand the mail *key* (its Message-ID) starts: derived from it,
        so a mail taken twice starts one errand."""
        return errand_for_mail(key)

    async def _continue(
        self, errand_id: str, key: str, content: ev.Content, sender: str, tally: Tally
    ) -> bool:
        marker = f"({key})"
        for stored in await self.store.read(errand_id):
            event = stored.event
            if isinstance(event, ev.UserMessage) and marker in event.content.text[:600]:
                tally.again += 1
                return True
        message = ev.UserMessage(content=content, by=f"email:{sender}", channel="email")
        try:
            await self.store.append(errand_id, [message])
        except StoreError as exc:
            log.warning("mail: %s could not continue errand %s: %s", key, errand_id, exc)
            return True
        tally.continued += 1
        return True

    # -- running on its own ------------------------------------------------------------

    def start(self) -> None:
        """Read the inbox from now on: at once, then whenever the server says something
        arrived (IDLE) or every ``poll_seconds``."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
                self.last_error = None
            except MailError as exc:
                if str(exc) != self.last_error:
                    log.warning("mail: cannot read the inbox: %s", exc)
                self.last_error = str(exc)
            except Exception:  # never let the reader die silently
                log.exception("mail: the reader failed")
            try:
                cursor = await self.cursors.mail_cursor(self.folder)
                idled = await asyncio.to_thread(
                    wait_for_mail, self.email, self.folder, self.email.poll_seconds,
                    self._stop, None if cursor is None else cursor.last_uid,
                )  # fmt: skip
            except MailError:
                idled = False
            if not idled:
                await asyncio.sleep(self.email.poll_seconds)

    async def close(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
