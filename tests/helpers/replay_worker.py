"""A real process for the reasoning-replay restart tests (tests/test_reasoning_replay.py).

python replay_worker.py HOME LEDGER start MODEL
    create an errand that asks to send a message, run it with MODEL (a spec the home's
    errands.toml resolves: a provider's wire simulator, reached by its base URL) until it
    waits for approval, and print ``ERRAND STATE APPROVAL...``; then hold on, as a
    server would, until stdin closes (the test kills it first)
python replay_worker.py HOME LEDGER resume ID
    run the errand until it stops; print ``ERRAND STATE`` (and the reason on stderr)

errands is wired by ``harness.build`` from the home's config, with the ledger tools of
``helpers.kit`` only. A negative control comes from ``seams.child_env(controls=[...])``:
the runner uses whatever loop class ``Runner`` has (a control replaces it).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from errands.config import load_settings
from errands.harness import build
from errands.policy.rules import Policy
from helpers.kit import Ledger, ledger_registry


async def main(home: str, ledger: str, mode: str, arg: str) -> None:
    harness = build(
        load_settings(home),
        toolsets=[ledger_registry(Ledger(Path(ledger)))],
        builtins=False,
        policy=Policy(),
    )
    runner = harness.runner()
    if mode == "start":
        errand_id = await harness.create("tell bob hi", model=arg)
        view = await runner.run_errand(errand_id)
        pending = [p.id for p in await harness.store.pending_approvals()]
        print(errand_id, view.state.value, *pending, flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # waits here to be killed
    else:
        view = await runner.run_errand(arg)
        print(view.id, view.state.value, flush=True)
        print(view.reason, file=sys.stderr, flush=True)
    await harness.close()


if __name__ == "__main__":
    home, ledger, mode, arg = sys.argv[1:5]
    asyncio.run(main(home, ledger, mode, arg))
