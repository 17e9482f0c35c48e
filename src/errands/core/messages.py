"""The transcript in provider-neutral form: messages, images, tool schemas.

What the loop's fold (:mod:`errands.core.progress`) builds from the log and what every
model (:mod:`errands.models.protocol`) is sent; each provider client translates them to
its wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from errands.core.events import ToolCall

__all__ = ["Image", "Message", "ToolSchema"]


@dataclass(frozen=True, slots=True)
class ToolSchema:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass(frozen=True, slots=True)
class Image:
    """An image in a user message: its MIME type (``image/png``, ``image/jpeg``,
    ``image/gif``, ``image/webp``) and its bytes, base64-encoded."""

    media_type: str
    data_base64: str


@dataclass(frozen=True, slots=True)
class Message:
    """One transcript item in provider-neutral form."""

    role: Literal["user", "assistant", "tool"]
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # assistant only
    tool_call_id: str | None = None  # tool only
    tool_name: str | None = None  # tool only
    is_error: bool = False  # tool only
    images: tuple[Image, ...] = ()  # user only, for models that take images
    replay: dict[str, Any] | None = None  # assistant only: provider state to send back
