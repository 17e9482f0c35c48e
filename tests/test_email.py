"""Email (issue 20): the tools on a real Dovecot and a real SMTP server, end to end with
a scripted model -- search, read, draft, send with approval; what the card shows; an
injected mail's recipient asks, naming the mail; bad mail and bad servers give clear
results. Mail servers: ``helpers.mailserver`` (no mocks of IMAP or SMTP)."""

from __future__ import annotations

import asyncio
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import call, harness_for, script
from helpers.mailkit import BOB, ERRANDS, ME, a_mail, mail, mail_settings
from helpers.mailserver import MailServers

from errands.config import Settings
from errands.core import events as ev
from errands.core.states import ErrandState
from errands.harness import Harness
from errands.store.sqlite import SQLiteStore

__all__ = ["mail"]  # (the module-scoped fixture)


@pytest.fixture
def mailed(home: Path, mail: MailServers, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return mail_settings(home, mail, monkeypatch)


async def run(h: Harness, eid: str) -> list[ev.Event]:
    await asyncio.wait_for(h.runner().run_errand(eid), 30)
    return [s.event for s in await h.store.read(eid)]


def results(log: list[ev.Event], tool: str) -> list[ev.ToolResult]:
    return [e for e in log if isinstance(e, ev.ToolResult) and e.tool == tool]


async def approve_all(h: Harness, eid: str) -> None:
    view = await h.store.view(eid)
    assert view.state is ErrandState.waiting_approval
    for pending in view.pending.values():
        await h.approvals.approve(pending.id, by="me", channel="cli")


def inbox_ids(mail: MailServers, subject: str) -> list[str]:
    with mail.imap(ERRANDS) as c:
        return [f"INBOX:{u}" for u in c.search(["SUBJECT", subject])]


async def test_search_read_draft_then_send_with_approval(
    mailed: Settings, mail: MailServers
) -> None:
    mail.deliver(
        a_mail(BOB, "Lunch on Friday?", "Are you free for lunch on Friday at 1?"), [ERRANDS]
    )
    (ident,) = inbox_ids(mail, "Lunch on Friday")
    turns: list[dict[str, Any]] = [
        {"tool_calls": [call("search_email", query="lunch")]},
        {"tool_calls": [call("read_email", id=ident)]},
        {"tool_calls": [call("draft_email", to=[BOB], subject="Re: Lunch", body="Yes, 1pm.")]},
        {"tool_calls": [call("send_email", to=[BOB], cc=[ME], subject="Re: Lunch on Friday?",
                             body="Yes, see you at 1pm.\n-- sent by errands",
                             in_reply_to="<lunch-1@test.example>")]},
        {"text": "Replied to Bob."},
    ]  # fmt: skip
    store = SQLiteStore(mailed.db_path)
    try:
        h = harness_for(store, mailed, model=script(*turns))
        eid = await h.create("answer Bob's lunch mail")
        log = await run(h, eid)
        (found,) = results(log, "search_email")
        assert ident in found.content.text and "Lunch on Friday?" in found.content.text
        assert found.content.integrity.value == "untrusted"
        (read,) = results(log, "read_email")
        assert read.content.integrity.value == "untrusted"
        assert f"From: {BOB}" in read.content.text and "free for lunch" in read.content.text
        assert read.content.provenance.source and BOB in read.content.provenance.source
        (draft,) = results(log, "draft_email")
        assert draft.ok and "saved (not sent)" in draft.content.text
        # the send waits; the card shows everything that will leave
        view = await store.view(eid)
        (pending,) = view.pending.values()
        assert pending.tool == "send_email" and pending.effect == "external"
        card = pending.preview
        for shown in (f"from: errands <{ERRANDS}>", f"to: {BOB}", f"cc: {ME}",
                      "subject: Re: Lunch on Friday?", "Yes, see you at 1pm.\n-- sent by errands",
                      "in reply to: <lunch-1@test.example>"):  # fmt: skip
            assert shown in card, (shown, card)
        assert mail.messages(BOB) == []  # nothing left before the yes
        await approve_all(h, eid)
        log = await run(h, eid)
        assert (await store.view(eid)).state is ErrandState.done
    finally:
        await store.close()
    (got,) = [message_from_bytes(m) for m in mail.messages(BOB)]
    (copy,) = [message_from_bytes(m) for m in mail.messages(ME)]
    assert (
        got["Subject"] == "Re: Lunch on Friday?" and got["In-Reply-To"] == "<lunch-1@test.example>"
    )
    assert got["Message-ID"] == copy["Message-ID"] and got["Message-ID"].startswith("<errands.")
    (sent,) = [message_from_bytes(m) for m in mail.messages(ERRANDS, "Sent")]
    assert sent["Message-ID"] == got["Message-ID"]  # filed in Sent, no longer marked pending
    with mail.imap(ERRANDS, "Sent") as c:
        flags = c.get_flags(c.search("ALL"))
    assert all(b"$ErrandsSending" not in f for f in flags.values())
