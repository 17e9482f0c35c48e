"""Taming a model's reply before anything else reads it.

A reply is text written by something errands does not control (assume an attacker's
text steers it). Before the loop logs a reply and routes its calls, :func:`tame`
makes sure nothing in it can break the code that reads it later:

- text with lone surrogates (which no UTF-8 encoder takes: the log, the next request,
  the terminal) has them replaced by U+FFFD;
- provider state to replay (``replay``) that could not be logged is dropped (the next
  request goes without it, as after a change of model);
- tool arguments nested deeper than :data:`MAX_DEPTH`, larger than
  :data:`MAX_ARGUMENT_CHARS`, or holding numbers JSON cannot carry (NaN, infinities,
  integers of thousands of digits)
  are not passed on: the call keeps its name and id, its arguments become ``{}`` and
  ``raw_arguments`` says what was wrong -- so routing answers the model with a
  ``bad_arguments`` tool error it can correct, instead of an exception in a step.

The walk is iterative (a 100,000-level structure does not recurse) and returns the
reply unchanged -- the same object -- when nothing needed taming (the common case).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from errands.core.events import ToolCall
from errands.models.protocol import ModelReply

__all__ = ["MAX_ARGUMENT_CHARS", "MAX_DEPTH", "REFUSED_PREFIX", "tame"]

MAX_DEPTH = 64  # no tool errands knows nests its arguments this deep
MAX_ARGUMENT_CHARS = 2_000_000  # a whole file's content fits; a runaway model does not
MAX_INT_BITS = 128  # larger integers are no one's real argument (and past ~4,300 digits
# Python refuses to print them: the log could not hold one)
REFUSED_PREFIX = "[errands] "  # raw_arguments that explain why errands refused them

_SURROGATE = re.compile("[\ud800-\udfff]")


def tame(reply: ModelReply) -> ModelReply:
    """*reply*, safe to log, serialise and route (the same object if it already was)."""
    if _plain(reply):  # (perf: nearly every reply)
        return reply
    text, model, stop = _clean(reply.text), _clean(reply.model), _clean(reply.stop_reason)
    calls = [_tame_call(call) for call in reply.tool_calls]
    replay = reply.replay
    if replay is not None:
        problem, dirty = _inspect(replay)
        replay = None if problem is not None else (_cleaned(replay) if dirty else replay)
    if (
        (text, model, stop) == (reply.text, reply.model, reply.stop_reason)
        and replay is reply.replay
        and all(a is b for a, b in zip(calls, reply.tool_calls, strict=True))
    ):
        return reply
    return replace(reply, text=text, model=model, stop_reason=stop, tool_calls=calls, replay=replay)


def _plain(reply: ModelReply) -> bool:
    """ASCII text, no replay state, and calls with flat ASCII arguments: nothing to tame."""
    if not (reply.text.isascii() and reply.model.isascii() and reply.stop_reason.isascii()):
        return False
    if reply.replay is not None:
        return False
    for call in reply.tool_calls:
        if call.raw_arguments is not None or not (call.name.isascii() and call.call_id.isascii()):
            return False
        if not _flat_ascii(call.arguments):
            return False
    return True


def _clean(text: str) -> str:
    if text.isascii():  # (perf: the common case, with no copy)
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def _tame_call(call: ToolCall) -> ToolCall:
    name, call_id = _clean(call.name), _clean(call.call_id)
    raw = None if call.raw_arguments is None else _clean(call.raw_arguments)[:10_000]
    problem, dirty = _inspect(call.arguments)
    if problem is not None:
        return ToolCall(
            call_id=call_id, name=name, arguments={}, raw_arguments=REFUSED_PREFIX + problem
        )
    if not dirty and (name, call_id, raw) == (call.name, call.call_id, call.raw_arguments):
        return call
    arguments = _cleaned(call.arguments) if dirty else call.arguments
    return ToolCall(call_id=call_id, name=name, arguments=arguments, raw_arguments=raw)


def _inspect(arguments: dict[str, Any]) -> tuple[str | None, bool]:
    """(what makes the arguments unusable or None, whether any string needs cleaning)."""
    if _flat_ascii(arguments):  # (perf: most calls)
        return None, False
    size = 0
    dirty = False
    stack: list[tuple[Any, int]] = [(arguments, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            size += len(value)
            if not dirty and _clean(value) is not value:
                dirty = True
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return f"the arguments are nested more than {MAX_DEPTH} levels deep", dirty
            size += len(value)
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        return "the arguments have a key that is not a string", dirty
                    size += len(key)
                    if not dirty and _clean(key) is not key:
                        dirty = True
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, float) and not math.isfinite(value):
            return "the arguments hold a number JSON cannot carry (NaN or infinity)", dirty
        elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            return "the arguments hold a number too large to be meant", dirty
        elif value is not None and not isinstance(value, bool | int | float):
            return f"the arguments hold a {type(value).__name__}, not JSON", dirty
        if size > MAX_ARGUMENT_CHARS:
            return f"the arguments are larger than {MAX_ARGUMENT_CHARS:,} characters", dirty
    return None, dirty


def _flat_ascii(arguments: dict[str, Any]) -> bool:
    """Only ASCII string keys to ASCII strings (or bools, small ints), small in all?"""
    size = 0
    for key, value in arguments.items():
        if type(key) is not str or not key.isascii():
            return False
        kind = type(value)
        if kind is str:
            if not value.isascii():
                return False
            size += len(value)
        elif kind is not bool and (kind is not int or value.bit_length() > MAX_INT_BITS):
            return False
    return size <= MAX_ARGUMENT_CHARS


def _cleaned(value: Any) -> Any:
    """*value* with every string cleaned (depth is bounded by now: recursion is safe)."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {_clean(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v) for v in value]
    return value
