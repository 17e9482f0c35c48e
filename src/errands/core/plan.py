"""Plan mode: the model that decides never reads what an outsider wrote.

Flow control (:mod:`errands.policy.flow`) assumes the worst of a model that has read
untrusted content: every consequential call it makes afterwards asks, unless each argument
traces to the person's words. Plan mode (``mode = "plan"`` on an errand or a schedule; the
dual-LLM / CaMeL pattern) removes the reason to assume it:

- the errand's model -- the *planner* -- sees the person's words and trusted results only.
  Untrusted content (a fetched page, a file from others, a watch's change, an error a
  tool echoed) reaches it as a stub naming a **handle**, ``$r<seq>``: it can pass the
  content on, never read it;
- to use something *in* such content it calls ``extract(question, sources, type)``: a
  quarantined model with no tools reads the sources and answers with one typed value
  (a number, a URL, an address, a short string ...), which the planner again gets as a
  handle, ``$v<seq>`` -- never the value;
- a handle in a call's arguments (whole, or inside a text) is replaced by its value
  before the call is checked, so the policy and the approval card see the real
  arguments; the call's context is what the planner saw *plus* the labels of the values
  it used. A call that uses no untrusted value is the person's plan, and flow control
  does not ask for it; one that does is judged as any call in an untrusted context --
  the card names where the value came from. The result of a call that used an
  untrusted value is untrusted (stubbed in turn).

The planner's final answer may name handles too; the person sees the values, and the
answer carries their labels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from errands.core.labels import BOTTOM, Label

__all__ = [
    "EXTRACT",
    "HANDLE",
    "PLAN",
    "Value",
    "named",
    "resolve",
    "resolve_text",
    "stub",
    "value_stub",
]

PLAN = "plan"  # the mode's name (ErrandCreated.mode)
EXTRACT = "extract"  # the quarantined extractor's tool name
HANDLE = re.compile(r"\$([rv])(\d+)\b")


@dataclass(frozen=True, slots=True)
class Value:
    """What a handle stands for: the content (``$r``) or an extracted value (``$v``),
    with its label and a short description of where it came from."""

    value: Any  # the text, or the typed value (str, int, float, bool, list[str], None)
    label: Label
    where: str

    @property
    def text(self) -> str:
        if isinstance(self.value, str):
            return self.value
        return json.dumps(self.value, ensure_ascii=False)


def stub(handle: str, tool: str, chars: int, error: bool = False) -> str:
    """What the planner reads in place of untrusted content (the handle first)."""
    what = f"{tool}'s error" if error else f"{tool}'s output"
    return (
        f"[{handle}: {what}, kept from you -- it may hold text an outsider wrote ({chars} "
        f"characters). Pass {handle} as an argument (whole, or inside a text) to use it as "
        f'it is, or call {EXTRACT}(question="...", sources=["{handle}"], type="...") for one '
        "typed value from it.]"
    )


def value_stub(handle: str, kind: str, sources: list[str]) -> str:
    """What the planner reads for an extracted value (the handle first)."""
    return (
        f"[{handle}: a {kind} extracted from {', '.join(sources) or 'the sources'}; you "
        f"cannot read it. Pass {handle} as an argument (whole, or inside a text), or name "
        "it in your answer: the person sees the value.]"
    )


def _handles(item: Any) -> Iterator[str]:
    """Every handle in *item* (a string, or lists and dicts of them), in order."""
    if isinstance(item, str):
        if "$" in item:
            yield from (m.group(0) for m in HANDLE.finditer(item))
    elif isinstance(item, list):
        for x in item:
            yield from _handles(x)
    elif isinstance(item, dict):
        for x in item.values():
            yield from _handles(x)


def named(arguments: Mapping[str, Any], values: Mapping[str, Value]) -> list[Value]:
    """The values *arguments* name by handle (unknown handles left out), in order."""
    found = dict.fromkeys(_handles(dict(arguments)))
    return [values[h] for h in found if h in values]


def resolve(
    arguments: Mapping[str, Any], values: Mapping[str, Value]
) -> tuple[dict[str, Any], Label]:
    """*arguments* with every handle replaced by its value: a string that is a handle
    becomes the value (typed), a handle inside a string its text. Returns the arguments
    and the join of the used values' labels (BOTTOM when none). KeyError names a handle
    that stands for nothing."""
    label = BOTTOM
    for handle in dict.fromkeys(_handles(dict(arguments))):
        label = label.joined(values[handle].label)  # (KeyError: it stands for nothing)

    def sub(item: Any) -> Any:
        if isinstance(item, str):
            if "$" not in item:
                return item
            whole = HANDLE.fullmatch(item.strip())
            if whole is not None:
                return values[whole.group(0)].value
            return HANDLE.sub(lambda m: values[m.group(0)].text, item)
        if isinstance(item, list):
            return [sub(x) for x in item]
        if isinstance(item, dict):
            return {k: sub(v) for k, v in item.items()}
        return item

    return {k: sub(v) for k, v in arguments.items()}, label


def resolve_text(text: str, values: Mapping[str, Value]) -> tuple[str, Label]:
    """A text (the planner's answer) with its handles replaced; unknown ones stay."""
    label = BOTTOM

    def one(m: re.Match[str]) -> str:
        nonlocal label
        found = values.get(m.group(0))
        if found is None:
            return m.group(0)
        label = label.joined(found.label)
        return found.text

    return HANDLE.sub(one, text), label
