"""The tool registry: typed functions become tools with schemas, effects and contracts.

A tool is a plain type-hinted function (sync or async). Its JSON schema comes from
the signature and the docstring (Google-style ``Args:`` section); arguments are
validated with pydantic before it runs. Each tool declares its effect class, whether
it is idempotent (or honours the idempotency key the harness passes it), and its
contracts: preconditions checked before it runs, postconditions after.

If a tool function takes a parameter named ``ctx`` it receives the
:class:`ToolContext` (workspace, idempotency key, config); ``ctx`` is not part of the
schema the model sees.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from errands.core.canonical import canonical_hash
from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity
from errands.models.protocol import ToolSchema

__all__ = [
    "Contract",
    "PostconditionFailed",
    "PreconditionFailed",
    "Registry",
    "Tool",
    "ToolArgumentError",
    "ToolContext",
    "ToolError",
    "ToolOutput",
    "UnknownTool",
]


class ToolError(Exception):
    """A tool call failed; the message goes back to the model as the call's result."""

    kind = "tool_error"


class UnknownTool(ToolError):
    kind = "unknown_tool"


class ToolArgumentError(ToolError):
    kind = "bad_arguments"


class PreconditionFailed(ToolError):
    kind = "precondition"


class PostconditionFailed(ToolError):
    """The tool ran but broke its promise: the step is marked failed, visibly."""

    kind = "postcondition"


@dataclass(frozen=True)
class ToolContext:
    """What the harness hands a tool besides its arguments."""

    errand_id: str
    seq: int  # sequence number of the call's intent event
    idempotency_key: str
    workspace: Path
    settings: Any = None  # errands.config.Settings; Any to keep tools free of the config layer


@dataclass(frozen=True)
class ToolOutput:
    """What a tool returns, with the trust labels of its content."""

    text: str
    integrity: Integrity = Integrity.trusted
    confidentiality: Confidentiality = Confidentiality.private
    source: str | None = None  # a URL, a mail sender, a path


# A contract: a predicate with a message. Preconditions see (args, ctx); postconditions
# see (args, ctx, output).
@dataclass(frozen=True)
class Contract:
    description: str
    check: Callable[..., bool]


EffectSpec = EffectClass | Callable[[Mapping[str, Any]], EffectClass]


