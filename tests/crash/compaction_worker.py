"""A worker process for :mod:`tests.test_compaction_crash`: runs (or resumes) one
archive-reading errand against the OpenAI simulator the test runs, with a small context
window, so that it compacts. Run as ``python compaction_worker.py HOME BASE_URL API_KEY
ERRAND_ID CHARS WINDOW``; a fault spec in ``ERRANDS_FAULT`` (through
``seams.child_env``) kills it wherever the test says. Prints the errand's final state.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/

from backends import backend
from helpers.kit import harness_for
from test_compaction import SPEC, archive_tools, small_window

from errands.config import load_settings
from errands.engine.operations import create_errand
from errands.errors import NotFound
from errands.models.providers.openai_chat import OpenAIChatModel
from errands.policy.hook import AllowAll


async def main(home: Path, base_url: str, key: str, eid: str, chars: int, window: int) -> str:
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
        view = await harness.runner().run_errand(eid)
        return view.state.value
    finally:
        await store.close()


if __name__ == "__main__":
    home, url, key, eid, chars, window = sys.argv[1:7]
    state = asyncio.run(main(Path(home), url, key, eid, int(chars), int(window)))
    print(state)
