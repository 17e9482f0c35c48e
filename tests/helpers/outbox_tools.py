"""A tool module for ``[tools] modules`` in the inbox's tests: ``send_email`` (to, cc,
subject, body), whose sending is a line of JSON appended to ``$ERRANDS_TEST_OUTBOX``.
A real ``errands up`` loads it (with ``PYTHONPATH`` naming the tests folder)."""

from __future__ import annotations

import json
import os

from errands.core.events import EffectClass
from errands.tools.tool import ToolContext
from errands.tools.toolset import FunctionToolset

errands_tools = FunctionToolset()


@errands_tools.tool(
    effect=EffectClass.external,
    roles={"to": "recipient", "cc": "recipient", "subject": "subject", "body": "body"},
)
def send_email(to: list[str], cc: list[str], subject: str, body: str, ctx: ToolContext) -> str:
    """Send an email.

    Args:
        to: Who it goes to.
        cc: Who gets a copy.
        subject: The subject line.
        body: The message, plain text.
    """
    entry = {"to": to, "cc": cc, "subject": subject, "body": body, "errand": ctx.errand_id}
    with open(os.environ["ERRANDS_TEST_OUTBOX"], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    return f"sent to {', '.join(to)}"
