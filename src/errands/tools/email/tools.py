"""The email tools: search_email, read_email, draft_email, send_email.

:func:`email_toolset` makes them for ``[email]`` (a toolset of their own, joined to the
built-ins by :func:`errands.harness.toolset_for`). What the reading tools return is
written by whoever sent the mail: it is labelled **untrusted** (and private), with the
sender as its source, so flow control traces any recipient, URL or text a later call
takes from it. ``draft_email`` stores a draft in the errand's log (no network);
``send_email`` is ``external`` -- it asks by default -- and sends once
(:mod:`errands.tools.email.outbox`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

from imapclient.exceptions import IMAPClientError
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity
from errands.mailconfig import EmailSettings, address_ok
from errands.tools.email.attachments import attach, describe, read_attachments
from errands.tools.email.client import MailError, imap_session, select
from errands.tools.email.message import (
    MAX_HEADER_CHARS,
    build_message,
    header_value,
    message_id_for,
    parse,
    render,
)
from errands.tools.email.outbox import Outbox
from errands.tools.tool import Preview, ToolArgumentError, ToolContext, ToolOutput, make_tool
from errands.tools.toolset import FunctionToolset

__all__ = ["DRAFT_ARGS", "EMAIL_TOOLS", "EmailToolset", "email_preview", "email_toolset"]

EMAIL_TOOLS = ("draft_email", "read_email", "search_email", "send_email")
DRAFT_ARGS = "send_email arguments: "  # the last line of a draft's result, then JSON
MAX_RESULTS = 50
_MESSAGE_ID = re.compile(r"^<[^<>\s]+@[^<>\s]+>$")
# attachments are paths of the workspace: a standing rule pins them exactly, as a list
_ROLES = {
    "to": "recipient",
    "cc": "recipient",
    "subject": "subject",
    "body": "body",
    "attachments": "path",
}


def _untrusted(text: str, source: str) -> ToolOutput:
    return ToolOutput(
        text=text,
        integrity=Integrity.untrusted,
        confidentiality=Confidentiality.private,
        source=source[:300],
    )


def _address(text: str) -> str:
    text = text.strip()
    if not address_ok(text):
        raise ValueError(f"{text!r} is not a bare mail address (name@example.com)")
    return text


def _one_line(text: str) -> str:
    if "\r" in text or "\n" in text or len(text) > MAX_HEADER_CHARS:
        raise ValueError(f"one line, at most {MAX_HEADER_CHARS} characters")
    return text


def _message_id(text: str) -> str:
    text = text.strip()
    if not _MESSAGE_ID.match(text):
        raise ValueError("a Message-ID, such as <abc@example.com>")
    return text


class _Checked(str):
    """A string argument checked wherever arguments are validated -- the model's call,
    and a person's edit on the approval card (an edit that breaks it is refused)."""

    @staticmethod
    def check(text: str) -> str:
        return text

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(cls.check, core_schema.str_schema())


class Address(_Checked):
    check = staticmethod(_address)


class Subject(_Checked):
    check = staticmethod(_one_line)


class MessageId(_Checked):
    check = staticmethod(_message_id)


def check_body(settings: EmailSettings, to: list[Address], body: str) -> None:
    if not to:
        raise ToolArgumentError("to: at least one recipient")
    if len(body.encode()) > settings.max_message_bytes:
        raise ToolArgumentError(f"body: more than max_message_bytes ({settings.max_message_bytes})")


def email_preview(settings: EmailSettings) -> Preview:
    """The approval card of a send (or a draft): everything that would leave."""

    def preview(args: Mapping[str, Any], workspace: Path) -> str:
        lines = [
            f"from: {settings.sender}",
            f"to: {', '.join(args.get('to') or [])}",
        ]
        if args.get("cc"):
            lines.append(f"cc: {', '.join(args['cc'])}")
        lines.append(f"subject: {args.get('subject', '')}")
        if args.get("in_reply_to"):
            lines.append(f"in reply to: {args['in_reply_to']} (the thread it answers)")
        body_size = len(str(args.get("body", "")).encode())
        lines += describe(
            workspace, list(args.get("attachments") or []), settings.max_message_bytes - body_size
        )
        lines += ["", str(args.get("body", ""))]
        return "\n".join(lines)

    return preview


_MAIL_ARGS = """

    Args:
        to: The recipients' addresses.
        subject: The subject line.
        body: The text of the mail.
        cc: Copies to these addresses.
        in_reply_to: The Message-ID of the mail this answers, if any.
        attachments: Files of the workspace to attach, by path (e.g. `["report.csv"]`).
"""

MailAction = Callable[[dict[str, Any], ToolContext], Awaitable[str]]


def _mail_tool(
    name: str, summary: str, settings: EmailSettings, act: MailAction
) -> Callable[..., Awaitable[str]]:
    """A tool function taking a mail's fields (checked), handing them to *act*."""

    async def fn(
        to: list[Address],
        subject: Subject,
        body: str,
        ctx: ToolContext,
        cc: list[Address] | None = None,
        in_reply_to: MessageId | None = None,
        attachments: list[str] | None = None,
    ) -> str:
        check_body(settings, to, body)
        mail: dict[str, Any] = {"to": to, "cc": cc or [], "subject": subject, "body": body}
        if attachments:  # (checked now: a missing or too big file is the call's error)
            room = settings.max_message_bytes - len(body.encode())
            read_attachments(ctx.workspace, attachments, room)
            mail["attachments"] = list(attachments)
        return await act({**mail, "in_reply_to": in_reply_to}, ctx)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = summary + _MAIL_ARGS
    return fn


