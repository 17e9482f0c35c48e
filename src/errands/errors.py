"""One error hierarchy: what errands tells a person when it cannot do what was asked.

Every error a person can meet is an :class:`ErrandsError`: a condition of the world or
a bad request, explained in one sentence that says what to do, after which **nothing
was written**. The CLI prints the message on one line and exits with status 2; the API
answers with the class's ``http_status`` and ``{"detail": message}``. Anything else
that escapes is a bug in errands (the CLI says so; the API answers 500).

The table, shared by the CLI and the API:

| error                          | HTTP | raised when                                          |
|--------------------------------|------|------------------------------------------------------|
| ``UserError``                  | 422  | the request cannot be carried out as asked           |
| ``ConfigError``                | 422  | ``errands.toml`` or ``policy.toml`` is unusable      |
| ``ModelSpecError``             | 422  | a model spec names no usable model (models.spec)     |
| ``WorkspaceRefused``           | 422  | a workspace is unsafe or unusable (tools.workspace)  |
| ``EditRefused``                | 422  | edited arguments fail the tool's schema or contracts |
| ``StoreError``                 | 409  | the store refused: it conflicts with the errand now  |
| ``ApprovalRefused``            | 409  | decided already, cancelled, finished, other args     |
| ``ErrandExists``               | 409  | an errand with that id exists                        |
| ``ScheduleExists``             | 409  | a schedule with that name exists                     |
| ``ErrandBusy``                 | 409  | another process runs the errand                      |
| ``NotFound``                   | 404  | no such errand (or approval)                         |
| ``LeaseLost``                  | 409  | (internal) another process took the errand over      |
| ``SchemaTooNew``               | 409  | the store was written by a newer errands             |
| ``StoreUnavailable``           | 503  | the disk is full, locked or failing: try again later |
| ``StoreDamaged``               | 503  | the store failed its integrity check                 |

Tool errors (:class:`errands.tools.tool.ToolError`) are not here: they go to the
model, as the result of its call.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ApprovalRefused",
    "ConfigError",
    "EditRefused",
    "ErrandBusy",
    "ErrandExists",
    "ErrandsError",
    "LeaseLost",
    "NotFound",
    "ScheduleExists",
    "SchemaTooNew",
    "StoreDamaged",
    "StoreError",
    "StoreUnavailable",
    "UserError",
    "http_status",
]


class ErrandsError(Exception):
    """errands cannot do what was asked; the message says why and what to do. Nothing
    was written."""

    http_status: ClassVar[int] = 422


class UserError(ErrandsError):
    """The request cannot be carried out as asked."""


class ConfigError(UserError):
    """The configuration is unusable; the message says where and why."""


class StoreError(ErrandsError):
    """A store operation was refused; the message says why. Nothing was written."""

    http_status = 409


class NotFound(StoreError):
    http_status = 404


class ErrandExists(StoreError):
    pass


class ScheduleExists(StoreError):
    pass


class LeaseLost(StoreError):
    """The caller no longer owns the errand: another process took it over."""


class SchemaTooNew(StoreError):
    """The store was written by a newer errands than this one."""


class ErrandBusy(StoreError):
    """Another process is running this errand right now."""


class ApprovalRefused(StoreError):
    """The decision cannot be recorded; the message says why. Nothing was written."""


class EditRefused(ApprovalRefused):
    """The edited arguments fail the tool's schema or preconditions (a bad request, not
    a conflict): nothing was written."""

    http_status = 422


class StoreUnavailable(StoreError):
    """The store cannot write (or read) right now -- a full disk, another process
    holding the write lock, an I/O error: a condition of the world that errands waits
    out, never a bug. Nothing was written; the same request may succeed later."""

    http_status = 503
    retry_after: ClassVar[int] = 5  # seconds, for a client's Retry-After

    def __init__(self, message: str, condition: str = "io_error") -> None:
        super().__init__(message)
        # what is wrong, for machines (the API's "condition"): "disk_full", "locked"
        # (another process holds the write lock) or "io_error" (anything else)
        self.condition = condition


class StoreDamaged(StoreError):
    """The store failed its integrity check; the message names the way out (restore
    from a backup). errands refuses to run on it rather than answer wrongly."""

    http_status = 503


def http_status(exc: BaseException) -> int | None:
    """The HTTP status that explains *exc* to a client; None for a bug (a 500)."""
    return exc.http_status if isinstance(exc, ErrandsError) else None
