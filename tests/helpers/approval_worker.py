"""A real process for the approval crash tests.

python approval_worker.py HOME LEDGER start      create an errand that asks to send,
                                                 run it until it waits, print its id, hang
python approval_worker.py HOME LEDGER resume ID  run the errand until it stops, print state
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from errands.config import load_settings
from errands.engine.operations import create_errand
from errands.engine.runner import Runner
from errands.policy.rules import Policy
from errands.store.sqlite import SQLiteStore
from helpers.kit import Ledger, call, ledger_registry, script

TURNS = (
    {"text": "sending", "tool_calls": [call("send_message", to="bob", body="hi")]},
    {"text": "sent; done"},
)


async def main(home: str, ledger: str, mode: str, errand_id: str | None) -> None:
    settings = load_settings(home)
    store = SQLiteStore(settings.db_path)
    model = script(*TURNS)
    runner = Runner(
        store, settings, ledger_registry(Ledger(Path(ledger))), Policy(), models=lambda s: model
    )
    if mode == "start":
        errand_id = await create_errand(store, settings, "tell bob hi", model="scripted:demo")
        view = await runner.run_errand(errand_id)
        print(errand_id, view.state.value, flush=True)
        await asyncio.sleep(3600)  # hold on, like a server would, until killed
    else:
        assert errand_id is not None
        view = await runner.run_errand(errand_id)
        print(errand_id, view.state.value, flush=True)
    await store.close()


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    )
