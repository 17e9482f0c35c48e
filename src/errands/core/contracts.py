"""Runtime contracts for errands' own code: preconditions, postconditions, invariants.

They are plain checks that raise :class:`ContractViolation`. They run in tests and by
default; ``ERRANDS_CONTRACTS=off`` turns them off in production.
"""

from __future__ import annotations

import os

__all__ = ["ContractViolation", "enabled", "ensure", "invariant", "require"]


class ContractViolation(AssertionError):
    """A precondition, postcondition or invariant of errands' own code did not hold."""


def enabled() -> bool:
    return os.environ.get("ERRANDS_CONTRACTS", "on").lower() not in {"off", "0", "false"}


_ON = enabled()


def require(condition: bool, message: str) -> None:
    """Precondition: the caller broke the contract if *condition* is false."""
    if _ON and not condition:
        raise ContractViolation(f"precondition failed: {message}")


def ensure(condition: bool, message: str) -> None:
    """Postcondition: this function broke its promise if *condition* is false."""
    if _ON and not condition:
        raise ContractViolation(f"postcondition failed: {message}")


def invariant(condition: bool, message: str) -> None:
    if _ON and not condition:
        raise ContractViolation(f"invariant failed: {message}")
