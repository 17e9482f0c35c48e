"""The policy hook the loop calls before every tool call: allow, ask or deny."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from errands.core.events import EffectClass
from errands.core.labels import Label
from errands.core.pieces import Piece
from errands.tools.tool import ArgRole

__all__ = ["AllowAll", "Decision", "PolicyCall", "PolicyHook", "Verdict"]


class Decision(StrEnum):
    allow = "allow"
    ask = "ask"
    deny = "deny"


@dataclass(frozen=True)
class PolicyCall:
    """Everything the policy may look at to decide one tool call."""

    errand_id: str
    tool: str
    arguments: dict[str, Any]
    effect: EffectClass
    workspace: Path
    context: Label  # the join of every label in the errand's context (flow control)
    always_allowed: tuple[tuple[str, str], ...] = ()  # (tool, args pattern JSON) granted "always"
    roles: Mapping[str, ArgRole] = field(default_factory=dict)  # what each argument is
    # the labelled pieces of the context, oldest first (flow control traces arguments to them)
    pieces: Sequence[Piece] = ()


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    rule: str  # which rule decided, for `errands policy explain` and the approval card
    reason: str = ""


class PolicyHook(Protocol):
    def check(self, call: PolicyCall) -> Verdict: ...


class AllowAll:
    """Allows everything. Only for tests and benchmarks that measure the bare loop."""

    def check(self, call: PolicyCall) -> Verdict:
        return Verdict(Decision.allow, "allow-all")
