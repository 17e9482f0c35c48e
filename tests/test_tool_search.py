"""Tool search (issue 23, item 3): an errand with BFCL's 3,386 tools registered sees the
search and what it found, never the whole pool.

A scripted model calls ``search_tools``, then the tool the search found, which runs;
every request's tool list stays within the budget and only grows at its end (the
prefix the provider caches is never disturbed); an errand stopped and resumed by a
fresh errands (nothing kept in memory) sends exactly the requests of an uninterrupted
one. Negative controls: a toolset that sorts what was found by name breaks the
append-only property, and one with no budget sends ~580K tokens of schemas."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import call, harness_for
from pydantic import BaseModel, ConfigDict

from errands.config import ModelSettings, Settings
from errands.core import events as ev
from errands.core.events import EffectClass
from errands.core.states import ErrandState, ErrandView
from errands.engine.operations import continue_errand, create_errand
from errands.harness import Harness
from errands.models.protocol import ModelReply, ModelRequest, TextSink
from errands.models.scripted import Script, ScriptedModel
from errands.policy.hook import AllowAll
from errands.store import Store
from errands.tools.search import (
    FoundToolList,
    IndexedTool,
    SearchingToolset,
    ToolIndex,
    schema_tokens,
)
from errands.tools.tool import Tool, ToolContext
from errands.tools.toolset import FunctionToolset, ToolList, Toolset

TOOLS = Path(__file__).parent / "data" / "tool-retrieval" / "tools.jsonl"
BUDGET = 5_000

# two searches, then a call of what each found (BFCL dev questions simple_python_1 and 0)
FACTORIAL, TRIANGLE = "math.factorial", "calculate_triangle_area"
TURNS: list[dict[str, Any]] = [
    {"tool_calls": [call("search_tools", query="factorial of a number with math functions")]},
    {"tool_calls": [call("search_tools", query="area of a triangle from base and height")]},
    {
        "cases": [
            {"when_seen": f"- {FACTORIAL}:", "tool_calls": [call(FACTORIAL, number=5)]},
            {"text": "the factorial tool was not found"},
        ]
    },
    {
        "cases": [
            {
                "when_seen": f"- {TRIANGLE}:",
                "tool_calls": [call(TRIANGLE, base=10, height=5)],
            },
            {"text": "the triangle tool was not found"},
        ]
    },
    {"text": "120, and 25 square units"},
]


class _AnyArguments(BaseModel):
    model_config = ConfigDict(extra="allow")


def _provider_schema(value: Any) -> Any:
    """BFCL's dialect as a provider takes it: dict -> object, float -> number."""
    if isinstance(value, dict):
        out = {k: _provider_schema(v) for k, v in value.items()}
        if out.get("type") == "dict":
            out["type"] = "object"
        elif out.get("type") == "float":
            out["type"] = "number"
        return out
    if isinstance(value, list):
        return [_provider_schema(v) for v in value]
    return value


def corpus_toolset(ran: list[tuple[str, dict[str, Any]]]) -> FunctionToolset:
    """Every tool of the corpus; a name's later definitions get their hash as a suffix
    (a registry holds one tool per name). Each call is recorded in *ran*."""
    toolset = FunctionToolset()
    for line in TOOLS.read_text().splitlines():
        row = json.loads(line)
        name = row["name"]
        if name in toolset:
            name = f"{name}_{row['id'].split('#')[1]}"

        def run(ctx: ToolContext, _name: str = name, **args: Any) -> str:
            ran.append((_name, args))
            return f"{_name} ran"

        toolset.add(
            Tool(
                name=name,
                description=row["description"],
                fn=run,
                args_model=_AnyArguments,
                effect_spec=EffectClass.read,
                idempotent=True,
                takes_ctx=True,
                _schema=_provider_schema(row["parameters"]),
            )
        )
    return toolset


class Recording(ScriptedModel):
    """The scripted model, keeping every request it was sent."""

    def __init__(self, turns: list[dict[str, Any]]) -> None:
        super().__init__(Script.model_validate({"name": "search", "turns": turns}))
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self.requests.append(request)
        return await super().complete(request, on_text)


def sent(model: Recording) -> list[str]:
    """Each request, as the bytes a provider would be sent of it (tools and messages)."""
    return [
        json.dumps(
            {
                "tools": [[s.name, s.description, s.parameters] for s in r.tools],
                "messages": [[m.role, m.text, m.tool_name, m.tool_call_id] for m in r.messages],
            }
        )
        for r in model.requests
    ]


