"""Mail messages: the one errands sends, and what a model is shown of one it reads.

Built and parsed with the standard ``email`` package. Reading is defensive: a message
is whatever its sender wrote -- broken MIME, a charset that does not exist, bytes that
are not text, a 30 MB attachment -- and each becomes something to show (with a note
saying what was wrong), never an exception.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import formatdate, getaddresses

import html2text

__all__ = [
    "MAX_BODY_CHARS",
    "Rendered",
    "addresses",
    "build_message",
    "errand_for_mail",
    "errand_of",
    "header_value",
    "message_id_for",
    "parse",
    "render",
    "thread_headers",
]

MAX_BODY_CHARS = 50_000  # of a message's text shown to the model
MAX_HEADER_CHARS = 2_000  # of one header's value
SHOWN_HEADERS = (
    "From", "Sender", "Reply-To", "To", "Cc", "Date", "Subject",
    "Message-ID", "In-Reply-To", "References",
)  # fmt: skip


def message_id_for(idempotency_key: str, sender: str) -> str:
    """The Message-ID of the mail a call sends: the call's idempotency key (the same call
    -- re-run after a crash -- sends the same Message-ID; the errand's id leads it, so a
    reply finds its errand: :func:`errand_of`), on the sender's domain."""
    domain = sender.rsplit("@", 1)[-1] or "errands.invalid"
    return f"<errands.{idempotency_key}@{domain}>"


# errands.{errand id}.{request seq}.{call index}@domain; a sub-errand's id is its
# parent's and three numbers (PARENT.SEQ.CALL.K: errands.engine.delegate), a grandchild's six
_OURS = re.compile(r"^<errands\.([A-Za-z0-9_-]{1,64}(?:\.\d{1,12}){0,12})\.\d+\.\d+@[^<>\s]+>$")


def errand_of(message_id: str) -> str | None:
    """The errand that sent *message_id* (None: not one errands sent)."""
    found = _OURS.match(message_id.strip())
    return found.group(1) if found else None


def errand_for_mail(message_id: str) -> str:
    """The id of the errand a mail starts: the same for the same Message-ID, so a mail
    taken twice (a crash before the reader moved on) starts one errand."""
    return "m" + hashlib.sha256(message_id.strip().encode()).hexdigest()[:23]


def thread_headers(in_reply_to: str | None, references: str | None = None) -> dict[str, str]:
    """``In-Reply-To`` and ``References`` for a reply to *in_reply_to* (a Message-ID)."""
    if not in_reply_to:
        return {}
    refs = f"{references} {in_reply_to}".strip() if references else in_reply_to
    return {"In-Reply-To": in_reply_to, "References": refs}


def build_message(
    *,
    sender: str,
    to: list[str],
    cc: list[str],
    subject: str,
    body: str,
    message_id: str,
    in_reply_to: str | None = None,
    when: float | None = None,
) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = formatdate(when, localtime=False)
    msg["Message-ID"] = message_id
    for name, value in thread_headers(in_reply_to).items():
        msg[name] = value
    msg.set_content(body)
    return msg


def parse(raw: bytes) -> Message:
    """A message from its bytes; never raises (defects are noted on the message)."""
    return BytesParser(policy=policy.compat32).parsebytes(raw)


def header_value(msg: Message, name: str) -> str:
    values = msg.get_all(name) or []
    text = " / ".join(_header_text(v) for v in values)
    return text[:MAX_HEADER_CHARS]


def _header_text(value: object) -> str:
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError, AssertionError):
        return str(value).encode("ascii", "replace").decode()


def addresses(msg: Message, *names: str) -> list[str]:
    """The bare addresses in *names* headers, lower-cased."""
    values = [str(v) for n in names for v in (msg.get_all(n) or [])]
    return [a.lower() for _, a in getaddresses(values) if a]


def _decoded(part: Message, notes: list[str]) -> str:
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, TypeError, AssertionError):
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset)
    except LookupError:
        notes.append(f"unknown charset {charset!r}: shown as UTF-8 with replacements")
    except UnicodeDecodeError:
        notes.append(f"the text is not valid {charset}: undecodable bytes replaced")
    return payload.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Rendered:
    text: str
    sender: str


def _attachment_line(part: Message) -> str:
    name = _header_text(part.get_filename() or "") or "(no name)"
    payload = part.get_payload()
    size = len(payload) if isinstance(payload, str | bytes) else 0
    return f"- {name} ({part.get_content_type()}, about {size * 3 // 4:,} bytes encoded)"


def render(raw: bytes, *, size: int, truncated: bool, ident: str) -> Rendered:
    """What read_email shows: the headers, the text (bounded), the attachments listed."""
    notes: list[str] = []
    if truncated:
        notes.append(
            f"the message is {size:,} bytes, more than max_message_bytes: only its "
            "beginning was read; attachments past it are cut off"
        )
    msg = parse(raw)
    if msg.defects:
        notes.append("malformed MIME: " + "; ".join(type(d).__name__ for d in msg.defects[:5]))
    lines = [f"id: {ident}"]
    lines += [f"{h}: {header_value(msg, h)}" for h in SHOWN_HEADERS if msg.get_all(h)]
    plain: list[str] = []
    html: list[str] = []
    attached: list[str] = []
    for part in msg.walk() if msg.is_multipart() else [msg]:
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        if part.get_filename() or part.get_content_disposition() == "attachment":
            attached.append(_attachment_line(part))
        elif kind == "text/plain" or (kind.startswith("text/") and kind != "text/html"):
            plain.append(_decoded(part, notes))
        elif kind == "text/html":
            html.append(_decoded(part, notes))
        else:
            attached.append(_attachment_line(part))
    body = "\n".join(plain) if plain else _html_text("\n".join(html))
    if len(body) > MAX_BODY_CHARS:
        notes.append(f"the text is {len(body):,} characters: the first {MAX_BODY_CHARS:,} shown")
        body = body[:MAX_BODY_CHARS]
    if attached:
        lines += ["attachments (not read):", *attached[:50]]
    if notes:
        lines += [f"note: {n}" for n in notes]
    lines += ["", body]
    return Rendered("\n".join(lines), header_value(msg, "From"))


_TAGS = re.compile(r"<[^>]+>")


def _html_text(html: str) -> str:
    if not html:
        return ""
    try:
        converter = html2text.HTML2Text()
        converter.ignore_images = True
        return str(converter.handle(html))
    except Exception:  # html2text on hostile markup: the bare text instead
        return _TAGS.sub(" ", html)
