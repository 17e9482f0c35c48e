"""A worker process for :mod:`tests.test_compaction_crash`: runs (or resumes) one
archive-reading errand against the OpenAI simulator the test runs, with a small context
window, so that it compacts. Run as ``python compaction_worker.py HOME BASE_URL API_KEY
ERRAND_ID CHARS WINDOW [control]``; a fault spec in ``ERRANDS_FAULT`` (through
``seams.child_env``) kills it wherever the test says. Prints the errand's final state.

``control``: the negative control :class:`InMemoryCount` decides when to compact.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/

from backends import backend
from helpers.kit import harness_for
from test_compaction import SPEC, archive_tools, small_window

from errands.config import load_settings
from errands.core.progress import Progress
from errands.engine.context import Context, _tokens
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.errors import NotFound
from errands.models.protocol import ModelRequest
from errands.models.providers.openai_chat import OpenAIChatModel
from errands.policy.hook import AllowAll


class InMemoryCount(Context):
    """Negative control: keeps its running token count in the process -- what the
    messages it saw added come to -- instead of deriving it from the log. A resumed
    process counts from zero, so it compacts at other points than a run that went
    through."""

    counted: ClassVar[dict[str, tuple[int, int]]] = {}  # errand -> (messages, tokens)

    def over(self, p: Progress, request: ModelRequest) -> bool:
        window = self.window(p.view.model)
        if window is None:
            return False
        n, tokens = self.counted.get(p.errand_id, (len(p.messages), 0))
        tokens += sum(_tokens(m) for m in p.messages[n:])
        self.counted[p.errand_id] = (len(p.messages), tokens)
        return tokens > self.settings.context.compact_at * window


class ControlLoop(Loop):
    context_class = InMemoryCount


async def main(
    home: Path, base_url: str, key: str, eid: str, chars: int, window: int, control: bool
) -> str:
    settings = small_window(load_settings(home), window)
    store = backend("sqlite").open(home, None)
    try:
        model = OpenAIChatModel("gpt-test", base_url=base_url, api_key=key)
        harness = harness_for(
            store, settings, tools=archive_tools(chars), model=model, policy=AllowAll()
        )
        try:
            await store.view(eid)
        except NotFound:
            await create_errand(store, settings, "Read the archive.", model=SPEC, errand_id=eid)
        runner = harness.runner(loop_class=ControlLoop if control else None)
        view = await runner.run_errand(eid)
        return view.state.value
    finally:
        await store.close()


if __name__ == "__main__":
    home, url, key, eid, chars, window = sys.argv[1:7]
    control = sys.argv[7:] == ["control"]
    state = asyncio.run(main(Path(home), url, key, eid, int(chars), int(window), control))
    print(state)