def names(request: ModelRequest) -> list[str]:
    return [s.name for s in request.tools]


def build(
    store: Store,
    settings: Settings,
    model: Recording,
    control: type[SearchingToolset] | None = None,
    **kw: Any,
) -> tuple[Harness, list[tuple[str, dict[str, Any]]]]:
    """errands as ``harness.build`` wires it, with the corpus's tools; or -- a control --
    with search off in the config and the tools given through *control* instead."""
    ran: list[tuple[str, dict[str, Any]]] = []
    tools: Toolset = corpus_toolset(ran)
    if control is not None:
        tools = control(tools, **kw)
        off = settings.tools.model_copy(update={"search_budget_tokens": 0})
        settings = settings.model_copy(update={"tools": off})
    h = harness_for(store, settings, tools=tools, model=model, policy=AllowAll())
    return h, ran


def searching(h: Harness) -> Toolset | None:
    """The SearchingToolset among *h*'s toolset's wrappers, if any."""
    toolset: Any = h.toolset
    while toolset is not None and not isinstance(toolset, SearchingToolset):
        toolset = getattr(toolset, "inner", None)
    return toolset


class SortingToolset(SearchingToolset):
    """Negative control: what was found, sorted by name (as a plain ToolList would)."""

    def tools(self, errand: ErrandView) -> ToolList:
        listing = super().tools(errand)
        return ToolList(listing, listing.withheld)


async def test_the_errand_finds_and_calls_the_right_tools(store: Store, settings: Settings) -> None:
    model = Recording(TURNS)
    h, ran = build(store, settings, model)
    assert isinstance(searching(h), SearchingToolset)  # (3,386 tools: far past 5,000 tokens)
    eid = await create_errand(
        store, settings, "factorial of 5; triangle 10 by 5", model="scripted:demo"
    )
    view = await h.runner().run_errand(eid)
    assert view.state is ErrandState.done and view.result == "120, and 25 square units"
    assert ran == [(FACTORIAL, {"number": 5}), (TRIANGLE, {"base": 10, "height": 5})]
    assert view.tool_searches == [
        "factorial of a number with math functions",
        "area of a triangle from base and height",
    ]
    lists = [names(r) for r in model.requests]
    assert lists[0] == ["list_files", "search_tools"]  # (BFCL has a list_files: pinned)
    assert FACTORIAL in lists[1] and TRIANGLE not in lists[1] and TRIANGLE in lists[2]
    for before, after in pairwise(lists):
        assert after[: len(before)] == before  # append-only: the cached prefix stays
    for r in model.requests:
        assert schema_tokens(r.tools) <= BUDGET
    results = [e.event for e in await store.read(eid) if isinstance(e.event, ev.ToolResult)]
    assert results[0].content.text.startswith("Tools for 'factorial of a number")