@dataclass
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    effect_spec: EffectSpec
    idempotent: bool = False
    honours_idempotency_key: bool = False
    preconditions: tuple[Contract, ...] = ()
    postconditions: tuple[Contract, ...] = ()
    takes_ctx: bool = False
    _schema: dict[str, Any] = field(default_factory=dict)

    @property
    def schema(self) -> ToolSchema:
        return ToolSchema(self.name, self.description, self._schema)

    def effect(self, args: Mapping[str, Any]) -> EffectClass:
        spec = self.effect_spec
        return spec if isinstance(spec, EffectClass) else spec(args)

    @property
    def safe_to_retry(self) -> bool:
        """May the harness run this call again when a crash left it in doubt?"""
        return self.idempotent or self.honours_idempotency_key

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Validated, normalised arguments, or :class:`ToolArgumentError` saying what is wrong."""
        try:
            model = self.args_model.model_validate(dict(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ToolArgumentError(f"bad arguments for {self.name}: {problems}") from None
        return model.model_dump(mode="json")

    def check_preconditions(self, args: Mapping[str, Any], ctx: ToolContext) -> None:
        for contract in self.preconditions:
            if not _holds(contract, args, ctx):
                raise PreconditionFailed(
                    f"{self.name}: precondition failed: {contract.description}"
                )

    async def invoke(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        """Run the tool on validated *args*: preconditions, the call, postconditions."""
        self.check_preconditions(args, ctx)
        kwargs = dict(args)
        if self.takes_ctx:
            kwargs["ctx"] = ctx
        if inspect.iscoroutinefunction(self.fn):
            raw = await self.fn(**kwargs)
        else:
            raw = await asyncio.to_thread(self.fn, **kwargs)
        if inspect.isawaitable(raw):
            raw = await raw
        output = raw if isinstance(raw, ToolOutput) else ToolOutput(text=_as_text(raw))
        for contract in self.postconditions:
            if not _holds(contract, args, ctx, output):
                raise PostconditionFailed(
                    f"{self.name}: postcondition failed: {contract.description}"
                )
        return output


def _holds(contract: Contract, *values: Any) -> bool:
    try:
        return bool(contract.check(*values))
    except Exception as exc:  # a crashing check is a failed check, with the reason
        raise (PreconditionFailed if len(values) == 2 else PostconditionFailed)(
            f"contract {contract.description!r} could not be checked: {exc}"
        ) from None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "ok"
    import json

    return json.dumps(value, ensure_ascii=False, default=str)


_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Summary and per-argument descriptions from a Google-style docstring."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section = "summary"
    current: str | None = None
    indent: int | None = None
    for line in inspect.cleandoc(doc or "").splitlines():
        stripped = line.strip()
        if stripped.endswith(":") and stripped[:-1] in _SECTIONS:
            section = "args" if stripped[:-1] in _ARG_SECTIONS else "other"
            continue
        if section == "summary":
            if stripped:
                summary.append(stripped)
        elif section == "args" and stripped:
            depth = len(line) - len(line.lstrip())
            m = _ARG_LINE.match(line)
            if m and (indent is None or depth <= indent):
                indent = depth
                current = m.group(1)
                params[current] = m.group(2).strip()
            elif current is not None:
                params[current] += " " + stripped
    return " ".join(summary), params


_ARG_SECTIONS = {"Args", "Arguments", "Parameters"}
_SECTIONS = _ARG_SECTIONS | {"Returns", "Raises", "Yields", "Examples", "Example", "Note", "Notes"}


def _build_args_model(name: str, fn: Callable[..., Any], docs: dict[str, str]) -> type[BaseModel]:
    from pydantic import Field

    sig = inspect.signature(fn)
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for pname, param in sig.parameters.items():
        if pname == "ctx":
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name}: *args/**kwargs are not supported")
        annotation = hints.get(pname, Any)
        default = ... if param.default is param.empty else param.default
        fields[pname] = (annotation, Field(default, description=docs.get(pname)))
    model: type[BaseModel] = create_model(
        f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    schema.pop("title", None)
    props = {}
    for key, value in schema.get("properties", {}).items():
        value = {k: v for k, v in value.items() if k != "title"}
        props[key] = value
    schema["properties"] = props
    schema["additionalProperties"] = False
    return schema


class Registry:
    """Tools by name. Schemas come out in a deterministic order (a byte-stable prefix)."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._schemas: tuple[ToolSchema, ...] | None = None
        self._fingerprint: str | None = None
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name} is registered already")
        self._tools[tool.name] = tool
        self._schemas = self._fingerprint = None
        return tool

    def tool(
        self,
        *,
        effect: EffectSpec,
        idempotent: bool = False,
        honours_idempotency_key: bool = False,
        name: str | None = None,
        pre: Iterable[Contract] = (),
        post: Iterable[Contract] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a typed function as a tool."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(
                make_tool(
                    fn,
                    effect=effect,
                    idempotent=idempotent,
                    honours_idempotency_key=honours_idempotency_key,
                    name=name,
                    pre=pre,
                    post=post,
                )
            )
            return fn

        return decorate

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise UnknownTool(f"unknown tool {name!r}; available tools: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Any:
        return iter(sorted(self._tools.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self) -> tuple[ToolSchema, ...]:
        if self._schemas is None:
            self._schemas = tuple(t.schema for t in self)
        return self._schemas

    def fingerprint(self) -> str:
        """Canonical hash of every schema: changes iff what the model sees changes."""
        if self._fingerprint is None:
            self._fingerprint = canonical_hash(
                [
                    {"name": s.name, "description": s.description, "parameters": s.parameters}
                    for s in self.schemas()
                ]
            )
        return self._fingerprint


def make_tool(
    fn: Callable[..., Any],
    *,
    effect: EffectSpec,
    idempotent: bool = False,
    honours_idempotency_key: bool = False,
    name: str | None = None,
    pre: Iterable[Contract] = (),
    post: Iterable[Contract] = (),
) -> Tool:
    tool_name = name or fn.__name__
    summary, docs = _parse_docstring(fn.__doc__ or "")
    args_model = _build_args_model(tool_name, fn, docs)
    return Tool(
        name=tool_name,
        description=summary or tool_name,
        fn=fn,
        args_model=args_model,
        effect_spec=effect,
        idempotent=idempotent,
        honours_idempotency_key=honours_idempotency_key,
        preconditions=tuple(pre),
        postconditions=tuple(post),
        takes_ctx="ctx" in inspect.signature(fn).parameters,
        _schema=_clean_schema(args_model.model_json_schema()),
    )


ToolFn = Callable[..., Any | Awaitable[Any]]
