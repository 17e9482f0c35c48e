"""Context compaction (errands.engine.context; docs/context.md), end to end.

A scripted errand reads an archive page by page -- one tool call a turn, each output
2 KB (or 20 KB) -- through the real loop, the real OpenAI client and the OpenAI
simulator, whose prefix cache counts cached tokens the way the provider does, against
a model configured with a 32K-token window:

* no request ever passes the window (its input, plus the output it may ask for);
* the errand finishes, after masking old outputs and, later, summarising old turns;
* over requests 2..N (the summary calls included) >= 80% of the input tokens come from
  the cache;
* negative control: a compactor that asks for the summary under another system prompt
  (what naive summarisers do) gets under 20% of its summary requests' input from the
  cache -- and the same check on errands' own summaries passes.

Also: ``recall_output`` brings a masked output back with its labels, a summary of an
untrusted page is untrusted (control: a compactor that trusts its summaries), the fold
of the log gives the transcript errands sent, and bad ``[context]`` settings are one
clear error.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from backends import backend
from helpers.kit import harness_for
from sim.anthropic_server import AnthropicSim
from sim.core import SimServer, Turn, call
from sim.gemini_server import GeminiSim
from sim.openai_responses_server import FastPrefixCache, OpenAIResponsesSim
from sim.openai_server import OpenAIChatSim

from errands.config import ConfigError, ModelSettings, ProviderSettings, Settings, load_settings
from errands.core import events as ev
from errands.core.labels import BOTTOM, Integrity, Label
from errands.core.progress import Progress
from errands.core.states import ErrandState
from errands.costs.report import cache_hit_ratio
from errands.engine.budgets import Blocked, Budgets
from errands.engine.context import SUMMARY_PROMPT, Context, estimate_tokens
from errands.engine.loop import Loop
from errands.engine.operations import create_errand
from errands.models.protocol import Model, ModelRequest
from errands.models.providers.anthropic import AnthropicModel
from errands.models.providers.gemini import GeminiModel
from errands.models.providers.openai_chat import OpenAIChatModel
from errands.models.providers.openai_responses import OpenAIResponsesModel
from errands.models.windows import context_window
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.tools.tool import ToolOutput
from errands.tools.toolset import FunctionToolset

SPEC = "sim:gpt-test-32k"  # a named endpoint (the simulator answers every spec)
WINDOW = 32_000
MAX_TOKENS = 1024
MARK = SUMMARY_PROMPT[:30]
SUMMARY = "So far I read the archive page by page; every page said its items were fine."
DONE = "All pages read: every item is fine."


def page_text(page: int, chars: int) -> str:
    """*chars* characters of deterministic output for one page."""
    line = f"[page {page} line 0] the archive says item {page * 1000} is fine. "
    text = "".join(
        f"[page {page} line {j}] the archive says item {page * 1000 + j} is fine. "
        for j in range(chars // len(line) + 2)
    )
    return text[:chars]


class Archive:
    """Answers from the request itself (so a resumed run is answered as the first
    was): the summary for a compaction's request; else a call for the page after the
    one the last tool output names; the final answer after the last page."""

    pages = 0

    def _take_turn(self, last_text: str, *, consume: bool) -> Turn | None:
        if MARK in last_text:
            return Turn(text=SUMMARY)
        found = re.search(r"\[page (\d+) line", last_text)
        page = int(found.group(1)) + 1 if found else 1
        if page > self.pages:
            return Turn(text=DONE)
        return Turn(tool_calls=(call("read_page", {"page": page}, call_id=f"call_{page}"),))


class ArchiveSim(Archive, OpenAIChatSim):
    def __init__(self, pages: int) -> None:
        super().__init__()
        self.pages = pages
        self.cache = FastPrefixCache()


class AnthropicArchiveSim(Archive, AnthropicSim):
    def __init__(self, pages: int) -> None:
        super().__init__()
        self.pages = pages


def openai_model(sim: SimServer) -> Model:
    return OpenAIChatModel("gpt-test", base_url=sim.base_url, api_key=sim.api_key)


def anthropic_model(sim: SimServer) -> Model:
    return AnthropicModel("claude-test", base_url=sim.base_url, api_key=sim.api_key)


class GeminiArchiveSim(Archive, GeminiSim):
    def __init__(self, pages: int) -> None:
        super().__init__()
        self.pages = pages


class ResponsesArchiveSim(Archive, OpenAIResponsesSim):
    def __init__(self, pages: int) -> None:
        super().__init__()
        self.pages = pages


def gemini_model(sim: SimServer) -> Model:
    return GeminiModel("gemini-2.5-flash", base_url=sim.base_url, api_key=sim.api_key)


def responses_model(sim: SimServer) -> Model:
    return OpenAIResponsesModel("gpt-test", base_url=sim.base_url, api_key=sim.api_key)


PROVIDERS = {
    "openai-chat": (ArchiveSim, openai_model),
    "anthropic": (AnthropicArchiveSim, anthropic_model),
    "gemini": (GeminiArchiveSim, gemini_model),
    "openai-responses": (ResponsesArchiveSim, responses_model),
}
LONG_RUN = ["openai-chat", "anthropic"]  # the 300-turn errand (slow) on these two


def archive_tools(chars: int, integrity: Integrity = Integrity.trusted) -> FunctionToolset:
    registry = FunctionToolset()

    @registry.tool(effect=ev.EffectClass.read, idempotent=True)
    def read_page(page: int) -> ToolOutput:
        """Read one page of the archive.

        Args:
            page: The page number.
        """
        return ToolOutput(page_text(page, chars), integrity=integrity, source=f"archive/{page}")

    return registry


def small_window(settings: Settings, window: int = WINDOW) -> Settings:
    return settings.model_copy(
        update={
            "models": {SPEC: ModelSettings(context_window=window)},
            "providers": {"sim": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1")},
            "limits": ev.Limits(max_steps=None),
            "max_tokens": MAX_TOKENS,
        }
    )


@dataclass
class Run:
    errand_id: str
    view: Any
    usages: list[ev.Usage]  # every model call in order (the summary calls included)
    purposes: list[str]  # "turn" or "compact", in the same order
    bodies: list[dict[str, Any]]
    events: list[ev.Event]
    window: int

    def ratio(self, purpose: str | None = None) -> float:
        picked = [
            u
            for u, p in zip(self.usages[1:], self.purposes[1:], strict=True)
            if purpose in (None, p)
        ]
        return cache_hit_ratio(sum(picked, ev.Usage()))

    def compactions(self) -> list[ev.ContextCompacted]:
        return [e for e in self.events if isinstance(e, ev.ContextCompacted)]


async def run_archive(
    store: Store,
    settings: Settings,
    *,
    pages: int,
    chars: int,
    context: type[Context] = Context,
    integrity: Integrity = Integrity.trusted,
    window: int = WINDOW,
    provider: str = "openai-chat",
) -> Run:
    class TheLoop(Loop):
        context_class = context

    settings = small_window(settings, window)
    make_sim, make_model = PROVIDERS[provider]
    sim = make_sim(pages)
    sim.start()
    try:
        model = make_model(sim)
        harness = harness_for(
            store, settings, tools=archive_tools(chars, integrity), model=model, policy=AllowAll()
        )
        runner = harness.runner(loop_class=TheLoop)
        eid = await create_errand(store, settings, "Read the archive, page by page.", model=SPEC)
        view = await runner.run_errand(eid)
        bodies = [r.body for r in sim.requests]
        assert all(r.status == 200 for r in sim.requests)
    finally:
        sim.stop()
    events = [s.event for s in await store.read(eid)]
    usages: list[ev.Usage] = []
    purposes: list[str] = []
    for e in events:
        if isinstance(e, ev.ModelResponded):
            usages.append(e.usage)
            purposes.append("turn")
        elif isinstance(e, ev.ModelUsed) and e.purpose == "compact":
            usages.append(e.usage)
            purposes.append("compact")
    assert len(usages) == len(bodies)
    return Run(eid, view, usages, purposes, bodies, events, window)


@pytest.fixture
async def sqlite_store(settings: Settings) -> AsyncIterator[Store]:
    s = backend("sqlite").open(settings.home, None)
    yield s
    await s.close()


def check_within_window(run: Run) -> None:
    biggest = max(u.input_tokens for u in run.usages)
    assert biggest + MAX_TOKENS <= run.window, f"a request of {biggest} input tokens"


# -- the 300-turn errand -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("provider", LONG_RUN)
async def test_300_turns_of_2kb_outputs_stay_in_a_32k_window_and_cached(
    sqlite_store: Store, settings: Settings, provider: str
) -> None:
    run = await run_archive(sqlite_store, settings, pages=299, chars=2048, provider=provider)
    assert run.view.state is ErrandState.done, run.view
    assert run.view.result == DONE
    assert run.purposes.count("turn") == 300
    check_within_window(run)
    compactions = run.compactions()
    masked = sum(len(c.masked) for c in compactions)
    summaries = [c for c in compactions if c.summary is not None]
    assert masked > 0 and summaries, "both kinds of compaction happened"
    share = run.ratio()
    print(
        f"\n{provider}, 300 turns, 2 KB outputs, 32K window: {len(compactions)} compactions "
        f"({masked} outputs masked, {len(summaries)} summaries); cached share of turns "
        f"2-300 with the summary calls: {share:.1%}; of the turns alone: {run.ratio('turn'):.1%}; "
        f"of the summary calls: {run.ratio('compact'):.1%}; largest request "
        f"{max(u.input_tokens for u in run.usages)} tokens"
    )
    assert share >= 0.80
    assert run.ratio("compact") >= 0.80, "summary requests reuse the cached prefix"


@pytest.mark.slow
async def test_20kb_outputs_against_their_ceiling(sqlite_store: Store, settings: Settings) -> None:
    """Each 20 KB output (~5K tokens) is paid uncached once: the ceiling of the cached
    share is 1 - (the outputs' tokens) / (the input tokens of requests 2..N)."""
    pages = 60
    run = await run_archive(sqlite_store, settings, pages=pages, chars=20_480)
    assert run.view.state is ErrandState.done, run.view
    check_within_window(run)
    total = sum(u.input_tokens for u in run.usages[1:])
    ceiling = 1 - pages * 20_480 / 4 / total
    share = run.ratio()
    print(
        f"\n{pages} turns, 20 KB outputs, 32K window: cached share {share:.1%} against a "
        f"ceiling of {ceiling:.1%} ({share / ceiling:.0%} of it); "
        f"{len(run.compactions())} compactions"
    )
    assert share >= 0.6 * ceiling


class RewordedSummary(Context):
    """Negative control: asks for the summary under its own system prompt (and no
    tools), as a naive summariser does -- the provider's cache is lost."""

    def summary_request(self, p: Progress, request: ModelRequest) -> ModelRequest:
        asked = super().summary_request(p, request)
        return replace(asked, system="You summarise conversations.\n" + asked.system, tools=())


SHORT = {"pages": 60, "chars": 500, "window": 8000}  # outputs too short to mask: summaries
ONE_SUMMARY = {**SHORT, "pages": 45}  # (the first summary comes near page 37)


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_summary_requests_keep_the_cache_and_the_control_loses_it(
    sqlite_store: Store, settings: Settings, home: Path, provider: str
) -> None:
    """60 turns of short outputs in an 8K window: summaries. errands' summary calls are
    served from the cache; the control's (another system prompt) are not."""
    run = await run_archive(sqlite_store, settings, provider=provider, **SHORT)
    assert run.view.state is ErrandState.done, run.view
    check_within_window(run)
    assert "compact" in run.purposes
    ours = run.ratio("compact")
    control_store = backend("sqlite").open(home / "control", None)
    try:
        control = await run_archive(
            control_store, settings, context=RewordedSummary, provider=provider, **SHORT
        )
    finally:
        await control_store.close()
    assert control.view.state is ErrandState.done
    theirs = control.ratio("compact")
    print(
        f"\n{provider}: summary calls served from the cache: {ours:.1%} (a changed system prompt: "
        f"{theirs:.1%}); whole errand {run.ratio():.1%} vs {control.ratio():.1%}"
    )
    assert ours >= 0.80
    assert theirs < 0.20


async def test_the_fold_gives_the_transcript_that_was_sent(
    sqlite_store: Store, settings: Settings
) -> None:
    """The log alone (a resume, a replay) rebuilds the compacted transcript: the last
    request's messages are the fold's, and masked outputs are stubs naming handles."""
    run = await run_archive(sqlite_store, settings, pages=69, chars=2048)
    p = Progress.empty(run.errand_id)
    for stored in await sqlite_store.read(run.errand_id):
        p.apply(stored.seq, stored.event)
    last = run.bodies[-1]["messages"]
    sent_texts = [m.get("content") for m in last if m["role"] in ("tool", "user")]
    fold_texts = [m.text for m in p.messages[:-1] if m.role in ("tool", "user")]
    assert sent_texts == fold_texts
    stubs = [t for t in fold_texts if t and "recall_output(" in t]
    assert stubs and all(re.search(r"recall_output\('output-\d+'\)", t) for t in stubs)
    first = run.compactions()[0]
    assert first.tokens_before > 0.8 * WINDOW >= first.tokens_after


# -- labels and recall ------------------------------------------------------------------


class TrustingSummary(Context):
    """Negative control: labels its summaries trusted, whatever they summarise."""

    def summary_label_of(self, p: Progress) -> Label:
        return BOTTOM


@pytest.mark.parametrize("control", [False, True], ids=["errands", "trusting-control"])
async def test_a_summary_of_untrusted_pages_is_untrusted(
    sqlite_store: Store, settings: Settings, control: bool
) -> None:
    run = await run_archive(
        sqlite_store,
        settings,
        **ONE_SUMMARY,
        integrity=Integrity.untrusted,
        context=TrustingSummary if control else Context,
    )
    summaries = [c.summary for c in run.compactions() if c.summary is not None]
    assert summaries
    untrusted = all(s.integrity is Integrity.untrusted for s in summaries)
    assert untrusted is not control
    if not control:  # what flow control reads: the pieces, and the context's label
        p = Progress.empty(run.errand_id)
        for stored in await sqlite_store.read(run.errand_id):
            p.apply(stored.seq, stored.event)
        assert p.label.integrity is Integrity.untrusted
        assert any(piece.content is summaries[-1] for piece in p.pieces) or any(
            piece.content == summaries[-1] for piece in p.pieces
        )


class RecallSim(ArchiveSim):
    """Reads 60 pages (masking happens near page 45), then recalls the first page's output (its handle taken from the
    stub the model was sent), then answers."""

    body: Any = None

    def last_text(self, body: Any) -> str:
        self.body = body  # (the request being answered)
        return super().last_text(body)

    def _take_turn(self, last_text: str, *, consume: bool) -> Turn | None:
        if self.body["messages"][-1].get("tool_call_id") == "recall":
            return Turn(text=DONE)  # the recalled output came back
        found = re.search(r"\[page (\d+) line", last_text)
        if found and int(found.group(1)) >= self.pages:
            stubs = [
                str(m.get("content"))
                for m in self.body["messages"]
                if "recall_output(" in str(m.get("content"))
            ]
            named = re.search(r"recall_output\('([^']+)'\)", stubs[0]) if stubs else None
            handle = named.group(1) if named else "no stub"
            return Turn(tool_calls=(call("recall_output", {"handle": handle}, call_id="recall"),))
        return super()._take_turn(last_text, consume=consume)


async def test_recall_output_brings_back_a_masked_output_with_its_labels(
    sqlite_store: Store, settings: Settings
) -> None:
    settings = small_window(settings)
    sim = RecallSim(60)
    sim.start()
    try:
        model = OpenAIChatModel("gpt-test", base_url=sim.base_url, api_key=sim.api_key)
        tools = archive_tools(2048, Integrity.untrusted)
        harness = harness_for(sqlite_store, settings, tools=tools, model=model, policy=AllowAll())
        eid = await create_errand(sqlite_store, settings, "Read the archive.", model=SPEC)
        view = await harness.runner().run_errand(eid)
        tool_names = [t["function"]["name"] for t in sim.requests[0].body["tools"]]
    finally:
        sim.stop()
    assert view.state is ErrandState.done, view
    assert "recall_output" in tool_names, "offered from the first request (a stable prefix)"
    events = [s.event for s in await sqlite_store.read(eid)]
    recalled = [e for e in events if isinstance(e, ev.ToolResult) and e.tool == "recall_output"]
    assert len(recalled) == 1 and recalled[0].ok, (view, events[-3:])
    assert recalled[0].content.text == page_text(1, 2048)
    assert recalled[0].content.integrity is Integrity.untrusted
    assert recalled[0].content.provenance.source == "archive/1"


async def test_recall_of_a_bad_handle_is_a_tool_error(store: Store, settings: Settings) -> None:
    from errands.tools.builtin.recall import recall_tool
    from errands.tools.tool import ToolContext, ToolError

    eid = await create_errand(store, settings, "x")
    tool = recall_tool(store)
    ctx = ToolContext(errand_id=eid, seq=2, idempotency_key="k", workspace=Path("."))
    for handle in ("output-1", "nonsense", "output-999"):  # seq 1 is the request
        with pytest.raises(ToolError, match="names no tool output"):
            await tool.invoke({"handle": handle}, ctx)


# -- windows, estimates, settings ----------------------------------------------------------


def test_context_windows(settings: Settings) -> None:
    assert context_window("scripted:demo", settings) is None
    assert context_window("anthropic:claude-sonnet-4-5", settings) == 200_000
    assert context_window("openai:gpt-4o-mini", settings) == 128_000
    tuned = settings.model_copy(
        update={
            "models": {"openai:gpt-4o-mini": ModelSettings(context_window=50_000)},
            "chains": {"main": ["anthropic:claude-x", "openai:gpt-4o-mini"]},
        }
    )
    assert context_window("openai:gpt-4o-mini", tuned) == 50_000
    assert context_window("chain:main", tuned) == 50_000  # a chain: its smallest member
    assert context_window("anthropic:claude-x,scripted:demo", tuned) is None


def test_the_estimate_is_running_not_recounted() -> None:
    """With a usage known, the estimate reads only the messages added since."""
    from errands.core.messages import Message

    class Counting(list[Message]):
        reads = 0

        def __getitem__(self, key: Any) -> Any:
            if isinstance(key, slice):
                Counting.reads += len(range(*key.indices(len(self))))
            return super().__getitem__(key)

    p = Progress.empty("e")
    p.messages = Counting([Message(role="user", text="x" * 300)] * 1000)
    p.last_usage = ev.Usage(input_tokens=50_000, output_tokens=100)
    p.answered = 998
    request = ModelRequest(system="s", messages=(), tools=(), max_tokens=10)
    assert estimate_tokens(p, request) == 50_100 + 2 * (100 + 16)
    assert Counting.reads == 2


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("[context]\ncompact_at = 1.5\n", "context.compact_at"),
        ("[context]\ncompact_at = 0\n", "context.compact_at"),
        ("[context]\ncompact_at = 0.5\ncompact_to = 0.6\n", "compact_to (0.6) must be below"),
        ('[models."openai:gpt-4o"]\ncontext_window = -5\n', "context_window"),
        ('[models."openai:gpt-4o"]\nwindow = 5\n', "window"),
    ],
)
def test_bad_context_settings_are_one_clear_error(home: Path, toml: str, says: str) -> None:
    (home / "errands.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(home)
    message = str(caught.value)
    assert says in message and "\n" not in message, message


def test_bad_context_settings_on_the_cli(cli: Any, home: Path) -> None:
    (home / "errands.toml").write_text("[context]\ncompact_at = 2\n")
    result = cli("models")
    assert result.returncode != 0
    assert "context.compact_at" in result.stderr and "Traceback" not in result.stderr


def test_errands_models_shows_the_context_windows(cli: Any, home: Path) -> None:
    (home / "errands.toml").write_text(
        'default_model = "anthropic:claude-sonnet-4-5"\n'
        '[models."openai:my-tune"]\ncontext_window = 32000\n'
    )
    shown = cli("models", "--json")
    assert shown.returncode == 0, shown.stderr
    windows = json.loads(shown.stdout)["context_windows"]
    assert windows == {"anthropic:claude-sonnet-4-5": 200_000, "openai:my-tune": 32_000}
    text = cli("models").stdout
    assert "openai:my-tune: 32,000 tokens" in text


class EmptySummarySim(ArchiveSim):
    """A model that answers a compaction's request with no text."""

    def _take_turn(self, last_text: str, *, consume: bool) -> Turn | None:
        if MARK in last_text:
            return Turn(text="")
        return super()._take_turn(last_text, consume=consume)


async def test_an_empty_summary_is_booked_and_the_errand_goes_on(
    sqlite_store: Store, settings: Settings
) -> None:
    PROVIDERS["empty-summary"] = (EmptySummarySim, openai_model)
    try:
        run = await run_archive(sqlite_store, settings, provider="empty-summary", **ONE_SUMMARY)
    finally:
        del PROVIDERS["empty-summary"]
    assert run.view.state is ErrandState.done, run.view
    assert "compact" in run.purposes, "the summary calls were made and booked"
    assert all(c.summary is None for c in run.compactions())


def test_a_compaction_is_a_line_of_the_timeline() -> None:
    """errands show and the inbox say what a compaction did."""
    from errands.cli.render import event_line
    from errands.core.labels import Provenance
    from errands.server.inbox import environment
    from errands.store import StoredEvent

    summary = ev.Content(
        text="so far", provenance=Provenance(kind="model"), integrity=Integrity.untrusted
    )
    event = ev.ContextCompacted(
        window=32_000,
        tokens_before=26_000,
        tokens_after=15_000,
        masked=[ev.MaskedOutput(seq=5, index=3, stub="[output ...]")],
        summarised=12,
        summary=summary,
    )
    stored = StoredEvent("e1", 9, event)
    line = event_line(stored) or ""
    assert "context compacted (1 outputs masked, 12 messages summarised)" in line
    assert "~26,000 -> ~15,000 of 32,000 tokens" in line and "untrusted" in line
    html = str(environment().get_template("_macros.html").module.timeline_item(stored))
    assert "1 old outputs masked, 12 messages summarised" in html and 'data-seq="9"' in html


def test_compaction_leaves_room_for_the_output(settings: Settings) -> None:
    """A request is compacted when its input passes compact_at of the window, or when
    the output it asks for would not fit beside it."""

    async def never(*args: Any) -> Any:
        raise AssertionError("not called")

    context = Context(small_window(settings), never, never)
    p = Progress.empty("e")
    p.view.model = SPEC
    p.messages = [ev_message("x" * 30)] * 2
    p.last_usage = ev.Usage(input_tokens=20_000, output_tokens=10)
    p.answered = 2
    small = ModelRequest(system="s", messages=(), tools=(), max_tokens=1_000)
    assert not context.over(p, small)  # 20K + 1K of a 32K window: under 80%, room left
    big = replace(small, max_tokens=16_000)
    assert context.over(p, big)  # 20K + 16K > 32K
    p.view.model = "scripted:demo"  # no known window: never
    assert not context.over(p, big)


def ev_message(text: str) -> Any:
    from errands.core.messages import Message

    return Message(role="user", text=text)


# -- the summary call is held against the budget like any model call -----------------------


class RefuseSummaries(Budgets):
    """A budget whose cap the summary call's worst case would pass: it refuses any request
    that asks for a summary (and lets every other through)."""

    async def reserve(
        self, p: Progress, model: Model, request: ModelRequest, request_seq: int
    ) -> Blocked | None:
        if MARK in (request.messages[-1].text or ""):
            return Blocked("failed", "the summary's worst case would pass the budget")
        return None


class UnheldSummaries(Loop):
    """The control: a loop that makes the summary call without holding its worst case."""

    async def _reserved(
        self, p: Progress, model: Model, request: ModelRequest, request_seq: int
    ) -> bool:
        if MARK in (request.messages[-1].text or ""):
            return True
        return await super()._reserved(p, model, request, request_seq)


@pytest.mark.parametrize("loop", [Loop, UnheldSummaries], ids=["guard", "CONTROL"])
async def test_the_summary_call_is_held_against_the_budget_first(
    sqlite_store: Store, settings: Settings, loop: type[Loop]
) -> None:
    class TheLoop(loop):  # type: ignore[valid-type,misc]
        budgets_class = RefuseSummaries

    settings = small_window(settings, ONE_SUMMARY["window"])
    sim = ArchiveSim(ONE_SUMMARY["pages"])
    sim.start()
    try:
        harness = harness_for(
            sqlite_store,
            settings,
            tools=archive_tools(ONE_SUMMARY["chars"]),
            model=openai_model(sim),
            policy=AllowAll(),
        )
        eid = await create_errand(sqlite_store, settings, "Read the archive.", model=SPEC)
        view = await harness.runner(loop_class=TheLoop).run_errand(eid)
        summaries = [r for r in sim.requests if MARK in json.dumps(r.body)]
    finally:
        sim.stop()
    events = [s.event for s in await sqlite_store.read(eid)]
    booked = [e for e in events if isinstance(e, ev.ModelUsed) and e.purpose == "compact"]
    if loop is Loop:
        assert view.state is ErrandState.failed and "summary" in (view.reason or ""), view
        assert summaries == [] and booked == []  # refused before it was sent
    else:
        assert summaries and booked  # sent, and paid, past the cap
