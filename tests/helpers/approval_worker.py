"""A real process for the approval crash tests.

python approval_worker.py HOME LEDGER start [CONTROL]
    create an errand that asks to send, run it until it waits, and print
    ``ERRAND STATE PENDING...`` (the approvals a person can decide now); then wait for a
    line on stdin: ``approve`` grants them, runs the errand on and prints ``ERRAND STATE``
python approval_worker.py HOME LEDGER resume ID [CONTROL]
    run the errand until it stops, print ``ERRAND STATE``

CONTROL names a negative control (a loop from ``seams.controls.LOOPS``). ``ERRANDS_FAULT``
arms the fault points (``seams.faults``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seams.controls import LOOPS, MemoryApprovalsLoop
from seams.faults import arm_from_spec

from errands.config import load_settings
from errands.engine.operations import create_errand
from errands.harness import build
from errands.policy.approvals import Approvals
from errands.policy.rules import Policy
from errands.store.sqlite import SQLiteStore
from helpers.kit import Ledger, call, ledger_registry, script

TURNS = (
    {"text": "sending", "tool_calls": [call("send_message", to="bob", body="hi")]},
    {"text": "sent; done"},
)


async def main(home: str, ledger: str, mode: str, errand_id: str | None, control: str) -> None:
    arm_from_spec(os.environ.get("ERRANDS_FAULT", ""))
    settings = load_settings(home)
    store = SQLiteStore(settings.db_path)
    model = script(*TURNS)
    registry = ledger_registry(Ledger(Path(ledger)))
    harness = build(
        settings,
        store=store,
        toolsets=[registry],
        builtins=False,
        policy=Policy(),
        models=lambda s: model,
    )
    runner = harness.runner(loop_class=LOOPS[control] if control else None)
    if mode == "start":
        errand_id = await create_errand(store, settings, "tell bob hi", model="scripted:demo")
        view = await runner.run_errand(errand_id)
        pending = [p.id for p in await store.pending_approvals()]
        if isinstance(runner.loop, MemoryApprovalsLoop):
            pending += runner.loop.pending()
        print(errand_id, view.state.value, *pending, flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)  # hold on, like a server would
        if line.strip() != "approve":
            return
        if isinstance(runner.loop, MemoryApprovalsLoop):
            await runner.loop.grant(errand_id)
        else:
            for approval_id in pending:
                await Approvals(store, registry).approve(approval_id, by="t", channel="cli")
    assert errand_id is not None
    view = await runner.run_errand(errand_id)
    print(errand_id, view.state.value, flush=True)
    await store.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    mode = args[2]
    errand = args[3] if mode == "resume" else None
    rest = args[4:] if mode == "resume" else args[3:]
    asyncio.run(main(args[0], args[1], mode, errand, rest[0] if rest else ""))