async def test_a_resumed_errand_sends_the_same_requests(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    whole = Recording(TURNS)
    h, _ = build(store, settings, whole)
    eid = await create_errand(
        store, settings, "factorial of 5; triangle 10 by 5", model="scripted:demo"
    )
    await h.runner().run_errand(eid)

    first = Recording(TURNS)
    h, _ = build(store, settings, first)  # stopped after the two searches ...
    stopped = await create_errand(
        store,
        settings,
        "factorial of 5; triangle 10 by 5",
        model="scripted:demo",
        limits=ev.Limits(max_steps=2),
    )
    view = await h.runner().run_errand(stopped)
    assert view.state is ErrandState.failed and "step limit" in view.reason
    await continue_errand(store, stopped, 10)
    second = Recording(TURNS)
    h, ran = build(store, settings, second)  # ... and resumed by a fresh errands
    assert (await h.runner().run_errand(stopped)).state is ErrandState.done
    assert [name for name, _ in ran] == [FACTORIAL, TRIANGLE]
    assert sent(first) + sent(second) == sent(whole)


@pytest.mark.parametrize("check", ["guard", "control"])
async def test_found_tools_only_ever_join_at_the_end(
    store: Store, settings: Settings, check: str
) -> None:
    model = Recording(TURNS)
    h, _ = build(store, settings, model, SortingToolset if check == "control" else None)
    eid = await create_errand(
        store, settings, "factorial of 5; triangle 10 by 5", model="scripted:demo"
    )
    assert (await h.runner().run_errand(eid)).state is ErrandState.done
    lists = [names(r) for r in model.requests]
    append_only = all(a[: len(b)] == b for b, a in pairwise(lists))
    assert append_only is (check == "guard")


@pytest.mark.parametrize("check", ["guard", "control"])
async def test_the_request_stays_within_the_budget(
    store: Store, settings: Settings, check: str
) -> None:
    model = Recording(TURNS)
    control = SearchingToolset if check == "control" else None  # no budget: every tool
    h, _ = build(store, settings, model, control, budget_tokens=10**9)
    eid = await create_errand(
        store, settings, "factorial of 5; triangle 10 by 5", model="scripted:demo"
    )
    await h.runner().run_errand(eid)
    biggest = max(schema_tokens(r.tools) for r in model.requests)
    assert (biggest <= BUDGET) is (check == "guard"), biggest


def test_under_the_budget_every_tool_is_offered_as_it_was() -> None:
    small = corpus_toolset([])
    few = FunctionToolset(list(small.listing)[:3])
    searching = SearchingToolset(few, budget_tokens=BUDGET)
    listing = searching.tools(ErrandView(id="e"))
    assert listing is few.listing and "search_tools" not in listing


def test_a_found_list_keeps_its_order_and_calls_any_tool_by_name() -> None:
    every = corpus_toolset([]).listing
    tools = [every.get("math.factorial"), every.get("calculate_triangle_area")]
    found = FoundToolList(tools, every)
    shown = [s.name for s in found.schemas]
    assert shown == ["math.factorial", "calculate_triangle_area"]  # not sorted
    assert found.get("requests.get").name == "requests.get"  # shown or not, callable ...
    assert "requests.get" in found.names and len(found.names) == len(every)  # ... and named
    assert "requests.get" not in shown


async def test_a_schedule_may_name_a_tool_the_search_hides(
    store: Store, settings: Settings
) -> None:
    h, _ = build(store, settings, Recording(TURNS))
    assert len(h.tool_names()) == 3386  # (what a schedule's --tool is checked against)


async def test_append_only_when_the_context_may_be_compacted(
    store: Store, settings: Settings
) -> None:
    """A model with a known context window also gets recall_output (a wrapper of its own,
    inside the search's): the found tools keep their order, and recall_output is pinned."""
    windows = {"scripted:demo": ModelSettings(context_window=200_000)}
    windowed = settings.model_copy(update={"models": windows})
    model = Recording(TURNS)
    h, ran = build(store, windowed, model)
    eid = await create_errand(store, windowed, "factorial; triangle", model="scripted:demo")
    assert (await h.runner().run_errand(eid)).state is ErrandState.done
    assert [name for name, _ in ran] == [FACTORIAL, TRIANGLE]
    lists = [names(r) for r in model.requests]
    assert lists[0] == ["list_files", "recall_output", "search_tools"]
    assert all(after[: len(before)] == before for before, after in pairwise(lists))


def test_a_full_list_names_what_it_could_not_add() -> None:
    """Past the budget a search still says what it found, marked as not added, and the
    list does not grow past the budget."""
    searching = SearchingToolset(corpus_toolset([]), budget_tokens=1_000)
    queries = ["weather forecast for a city", "convert currency", "translate text"]
    view = ErrandView(id="e", tool_searches=queries[:2])
    listing = searching.tools(view)
    assert schema_tokens(listing.schemas) <= 1_000
    answer = searching.answer("e", queries[2])
    assert answer.startswith("Tools for 'translate text'")
    assert "[not added: the tool list is full]" in answer
    shown = {s.name for s in listing.schemas}
    grown = searching.tools(ErrandView(id="e", tool_searches=queries))
    assert [s.name for s in grown.schemas][: len(shown)] == [s.name for s in listing.schemas]
    assert schema_tokens(grown.schemas) <= 1_000


# the ranking on small pools: a tool per line, "name: description"
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
HOTELS_AND_MONEY = [
    "hotel_bookings.book_room: Book a room in a hotel for nights.",
    "book_hotel: Book a hotel room for some nights.",
    "find_hotel: Find a hotel in a city with free rooms.",
    "hotel.reserve_room: Reserve a hotel room of a given type.",
    "hotel_room.availability: Whether a hotel has a room of a type free.",
    "hotel.cancel_booking: Cancel a hotel room booking.",
    "hotel.room_service: Order room service to a hotel room.",
    "hotel.list_rooms: The rooms of a hotel and their views.",
    "hotel_reviews: Reviews of a hotel by guests who stayed some nights.",
    "convert_currency: Convert an amount of money from one currency to another.",
    *(
        f"{topic.replace(' ', '_')}: The {topic} you ask for."
        for topic in (
            "weather forecast", "music playlist", "stock price", "movie showtimes",
            "flight status", "recipe search", "news headlines", "translate text",
            "send email", "calendar event", "news article", "sports scores",
            "traffic report", "package tracking", "time zone",
        )
    ),
]  # fmt: skip


def small_index(lines: list[str], kind: type[ToolIndex] = ToolIndex) -> ToolIndex:
    return kind(
        IndexedTool(name, description.strip(), NO_PARAMETERS)
        for name, description in (line.split(":", 1) for line in lines)
    )


class WholeQuestionOnly(ToolIndex):
    """The control: a question is never split into the requests of its sentences."""

    def requests(self, query: str) -> list[str]:
        return []


class NoPhraseBonus(ToolIndex):
    phrase_bonus = 0.0


def test_a_second_request_in_a_question_gets_a_place() -> None:
    """A question of two sentences asking for two things: the wordy first one's variants
    would fill the places; the second sentence's own best tool gets one. Control: ranked
    as one question, the currency tool is not among the first three."""
    question = (
        "Book a deluxe hotel room at the Hilton hotel in Paris for three nights, a room with"
        " a view of the hotel garden. Also convert 1000 dollars."
    )
    index, control = small_index(HOTELS_AND_MONEY), small_index(HOTELS_AND_MONEY, WholeQuestionOnly)
    found = index.names(index.search(question, 3))
    assert found == ["hotel_bookings.book_room", "book_hotel", "convert_currency"]
    assert "convert_currency" not in control.names(control.search(question, 3))
    # one sentence, one request: the ranking is the whole question's
    one = "Book a deluxe hotel room at the Hilton hotel in Paris for three nights."
    assert index.search(one, 3) == control.search(one, 3)
    index.close()
    control.close()


def test_adjacent_words_of_a_name_count_as_a_phrase() -> None:
    """Two tools with the same words, one with "final velocity" in its name: a question
    saying "final velocity" ranks it first. Control: without the phrase bonus the tie
    goes to the tool listed first."""
    tools = [
        "velocity.final_distance: Distance and velocity of a body.",
        "final_velocity.distance: Distance and velocity of a body.",
    ]
    question = "What is the final velocity of a car after some distance?"
    index, control = small_index(tools), small_index(tools, NoPhraseBonus)
    assert index.names(index.search(question, 2)) == [
        "final_velocity.distance",
        "velocity.final_distance",
    ]
    assert control.names(control.search(question, 2))[0] == "velocity.final_distance"
    index.close()
    control.close()


WEATHER_AND_MORE = [
    "city_guide: Sights, restaurants and hotels of a city.",
    "convert_currency: Convert an amount of money between currencies.",
    "get_current_weather: Current temperature, wind and rain at a location.",
    "send_email: Send an email message to a recipient.",
]


class BM25Alone(ToolIndex):
    """The control: the same index without the embeddings."""

    def __init__(self, tools: Iterable[IndexedTool]) -> None:
        super().__init__(tools, embedder=None)


def test_the_embeddings_find_a_tool_that_shares_no_word_with_the_question() -> None:
    """The words "sunny" and "snow" are in no tool's text: fused with the shipped
    static embeddings, the search finds it anyway. Control: BM25 alone finds only the
    tool that shares a word ("city"), or nothing."""
    index, control = small_index(WEATHER_AND_MORE), small_index(WEATHER_AND_MORE, BM25Alone)
    assert index.ranking.startswith("bm25+embeddings") and control.ranking == "bm25"
    sunny = "Will it be sunny in the city of Boston tomorrow?"
    assert index.names(index.search(sunny, 2)) == ["city_guide", "get_current_weather"]
    assert control.names(control.search(sunny, 2)) == ["city_guide"]
    snow = "Is it going to snow tonight?"
    assert index.names(index.search(snow, 1)) == ["get_current_weather"]
    assert control.search(snow, 1) == []
    # a question of nothing but common words finds nothing, either way
    assert index.search("could you please do it", 2) == control.search("could you please", 2) == []
    index.close()
    control.close()
