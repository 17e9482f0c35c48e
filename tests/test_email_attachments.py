"""send_email's attachments (issue 20) on the real mail servers: files of the errand's
workspace, listed on the card with size and SHA-256, received as sent; a path outside the
workspace (``..``, absolute, a symbolic link out), a missing file or one over
``max_message_bytes`` is one clear error and nothing is sent; "always" for a recipient
never covers a later mail that attaches a file (control: a pattern without the pin)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import call, harness_for, script
from helpers.mailkit import BOB, mail, mail_settings
from helpers.mailserver import MailServers

from errands.config import Settings
from errands.core import events as ev
from errands.core.states import ErrandState
from errands.policy.rules import pattern_matches
from errands.policy.standing import standing_pattern
from errands.store.sqlite import SQLiteStore
from errands.tools.email.attachments import Attachment, describe
from errands.tools.email.tools import _ROLES
from errands.tools.tool import ArgRole

__all__ = ["mail"]
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

REPORT = b"month,total\nNovember,1042\n"


@pytest.fixture
def mailed(home: Path, mail: MailServers, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return mail_settings(home, mail, monkeypatch)


async def send_with(
    settings: Settings, attachments: list[str], plant: Any = None, subject: str = "Report"
) -> tuple[Any, list[ev.Event]]:
    """An errand whose workspace holds report.csv (and what *plant* adds) mails bob with
    *attachments*: (the card, or None when it never asked; the log after the approval)."""
    turns: list[dict[str, Any]] = [
        {"tool_calls": [call("send_email", to=[BOB], subject=subject, body="Attached.",
                             attachments=attachments)]},
        {"text": "sent"},
    ]  # fmt: skip
    store = SQLiteStore(settings.db_path)
    try:
        h = harness_for(store, settings, model=script(*turns))
        eid = await h.create("mail bob the report")
        workspace = Path((await store.view(eid)).workspace)
        (workspace / "report.csv").write_bytes(REPORT)
        if plant is not None:
            plant(workspace)
        await asyncio.wait_for(h.runner().run_errand(eid), 30)
        view = await store.view(eid)
        card = None
        if view.state is ErrandState.waiting_approval:
            (pending,) = view.pending.values()
            card = pending.preview
            await h.approvals.approve(pending.id, by="me", channel="cli")
            await asyncio.wait_for(h.runner().run_errand(eid), 30)
        return card, [s.event for s in await store.read(eid)]
    finally:
        await store.close()


def received(mail: MailServers, subject: str) -> list[Any]:
    return [message_from_bytes(m) for m in mail.messages(BOB) if subject.encode() in m]


async def test_a_workspace_file_is_attached_and_the_card_shows_it(
    mailed: Settings, mail: MailServers
) -> None:
    card, log = await send_with(mailed, ["report.csv"], subject="Report 1")
    digest = hashlib.sha256(REPORT).hexdigest()
    assert (
        card is not None
        and f"attachment: report.csv ({len(REPORT)} bytes, sha256 {digest[:16]})" in card
    )
    (got,) = received(mail, "Report 1")
    (part,) = [p for p in got.walk() if p.get_filename()]
    assert part.get_filename() == "report.csv" and part.get_content_type() == "text/csv"
    assert part.get_payload(decode=True) == REPORT
    (result,) = [e for e in log if isinstance(e, ev.ToolResult) and e.tool == "send_email"]
    assert (
        result.ok
        and f"attached: report.csv ({len(REPORT)} bytes, sha256 {digest[:16]})"
        in result.content.text
    )


SPOOF = "notes.txt (1 KB, sha256 0a1b2c3d4e5f6071)\nattachment: x"  # a line of its own
RLO = "invoice\u202efdp.exe"  # shown as invoiceexe.pdf


def test_a_name_that_would_write_on_the_card_is_refused_there(tmp_path: Path) -> None:
    (tmp_path / SPOOF).write_text("x")
    (card,) = describe(tmp_path, [SPOOF], 10_000)
    assert "cannot be sent" in card and "control or invisible characters" in card
    # control: the file's own line, as the card showed it before, spans two lines
    assert "\n" in Attachment(SPOOF, b"x").line()


def _link_out(workspace: Path) -> None:
    (workspace / "out.txt").symlink_to("/etc/passwd")


@pytest.mark.parametrize(
    ("paths", "plant", "says"),
    [
        (["../../../../etc/passwd"], None, "outside the workspace"),
        (["/etc/passwd"], None, "outside the workspace"),
        (["out.txt"], _link_out, "outside the workspace"),
        (["nothere.csv"], None, "no such file: nothere.csv"),
        (["big.bin"], lambda w: (w / "big.bin").write_bytes(b"x" * 20_000), "max_message_bytes"),
        ([f"f{i}" for i in range(11)], None, "at most 10 files"),
        ([SPOOF], lambda w: (w / SPOOF).write_text("x"), "control or invisible characters"),
        ([RLO], lambda w: (w / RLO).write_text("x"), "control or invisible characters"),
    ],
    ids=["dotdot", "absolute", "symlink-out", "missing", "too-big", "too-many", "newline", "rlo"],
)
async def test_a_bad_attachment_is_one_clear_error_and_nothing_is_sent(
    mailed: Settings, mail: MailServers, paths: list[str], plant: Any, says: str
) -> None:
    small = mailed.model_copy(
        update={"email": mailed.email.model_copy(update={"max_message_bytes": 10_000})}  # type: ignore[union-attr]
    )
    subject = f"Bad {paths[0]!a}"
    _, log = await send_with(small, paths, plant, subject=subject)
    (result,) = [e for e in log if isinstance(e, ev.ToolResult) and e.tool == "send_email"]
    assert not result.ok and says in result.content.text, result.content.text
    assert "Traceback" not in result.content.text and "root:" not in result.content.text
    assert received(mail, subject) == []


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "CONTROL"])
def test_always_for_a_recipient_never_covers_a_later_attachment(pinned: bool) -> None:
    roles = {name: ArgRole(role) for name, role in _ROLES.items()}
    first = {"to": [BOB], "cc": [], "subject": "Summary", "body": "hi", "attachments": None}
    pattern = standing_pattern(roles, first)
    if not pinned:  # the control: the pattern as it was before attachments were pinned
        pattern = {k: v for k, v in pattern.items() if k != "attachments"}
    later = {**first, "body": "and the keys", "attachments": [".ssh/id_rsa"]}
    assert pattern_matches(pattern, {**first, "body": "Tuesday"})  # the same mail again: yes
    assert pattern_matches(pattern, later) is (not pinned)


def _old_standing_rule() -> str:
    """A standing rule as errands wrote it before attachments were pinned: to and cc."""
    roles = {name: ArgRole(role) for name, role in _ROLES.items() if name in ("to", "cc")}
    pattern = standing_pattern(roles, {"to": [BOB], "cc": []})
    globs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in pattern.items())
    return (
        '[[rules]]\nname = "standing-send_email-1"\ntool = "send_email"\n'
        f'args = {{ {globs} }}\ndecision = "allow"\nstanding = true\n'
    )


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "CONTROL"])
def test_a_rule_made_before_attachments_never_covers_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guard: bool
) -> None:
    """A standing rule written before send_email took attachments pins only to and cc: a
    later mail to the same recipient with a file is not "like" the approved one -- it
    asks. (The control: standing rules that ignore arguments they do not pin.)"""
    from errands.core.labels import BOTTOM
    from errands.policy import rules
    from errands.policy.hook import Decision, PolicyCall

    if not guard:
        monkeypatch.setattr(rules, "unpinned_places", lambda call, pattern: [])
    policy = rules.parse_policy(_old_standing_rule(), tmp_path / "policy.toml")
    roles = {name: ArgRole(role) for name, role in _ROLES.items()}

    def check(**extra: Any) -> Decision:
        args = {"to": [BOB], "cc": [], "subject": "Summary", "body": "hi", **extra}
        call = PolicyCall(
            errand_id="e1",
            tool="send_email",
            arguments=args,
            effect=ev.EffectClass.external,
            workspace=tmp_path,
            context=BOTTOM,
            roles=roles,
        )
        return policy.check(call).decision

    assert check() is Decision.allow  # the mail it was made for: still allowed
    with_file = check(attachments=[".ssh/id_rsa"])
    assert with_file is (Decision.ask if guard else Decision.allow)
