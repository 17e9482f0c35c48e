"""A call runs with its arguments as the log holds them: a secret the store redacted is
not sent on the first run either (before, only a call run again from the log -- after
an approval or a resume -- got the redacted arguments; the first run used what the
model wrote, secret and all)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers.kit import call, harness_for, script

from errands.config import Settings
from errands.core import events as ev
from errands.core.progress import Progress
from errands.core.states import ErrandState
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.policy.hook import AllowAll
from errands.store import AppendCheck
from errands.store.redact import Redactor
from errands.store.sqlite import SQLiteStore
from errands.tools.toolset import FunctionToolset

SECRET = "s3cr3t-Value-8841"


class FoldsWhatItAsked(Loop):
    """The control: the loop goes on from the events it asked to log."""

    async def _append(
        self, p: Progress, events: Sequence[ev.Event], guard: AppendCheck | None = None
    ) -> list[int]:
        seqs = await self.store.append(p.errand_id, events, owner=self.owner, guard=guard)
        for seq, event in zip(seqs, events, strict=True):
            if seq > p.last_seq:
                p.apply(seq, event)
        return seqs


@pytest.mark.parametrize("loop_class", [None, FoldsWhatItAsked], ids=["guard", "control"])
async def test_a_secret_the_model_wrote_is_not_sent(
    tmp_path: Path, settings: Settings, loop_class: type[Loop] | None
) -> None:
    sent: list[str] = []
    tools = FunctionToolset()

    @tools.tool(effect=ev.EffectClass.external, roles={"body": "body"})
    def post(body: str) -> str:
        """Post something.

        Args:
            body: What.
        """
        sent.append(body)
        return "posted"

    store = SQLiteStore(tmp_path / "s.sqlite", redactor=Redactor({"MY_TOKEN": SECRET}))
    try:
        model = script({"tool_calls": [call("post", body=f"token={SECRET}")]}, {"text": "ok"})
        h = harness_for(store, settings, tools=tools, model=model, policy=AllowAll())
        eid = await create_errand(store, settings, "x", model="scripted:demo")
        view = await asyncio.wait_for(h.runner(loop_class=loop_class).run_errand(eid), 30)
        assert view.state is ErrandState.done
    finally:
        await store.close()
    if loop_class is not None:
        assert sent == [f"token={SECRET}"]  # the secret left on the first run
        return
    assert sent == ["token=[REDACTED:MY_TOKEN]"]
