"""Tools: typed functions with schemas, effects, argument roles, previews and contracts.

A tool is a plain type-hinted function (sync or async). Its JSON schema comes from
the signature and the docstring (Google-style ``Args:`` section); arguments are
validated with pydantic before it runs. Each tool declares:

- its **effect class** (what a call can do to the world), and whether it is idempotent
  (or honours the idempotency key the harness passes it);
- the **role** of each argument that matters to the permission boundary
  (:class:`ArgRole`: a path, a URL, a recipient, an amount, ...) -- the policy and the
  approval card read these instead of guessing from argument names;
- optionally its own **preview**: what the approval card shows a person (by default
  one is built from the roles, :mod:`errands.policy.preview`);
- its **contracts**: preconditions checked before it runs, postconditions after.

If a tool function takes a parameter named ``ctx`` it receives the
:class:`ToolContext` (workspace, idempotency key, config); ``ctx`` is not part of the
schema the model sees. Tools reach an errand through a toolset
(:mod:`errands.tools.toolset`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from errands.core.events import EffectClass
from errands.core.labels import Confidentiality, Integrity, Label
from errands.core.messages import ToolSchema

__all__ = [
    "ArgRole",
    "AskModel",
    "Contract",
    "PostconditionFailed",
    "PreconditionFailed",
    "Preview",
    "Tool",
    "ToolArgumentError",
    "ToolContext",
    "ToolError",
    "ToolOutput",
    "UnknownTool",
    "make_tool",
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


# (errand id, model spec, system prompt, user text) -> (the reply's text, its Usage, the
# model that answered): a quarantined call -- no tools, no conversation -- made by the loop
AskModel = Callable[[str, str, str, str], Awaitable[tuple[str, Any, str]]]


# what a tool call was derived from when nobody said: untrusted (errands.tools.builtin.memory)
UNKNOWN_ORIGIN = Label.of(Integrity.untrusted, Confidentiality.private)


@dataclass(frozen=True)
class ToolContext:
    """What the harness hands a tool besides its arguments."""

    errand_id: str
    seq: int  # sequence number of the call's intent event
    idempotency_key: str
    workspace: Path
    settings: Any = None  # errands.config.Settings; Any to keep tools free of the config layer
    # the label of what the call was derived from (the errand's context, and what the
    # values its handles name): what ``remember`` keeps with a memory. Untrusted unless
    # the dispatcher says otherwise: a caller that does not know fails safe
    label: Label = UNKNOWN_ORIGIN
    # a model call outside the conversation, with no tools (plan mode's extract), and the
    # errand's model spec
    ask_model: AskModel | None = None
    model: str = ""
    # where a tool shows its output while it runs, (stream, text) -- "stdout", "stderr",
    # and "exit" with a status line at the end: the inbox's live view (None: nobody looks).
    # Text handed here is shown as it is: the tool redacts it first. Never the record.
    on_output: Callable[[str, str], None] | None = None


@dataclass(frozen=True)
class ToolOutput:
    """What a tool returns, with the trust labels of its content."""

    text: str
    integrity: Integrity = Integrity.trusted
    confidentiality: Confidentiality = Confidentiality.private
    source: str | None = None  # a URL, a mail sender, a path
    # what a model call the tool made cost (an errands.core.events.Usage), and its model
    usage: Any = None
    model: str | None = None


# A contract: a predicate with a message. Preconditions see (args, ctx); postconditions
# see (args, ctx, output).
@dataclass(frozen=True)
class Contract:
    description: str
    check: Callable[..., bool]


EffectSpec = EffectClass | Callable[[Mapping[str, Any]], EffectClass]


class ArgRole(StrEnum):
    """What an argument *is*, for the permission boundary and the approval card."""

    path = "path"  # a file path, judged against the errand's workspace
    url = "url"  # where a network call goes
    method = "method"  # an HTTP method
    headers = "headers"  # request headers
    body = "body"  # what is sent: a request or message body
    content = "content"  # what is written to a file
    recipient = "recipient"  # who a message goes to (to, cc, bcc)
    subject = "subject"  # a message's subject
    amount = "amount"  # an amount of money
    currency = "currency"
    payee = "payee"  # who is paid
    command = "command"  # a command line to run


# roles whose value names a place (a file, a host, a program): no operating system or
# protocol takes a NUL byte in one, and the checks that judge them must never see it
_NAMES_A_PLACE = frozenset({ArgRole.path, ArgRole.url, ArgRole.recipient, ArgRole.command})


# A tool's own preview: (validated arguments, the errand's workspace) -> what the
# approval card shows; None: the default, built from the argument roles.
Preview = Callable[[Mapping[str, Any], Path], str]


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
    arg_roles: Mapping[str, ArgRole] = field(default_factory=dict)
    preview: Preview | None = None
    # a tool that puts the errand to sleep instead of running: (arguments, now) -> the
    # wall time it wakes (the built-in wait); the loop carries it out
    pauses: Callable[[Mapping[str, Any], float], float] | None = None
    _schema: dict[str, Any] = field(default_factory=dict)

    def args_with(self, role: ArgRole) -> list[str]:
        """The names of the arguments that have *role*, in declaration order."""
        return [name for name, r in self.arg_roles.items() if r is role]

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
        args = model.model_dump(mode="json")
        for name, role in self.arg_roles.items():
            value = args.get(name)
            if role in _NAMES_A_PLACE and isinstance(value, str) and "\x00" in value:
                raise ToolArgumentError(
                    f"bad arguments for {self.name}: {name}: a {role.value} cannot hold a NUL "
                    "character"
                )
        return args

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


def make_tool(
    fn: Callable[..., Any],
    *,
    effect: EffectSpec,
    idempotent: bool = False,
    honours_idempotency_key: bool = False,
    name: str | None = None,
    pre: Iterable[Contract] = (),
    post: Iterable[Contract] = (),
    roles: Mapping[str, ArgRole | str] | None = None,
    preview: Preview | None = None,
    pauses: Callable[[Mapping[str, Any], float], float] | None = None,
) -> Tool:
    """A tool from a typed function. *roles* names the role of the arguments that have
    one (``{"path": "path"}``); *preview* renders the approval card's text."""
    tool_name = name or fn.__name__
    summary, docs = _parse_docstring(fn.__doc__ or "")
    args_model = _build_args_model(tool_name, fn, docs)
    arg_roles = {arg: ArgRole(role) for arg, role in (roles or {}).items()}
    unknown = sorted(set(arg_roles) - set(args_model.model_fields))
    if unknown:
        raise TypeError(f"tool {tool_name}: roles name arguments it does not take: {unknown}")
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
        arg_roles=arg_roles,
        preview=preview,
        pauses=pauses,
        _schema=_clean_schema(args_model.model_json_schema()),
    )
