"""A worker process for the crash torture (:mod:`tests.test_crash_torture`).

Run as ``python worker.py --dir ROUND_DIR [--owner NAME] [--lease-ttl S]``. It opens the
store in ``ROUND_DIR/errands.sqlite``, runs every unsettled errand there with a
scripted model, a registry of *ledger tools* and a policy that asks a person before
``ledger_approved``, and exits 0 once every errand is settled (done, failed, cancelled
or needs_attention; a person -- the test -- grants approvals meanwhile), or dies by
SIGKILL wherever the test (or ``ERRANDS_FAULT``) says. ``--owner`` restarts a worker
under a stable name (it takes its own leases back at once); without it each process
is a new owner. ``python worker.py --fork-server`` starts workers by fork instead (see
:func:`serve_forks`).

Everything the checker needs is appended to ``ROUND_DIR/journal.log`` (one line per
record, ``O_APPEND``, written before the step it describes returns to the loop). The
journal is *outside the store*: it plays the outside world (the ledger the tools
change) and the observer of what the store acknowledged. Lines, space separated:

``start PID OWNER FAULT``           the worker is up (FAULT is the ERRANDS_FAULT spec or -)
``load ERRAND LAST_SEQ PID``        the loop read the whole log of ERRAND (a run starts)
``ack ERRAND SEQ TYPE HASH PID``    ``store.append`` returned: this event is durable
``model ERRAND K PID``              the model was asked for turn K (K assistant messages)
``effect TOOL ERRAND IKEY KEY PID OUTCOME``  a ledger tool ran (OUTCOME applied | dedup)
``hit POINT N PID``                 the fault point POINT is about to kill us (pass N)
``grant ERRAND SEQ``                the approver (the test process) granted approval SEQ
``error ERRAND PID MESSAGE``        an errand's loop raised
``exit PID``                        clean exit

``effect`` and ``hit`` lines are fsynced (the ledger of the outside world). The other
lines are not: this torture kills processes, not machines, and the page cache
survives SIGKILL.

The tools, by how the harness may treat them after a crash:

- ``ledger_idem``     idempotent: may run again; every run is one ``applied`` line;
- ``ledger_keyed``    not idempotent, honours the idempotency key: a second run with a
                      key already in the ledger changes nothing (``dedup``);
- ``ledger_once``     not idempotent, ignores keys: two ``applied`` lines for one call
                      are a duplicated effect -- the thing the outbox exists to prevent;
- ``ledger_approved`` like ``ledger_keyed``, but the policy asks a person first.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import json
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: seams, helpers

from backends import store_in
from seams.controls import install
from seams.faults import arm_from_spec

from errands.config import Settings
from errands.core import events as ev
from errands.core.events import EffectClass
from errands.core.states import RUNNABLE, TERMINAL, ErrandState
from errands.engine.runner import Runner
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.models.scripted import Script, ScriptedModel
from errands.policy.hook import Decision
from errands.policy.rules import Policy, Rule
from errands.store import AppendCheck, Store, StoredEvent
from errands.tools.tool import ToolContext
from errands.tools.toolset import FunctionToolset

__all__ = [
    "APPROVED_TOOL",
    "FINAL_TEXT",
    "MODEL_SPEC",
    "NON_IDEMPOTENT",
    "SCRIPT",
    "SETTLED",
    "VARIANTS",
    "Journal",
    "Lines",
    "errand_text",
    "event_hash",
]

MODEL_SPEC = "scripted:demo"  # a spec create_errand accepts; the worker supplies the model
VARIANTS = ("A", "B", "C")
APPROVED_TOOL = "ledger_approved"
NON_IDEMPOTENT = frozenset({"ledger_once"})  # neither idempotent nor honouring keys
SETTLED = frozenset({*TERMINAL, ErrandState.needs_attention})


def errand_text(variant: str, i: int) -> str:
    return f"Torture errand {i} [variant {variant}]: record things in the ledger."


def _call(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "arguments": {"key": key}}


def _by_variant(**turns: dict[str, Any]) -> dict[str, Any]:
    return {"cases": [{"when_seen": f"[variant {v}]", **t} for v, t in turns.items()]}


FINAL_TEXT = {
    "A": "Variant A is done: recorded a0, applied a1, sent a2, approved x2, then a4 and a5.",
    "B": "Variant B is done: sent b0, applied b1, recorded b2, approved x2, sent b4.",
    "C": "Variant C is done: c0, c1 and c2 together, approved c3 and x2, then c5 and c6.",
}

# Turn k is used when the request holds k assistant messages (see ScriptedModel). Every
# turn has text, so every turn streams (the mid_stream window); parallel calls in one
# turn exercise concurrent execution and group commits; C's last turn runs a call while
# another one of the same turn waits for its approval.
SCRIPT: dict[str, Any] = {
    "name": "torture",
    "turns": [
        _by_variant(
            A={
                "text": "Starting A with two things at once.",
                "tool_calls": [_call("ledger_idem", "a0"), _call("ledger_keyed", "a1")],
            },
            B={"text": "Starting B with the one-shot.", "tool_calls": [_call("ledger_once", "b0")]},
            C={
                "text": "Starting C with three calls in parallel.",
                "tool_calls": [
                    _call("ledger_idem", "c0"),
                    _call("ledger_once", "c1"),
                    _call("ledger_keyed", "c2"),
                ],
            },
        ),
        _by_variant(
            A={"text": "Now the one-shot send.", "tool_calls": [_call("ledger_once", "a2")]},
            B={
                "text": "Two more, side by side.",
                "tool_calls": [_call("ledger_keyed", "b1"), _call("ledger_idem", "b2")],
            },
            C={"text": "This one needs a yes.", "tool_calls": [_call(APPROVED_TOOL, "c3")]},
        ),
        {
            "text": "Asking for approval before the send.",
            "tool_calls": [_call(APPROVED_TOOL, "x2")],
        },
        _by_variant(
            A={
                "text": "Last two records.",
                "tool_calls": [_call("ledger_idem", "a4"), _call("ledger_keyed", "a5")],
            },
            B={"text": "One more send.", "tool_calls": [_call("ledger_once", "b4")]},
            C={
                "text": "One record, and one more send that needs a yes.",
                "tool_calls": [_call("ledger_idem", "c5"), _call(APPROVED_TOOL, "c6")],
            },
        ),
        _by_variant(**{v: {"text": FINAL_TEXT[v]} for v in VARIANTS}),
    ],
}


def event_hash(event: ev.Event) -> str:
    return hashlib.sha256(event.model_dump_json().encode()).hexdigest()[:16]


class Journal:
    """Append-only lines; each line is one ``write`` on an ``O_APPEND`` descriptor,
    framed ``^ FIELDS $``. A SIGKILL can cut a write short where the line crosses a page
    (Linux checks for a fatal signal between the pages it copies), leaving a torn line
    without its newline; the next line appended then follows it on the same text line.
    The frame lets the reader skip the torn part (:meth:`test_crash_torture.Journal.read`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pid = os.getpid()

    def write(self, *fields: object, sync: bool = False) -> None:
        body = " ".join(str(f).replace(" ", "_").replace("\n", "_") for f in fields)
        os.write(self.fd, f"^ {body} $\n".encode())
        if sync:
            os.fsync(self.fd)


# ------------------------------------------------------------------ the ledger tools


def build_registry(journal: Journal) -> FunctionToolset:
    reg = FunctionToolset()
    lock = threading.Lock()  # parallel calls run in threads; processes take the flock
    lock_path = journal.path.with_suffix(".lock")

    def applied(tool: str, ikey: str) -> bool:
        with open(journal.path, encoding="utf-8") as fh:
            for raw in fh:
                raw = raw.rstrip("\n")
                start = raw.rfind("^ ")
                if start < 0 or not raw.endswith(" $"):
                    continue  # a torn line (see Journal)
                f = raw[start + 2 : -2].split()
                if f[:2] == ["effect", tool] and f[3] == ikey and f[6] == "applied":
                    return True
            return False

    def record(tool: str, ctx: ToolContext, key: str, *, dedupe: bool) -> str:
        with lock, open(lock_path, "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            seen = dedupe and applied(tool, ctx.idempotency_key)
            outcome = "dedup" if seen else "applied"
            journal.write(
                "effect",
                tool,
                ctx.errand_id,
                ctx.idempotency_key,
                key,
                journal.pid,
                outcome,
                sync=True,
            )
        return outcome

    @reg.tool(effect=EffectClass.write_local, idempotent=True)
    def ledger_idem(key: str, ctx: ToolContext) -> str:
        """Record KEY in the ledger (idempotent: recording twice is harmless)."""
        record("ledger_idem", ctx, key, dedupe=False)
        return f"recorded {key}"

    @reg.tool(effect=EffectClass.external, honours_idempotency_key=True)
    def ledger_keyed(key: str, ctx: ToolContext) -> str:
        """Apply KEY to the ledger once per idempotency key."""
        record("ledger_keyed", ctx, key, dedupe=True)
        return f"applied {key}"  # the same answer for a deduplicated retry

    @reg.tool(effect=EffectClass.external)
    def ledger_once(key: str, ctx: ToolContext) -> str:
        """Send KEY: every run is an effect, keys or not."""
        record("ledger_once", ctx, key, dedupe=False)
        return f"sent {key}"

    @reg.tool(effect=EffectClass.external, honours_idempotency_key=True, name=APPROVED_TOOL)
    def ledger_approved(key: str, ctx: ToolContext) -> str:
        """Apply KEY after a person said yes (deduplicated by the idempotency key)."""
        record(APPROVED_TOOL, ctx, key, dedupe=True)
        return f"approved {key}"

    return reg


def build_policy() -> Policy:
    """Everything runs without asking except ``ledger_approved``."""
    return Policy(
        effects={e: Decision.allow for e in EffectClass},
        rules=[Rule(name="torture-asks", tool=APPROVED_TOOL, decision=Decision.ask)],
    )


# ------------------------------------------------------------------ observers


class JournalModel:
    """The scripted model, noting each request (errand, turn) before answering."""

    def __init__(self, inner: ScriptedModel, journal: Journal) -> None:
        self.inner = inner
        self.name = inner.name
        self.journal = journal

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        k = sum(1 for m in request.messages if m.role == "assistant")
        self.journal.write("model", request.errand_id, k, self.journal.pid)
        return await self.inner.complete(request, on_text)


class Acking:
    """Mixed into the round's store (SQLite, or PostgreSQL: tests/backends.py): notes
    every append it acknowledged and every full read."""

    journal: Journal

    async def append(
        self,
        errand_id: str,
        events: Sequence[ev.Event],
        *,
        owner: str | None = None,
        guard: AppendCheck | None = None,
        stored: list[ev.Event] | None = None,
    ) -> list[int]:
        logged: list[ev.Event] = []
        seqs: list[int] = await super().append(  # type: ignore[misc]
            errand_id, events, owner=owner, guard=guard, stored=logged
        )
        if stored is not None:
            stored.extend(logged)
        # no await between the commit's acknowledgement and these lines: the caller
        # learns of the append only after they are written
        for seq, event in zip(seqs, logged, strict=True):
            self.journal.write(
                "ack", errand_id, seq, event.type, event_hash(event), self.journal.pid
            )
        return seqs

    async def read(self, errand_id: str, after: int = 0) -> list[StoredEvent]:
        out: list[StoredEvent] = await super().read(errand_id, after)  # type: ignore[misc]
        if after == 0:
            self.journal.write("load", errand_id, out[-1].seq if out else 0, self.journal.pid)
        return out


def acking_store(root: Path, journal: Journal) -> Store:
    """The round's store (its backend as the round made it), acking into *journal*."""
    kind, target = store_in(root)
    store = type(f"Acking{kind.__name__}", (Acking, kind), {})(target)
    store.journal = journal
    return store  # type: ignore[no-any-return]


def arm(journal: Journal) -> None:
    """Arm the fault points as ``ERRANDS_FAULT`` says, noting ``hit POINT N`` (fsynced)
    just before the kill; install the negative controls ``ERRANDS_TEST_CONTROLS`` names."""
    arm_from_spec(
        os.environ.get("ERRANDS_FAULT", ""),
        on_hit=lambda point, n: journal.write("hit", point, n, journal.pid, sync=True),
    )
    install(filter(None, os.environ.get("ERRANDS_TEST_CONTROLS", "").split(",")))


# ------------------------------------------------------------------ the worker


class TortureRunner(Runner):
    def start(self, errand_id: str) -> None:
        super().start(errand_id)
        task = self.tasks.get(errand_id)
        if task is not None:
            task.add_done_callback(lambda t: self._check(errand_id, t))

    def _check(self, errand_id: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        text = "".join(traceback.format_exception(exc))
        print(f"errand {errand_id} raised:\n{text}", file=sys.stderr, flush=True)
        journal = self.store.journal  # type: ignore[attr-defined]
        journal.write("error", errand_id, journal.pid, f"{type(exc).__name__}:{exc}"[:300])


async def _settled(store: Store) -> bool:
    return all(v.state in SETTLED for v in await store.list_errands(limit=1_000_000))


async def work(
    root: Path, lease_ttl: float, owner: str | None = None, shared: bool = False
) -> None:
    journal = Journal(root / "journal.log")
    arm(journal)
    store = acking_store(root, journal)
    if shared:  # one of several workers on the store at once, as ``errands up --workers N``
        store.share_writes()
    model = JournalModel(
        ScriptedModel(Script.model_validate(SCRIPT), name="scripted:torture"), journal
    )
    runner = TortureRunner(
        store,
        Settings(home=root),
        build_registry(journal),
        build_policy(),
        models=lambda spec: model,
        owner=owner,
        lease_ttl=lease_ttl,
        on_text=lambda errand_id, delta: None,  # a listener, so replies stream (mid_stream)
    )
    journal.write("start", journal.pid, runner.owner, os.environ.get("ERRANDS_FAULT") or "-")
    print("ready", flush=True)
    if owner is not None:
        # a restarted worker with a stable name takes its own leases back at once
        for view in await store.list_errands(states=list(RUNNABLE), limit=1_000_000):
            if await store.acquire(view.id, runner.owner, lease_ttl):
                runner.start(view.id)
    # the errands of a dead worker with another name are claimed by serve() as soon as
    # their leases expire
    stop = asyncio.Event()
    serving = asyncio.create_task(runner.serve(stop, poll=0.05))
    while not serving.done():
        await asyncio.sleep(0.05)
        if not runner.tasks and await _settled(store):
            break
    stop.set()
    await serving
    await store.close()
    journal.write("exit", journal.pid)


# ------------------------------------------------------------------ the fork server


class Lines:
    """Lines from a pipe, read without blocking past a timeout (no read-ahead surprises:
    ``select`` sees exactly what is not yet consumed)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def next(self, timeout: float | None) -> str | None:
        while b"\n" not in self.buf and not self.eof:
            readable, _, _ = select.select([self.fd], [], [], timeout)
            if not readable:
                return None
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.buf += chunk
        if b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            return line.decode()
        return None


def serve_forks() -> int:
    """Start workers fast: this process imports everything once, then forks a worker
    per request. Requests are JSON lines on stdin (``dir``, ``lease_ttl``, ``owner``,
    ``fault``, ``controls``, ``stderr``); while the worker runs, the line ``kill`` sends
    it SIGKILL. Answers on stdout: ``pid N``, the worker's own ``ready``, and ``exit N
    CODE`` (negative: killed by that signal). Workers run one at a time; this process
    holds no threads, stores or event loops when it forks, and it alone reaps its
    workers, so a kill can never reach a recycled pid."""
    commands = Lines(sys.stdin.fileno())
    while (line := commands.next(None)) is not None:
        if line == "kill":
            continue  # for a worker that had exited already
        request = json.loads(line)
        # The worker's stdout is a pipe of its own, relayed here line by line: this process
        # alone writes the answers, so a worker's "ready" can never land inside "pid N"
        # (with PYTHONUNBUFFERED, print() writes a line and its newline apart).
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            os.dup2(out_w, 1)
            os.close(out_w)
            _forked_worker(request)
        os.close(out_w)
        said = Lines(out_r)
        _answer(f"pid {pid}")
        while True:
            done, status = os.waitpid(pid, 0 if commands.eof else os.WNOHANG)
            while (said_line := said.next(0)) is not None:
                _answer(said_line)
            if done:
                break
            if commands.next(0.01) == "kill":
                os.kill(pid, signal.SIGKILL)
        while (said_line := said.next(1.0)) is not None:  # (until the pipe's end: EOF)
            _answer(said_line)
        os.close(out_r)
        _answer(f"exit {pid} {os.waitstatus_to_exitcode(status)}")
    return 0


def _answer(line: str) -> None:
    """One line on stdout in one write."""
    os.write(1, (line + "\n").encode())


def _forked_worker(request: dict[str, Any]) -> None:
    code = 1
    try:
        fd = os.open(request["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        for name, key in (("ERRANDS_FAULT", "fault"), ("ERRANDS_TEST_CONTROLS", "controls")):
            os.environ.pop(name, None)
            if request.get(key):
                os.environ[name] = request[key]
        asyncio.run(work(Path(request["dir"]), request["lease_ttl"], request.get("owner")))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="the round directory (store, journal)")
    parser.add_argument("--lease-ttl", type=float, default=0.3)
    parser.add_argument("--owner", help="a stable worker name (default: a new one)")
    parser.add_argument("--fork-server", action="store_true", help="see serve_forks()")
    parser.add_argument("--shared", action="store_true", help="other workers run beside it")
    args = parser.parse_args(argv)
    if args.fork_server:
        return serve_forks()
    if args.dir is None:
        parser.error("--dir is required")
    asyncio.run(work(args.dir, args.lease_ttl, args.owner, args.shared))
    return 0


if __name__ == "__main__":
    sys.exit(main())
