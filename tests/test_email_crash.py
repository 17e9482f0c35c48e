"""Send once (issue 20): a real worker process is SIGKILLed mid-send, on a real SMTP
server and Dovecot; the recipient's mailbox, read over IMAP, is the judge.

- killed after the SMTP server accepted the mail and the copy in Sent was marked, before
  the result was logged: the next run finds the Message-ID in Sent and does not send
  again -- the recipient has it once. Control (``no-sent-check``: errands does not look
  in Sent): it goes out twice.
- killed after the server's 250 but before the copy in Sent is marked, or while the SMTP
  transaction was open (the server had the mail, errands never heard its 250): the next
  run finds the copy marked ``$ErrandsSending`` -- in doubt -- sends nothing and stops in
  ``needs_attention``: once.
- without IMAP (nothing to look in), the send in doubt stops the errand in
  ``needs_attention``, as any call that is not safe to run twice: once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import call, harness_for, script
from helpers.mailkit import BOB, mail, mail_settings
from helpers.mailserver import MailServers
from seams import child_env

from errands.core import events as ev
from errands.core.states import ErrandState
from errands.store.sqlite import SQLiteStore

__all__ = ["mail"]
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

WORKER = Path(__file__).parent / "helpers" / "mail_worker.py"


def turns(subject: str) -> list[dict[str, Any]]:
    return [
        {"tool_calls": [call("send_email", to=[BOB], subject=subject, body="The invoice.")]},
        {"text": "sent"},
    ]


def worker(
    home: Path,
    eid: str,
    script_file: Path,
    variant: str,
    fault: str | None,
    mail: MailServers | None = None,
) -> int:
    """Run the worker to its end; with *mail*, SIGKILL it when the SMTP server has the
    whole mail and has delivered it, before it answers 250."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(home), eid, str(script_file), variant],
        env=child_env(fault=fault), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if mail is not None:
        mail.relay.handler.on_data = lambda envelope: proc.kill()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if mail is not None:
            mail.relay.handler.on_data = None
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(err[-3000:])
    return proc.returncode


def received(mail: MailServers, subject: str) -> int:
    return sum(1 for m in mail.messages(BOB) if message_from_bytes(m)["Subject"] == subject)


async def approved_errand(home: Path, subject: str) -> tuple[str, Path]:
    """An errand whose send_email a person approved; not yet run on."""
    from errands.config import load_settings

    settings = load_settings(home)
    script_file = home / "turns.json"
    script_file.write_text(json.dumps(turns(subject)))
    store = SQLiteStore(settings.db_path)
    try:
        h = harness_for(store, settings, model=script(*turns(subject)))
        eid = await h.create("send bob the invoice")
        await asyncio.wait_for(h.runner().run_errand(eid), 30)
        (pending,) = (await store.view(eid)).pending.values()
        await h.approvals.approve(pending.id, by="me", channel="cli")
    finally:
        await store.close()
    return eid, script_file


async def outcome(home: Path, eid: str) -> tuple[ErrandState, list[ev.ToolResult]]:
    from errands.config import load_settings

    store = SQLiteStore(load_settings(home).db_path)
    try:
        log = [s.event for s in await store.read(eid)]
        return (await store.view(eid)).state, [
            e for e in log if isinstance(e, ev.ToolResult) and e.tool == "send_email"
        ]
    finally:
        await store.close()


@pytest.mark.parametrize("variant", ["", "no-sent-check"], ids=["guard", "control"])
async def test_a_send_killed_before_its_result_is_logged_arrives_once(
    home: Path, mail: MailServers, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    mail_settings(home, mail, monkeypatch)
    subject = f"invoice {variant or 'guard'}"
    eid, script_file = await approved_errand(home, subject)
    assert worker(home, eid, script_file, variant, "after_effect:1") == -signal.SIGKILL
    assert received(mail, subject) == 1  # it left before the kill
    assert worker(home, eid, script_file, variant, None) == 0
    state, (result,) = await outcome(home, eid)
    assert state is ErrandState.done
    if variant:  # the control: nothing looked in Sent, so it went out again
        assert received(mail, subject) == 2
        return
    assert received(mail, subject) == 1
    assert result.ok and "not sent again" in result.content.text


async def test_a_send_killed_between_the_250_and_the_mark_is_in_doubt_not_resent(
    home: Path, mail: MailServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    mail_settings(home, mail, monkeypatch)
    subject = "invoice mid"
    eid, script_file = await approved_errand(home, subject)
    assert worker(home, eid, script_file, "kill-before-mark", None) == -signal.SIGKILL
    assert worker(home, eid, script_file, "", None) == 0
    assert received(mail, subject) == 1
    state, (result,) = await outcome(home, eid)
    assert not result.ok and result.error_kind == "in_doubt"
    assert "not sent again on its own" in result.content.text
    assert state is ErrandState.needs_attention  # a person checks before anything else


async def test_a_send_killed_before_the_server_answered_250_is_in_doubt_not_resent(
    home: Path, mail: MailServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while the SMTP transaction was open (the server had the mail, the client
    never heard its answer): the Sent copy is still marked, so the next run stops in
    needs_attention -- the recipient has the mail once."""
    mail_settings(home, mail, monkeypatch)
    subject = "invoice in data"
    eid, script_file = await approved_errand(home, subject)
    assert worker(home, eid, script_file, "", None, mail=mail) == -signal.SIGKILL
    assert worker(home, eid, script_file, "", None) == 0
    assert received(mail, subject) == 1
    state, (result,) = await outcome(home, eid)
    assert state is ErrandState.needs_attention and result.error_kind == "in_doubt"


async def test_without_imap_a_send_in_doubt_needs_attention(
    home: Path, mail: MailServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    mail_settings(home, mail, monkeypatch, imap=False)
    subject = "invoice no imap"
    eid, script_file = await approved_errand(home, subject)
    assert worker(home, eid, script_file, "", "after_effect:1") == -signal.SIGKILL
    assert worker(home, eid, script_file, "", None) == 0
    assert received(mail, subject) == 1
    state, (result,) = await outcome(home, eid)
    assert state is ErrandState.needs_attention and result.error_kind == "in_doubt"
    assert os.environ.get("ERRANDS_FAULT") is None