def _since(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ToolArgumentError(f"since: {text!r} is not a date (YYYY-MM-DD)") from None


def _ident(text: str) -> tuple[str, int]:
    folder, _, uid = text.rpartition(":")
    if not folder or not uid.isdigit():
        raise ToolArgumentError(f"id: {text!r} is not an id search_email gave (FOLDER:UID)")
    return folder, int(uid)


class EmailToolset(FunctionToolset):
    """The email tools (one per harness: :func:`errands.harness.build` adds one for
    ``[email]`` unless it is given one)."""


def email_toolset(settings: EmailSettings, outbox: Outbox | None = None) -> EmailToolset:
    """The email tools for *settings*; *outbox* sends (a test may pass its own)."""
    sender = outbox or Outbox(settings)
    tools = EmailToolset()

    def search_email(
        query: str = "", folder: str = "INBOX", since: str | None = None
    ) -> ToolOutput:
        """Search mail: the newest matching messages, with id, date, sender and subject.

        Args:
            query: Text to look for in the messages (empty: every message).
            folder: The folder to search (INBOX, Sent, ...).
            since: Only messages from this date on (YYYY-MM-DD).
        """
        criteria: list[Any] = ["TEXT", query] if query else ["ALL"]
        day = _since(since)
        if day is not None:
            criteria += ["SINCE", day]
        with imap_session(settings) as imap:
            select(imap, folder)
            try:
                uids = sorted(imap.search(criteria, charset="UTF-8"))[-MAX_RESULTS:]
                got = (
                    imap.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)]"])
                    if uids
                    else {}
                )
            except (IMAPClientError, OSError) as exc:
                raise MailError("mailbox", f"IMAP: the search failed: {exc}") from None
        lines = [f"{len(uids)} message(s) in {folder}, newest last:"]
        for uid in uids:
            head = parse(got.get(uid, {}).get(b"BODY[HEADER.FIELDS (FROM SUBJECT DATE)]", b""))
            fields = " | ".join(
                f"{h.lower()}: {header_value(head, h)[:300]}" for h in ("Date", "From", "Subject")
            )
            lines.append(f"- id {folder}:{uid} | {fields}")
        return _untrusted("\n".join(lines), f"mail in {folder} (senders: anyone)")

    def read_email(id: str) -> ToolOutput:
        """Read one mail: its headers, its text and the names of its attachments.

        Args:
            id: The message's id, as search_email gave it (FOLDER:UID).
        """
        folder, uid = _ident(id)
        cap = settings.max_message_bytes
        with imap_session(settings) as imap:
            select(imap, folder)
            try:
                sizes = imap.fetch([uid], ["RFC822.SIZE"])
                if uid not in sizes:
                    raise MailError("mailbox", f"no message {id} (deleted, or never there)")
                size = int(sizes[uid][b"RFC822.SIZE"])
                part = f"BODY.PEEK[]<0.{cap}>" if size > cap else "BODY.PEEK[]"
                got = imap.fetch([uid], [part])
            except (IMAPClientError, OSError) as exc:
                raise MailError("mailbox", f"IMAP: cannot read {id}: {exc}") from None
        raw = next((v for k, v in got.get(uid, {}).items() if k.startswith(b"BODY[")), b"")
        shown = render(bytes(raw), size=size, truncated=size > cap, ident=id)
        return _untrusted(shown.text, f"{shown.sender or 'an unknown sender'} ({id})")

    async def draft(mail: dict[str, Any], ctx: ToolContext) -> str:
        preview = email_preview(settings)(mail, ctx.workspace)
        # the draft's arguments as send_email takes them, last: what a morning's run (or
        # a recipe) turns into a send_email call, and so into an approval card
        as_sent = json.dumps(mail, ensure_ascii=False, sort_keys=True)
        return f"draft {ctx.idempotency_key} saved (not sent):\n{preview}\n\n{DRAFT_ARGS}{as_sent}"

    async def send(mail: dict[str, Any], ctx: ToolContext) -> str:
        paths = mail.pop("attachments", [])
        msg = build_message(
            sender=settings.sender,
            message_id=message_id_for(ctx.idempotency_key, settings.address),
            **mail,
        )
        room = settings.max_message_bytes - len(mail["body"].encode())
        files = read_attachments(ctx.workspace, paths, room)
        attach(msg, files)
        said = await asyncio.to_thread(sender.send, msg)
        return said + "".join(f"\nattached: {f.line()}" for f in files)

    draft_email = _mail_tool(
        "draft_email", "Write a draft for the person to review; nothing is sent.", settings, draft
    )
    send_email = _mail_tool("send_email", "Send a mail from errands' address.", settings, send)

    read = {"effect": EffectClass.read, "idempotent": True}
    tools.add(make_tool(search_email, **read))  # type: ignore[arg-type]
    tools.add(make_tool(read_email, **read))  # type: ignore[arg-type]
    tools.add(
        make_tool(draft_email, effect=EffectClass.none, idempotent=True, roles=_ROLES,
                  preview=email_preview(settings))
    )  # fmt: skip
    tools.add(
        make_tool(
            send_email, effect=EffectClass.external, roles=_ROLES,
            honours_idempotency_key=sender.checks_sent, preview=email_preview(settings),
        )
    )  # fmt: skip
    return tools
