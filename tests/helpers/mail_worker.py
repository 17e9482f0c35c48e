"""A real worker process for the email crash tests (``tests/test_email_crash.py``).

python mail_worker.py HOME ERRAND SCRIPT [VARIANT]

Runs the errand with errands' email tools (``[email]`` of HOME's config) and the
scripted model whose turns are in the JSON file SCRIPT, until it stops, then prints its
state. ``ERRANDS_FAULT`` (``seams.faults``) kills it at a fault point. VARIANT, injected
by the test, never read by errands:

- ``no-sent-check``: the negative control -- an outbox that never finds a mail in Sent
  (as if errands did not look before sending again);
- ``kill-before-mark``: SIGKILL once the SMTP server said 250 but before the copy in Sent
  is marked sent (the send is then in doubt).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imapclient import IMAPClient
from seams.faults import arm_from_spec

from errands.config import load_settings
from errands.harness import build
from errands.store.sqlite import SQLiteStore
from errands.tools.email.outbox import Outbox, Settled
from errands.tools.email.tools import email_toolset
from helpers.kit import script


class NoSentCheck(Outbox):
    """The control: a send in doubt is never found in Sent, so it goes out again."""

    def settled(self, imap: IMAPClient, message_id: str) -> tuple[Settled, list[int]]:
        return "absent", []


class KillBeforeMark(Outbox):
    def _mark_sent(self, imap: IMAPClient, uid: int, message_id: str) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


VARIANTS: dict[str, type[Outbox]] = {
    "": Outbox,
    "no-sent-check": NoSentCheck,
    "kill-before-mark": KillBeforeMark,
}


async def main(home: str, errand_id: str, turns_file: str, variant: str) -> None:
    arm_from_spec(os.environ.get("ERRANDS_FAULT", ""))
    settings = load_settings(home)
    assert settings.email is not None
    model = script(*json.loads(Path(turns_file).read_text()))
    store = SQLiteStore(settings.db_path)
    tools = email_toolset(settings.email, outbox=VARIANTS[variant](settings.email))
    harness = build(settings, store=store, toolsets=[tools], builtins=False, models=lambda s: model)
    try:
        view = await harness.runner().run_errand(errand_id)
        print(view.state.value, flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4], sys.argv[4] if len(sys.argv) > 4 else ""))
