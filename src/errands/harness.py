"""The one place errands is wired together: ``build(settings) -> Harness``.

The CLI, the server, the benchmarks and the tests all get their parts here: the store
(with the secret redactor), the models, the toolsets, the policy, approvals and
runners. A new capability -- a channel, a scheduler, an MCP toolset -- is added here,
once, and every entry point has it::

    harness = build(load_settings())
    try:
        errand_id = await harness.create("write hello.txt", model="scripted:demo")
        view = await harness.runner().run_errand(errand_id)
    finally:
        await harness.close()

Every part can be passed in instead of built (a test's store, a scripted model, a
toolset of its own, a policy variant), which is how tests and benchmarks build the
harness they need without a switch inside errands.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from errands.config import Settings
from errands.core.ids import new_errand_id
from errands.store import Store, open_store
from errands.store.sqlite.connection import unavailable
from errands.textlimit import check_text

if TYPE_CHECKING:  # (the engine, the policy and the tools are imported when first used:
    # errands up answers before it imports them -- docs/benchmarks.md, start-up)
    from errands.channels import Channel
    from errands.core import events as ev
    from errands.engine.loop import Loop, TextListener
    from errands.engine.runner import Runner
    from errands.models.protocol import Model
    from errands.observe.otel import Telemetry
    from errands.policy.approvals import Approvals
    from errands.policy.hook import PolicyHook
    from errands.store.redact import Redactor
    from errands.tools.mcp.toolset import McpToolset
    from errands.tools.toolset import Toolset

__all__ = ["Harness", "build", "toolset_for"]


@dataclass
class Harness:
    """errands, assembled. Close it when done (:meth:`close`, or ``async with``).

    Its toolset is built by *make_toolset* when first used (:func:`build` does it at
    once unless asked not to): the tools' modules and schemas are the bulk of what a
    harness imports, and ``errands up`` answers before it needs them. The toolset and the
    policy are each built once, whichever thread asks first (the others wait for it)."""

    settings: Settings
    store: Store
    make_toolset: Callable[[], Toolset] = field(repr=False)
    models: Callable[[str], Model]
    _policy: PolicyHook | None = None
    _approvals: Approvals | None = field(default=None, repr=False)
    # the MCP servers' toolset ([mcp] in the config; errands.tools.mcp), closed with errands
    mcp: McpToolset | None = None
    _toolset: Toolset | None = field(default=None, repr=False)
    _building: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def toolset(self) -> Toolset:
        """Every tool an errand may be given (built at the first use)."""
        if self._toolset is None:
            with self._building:
                if self._toolset is None:
                    self._toolset = self.make_toolset()
        return self._toolset

    @toolset.setter
    def toolset(self, toolset: Toolset) -> None:
        self._toolset = toolset

    @property
    def policy(self) -> PolicyHook:
        """The policy (``policy.toml``, written with defaults the first time it is read;
        read again within 2 s of a change, an invalid change refused: ``PolicyFile``)."""
        if self._policy is None:
            with self._building:
                if self._policy is None:
                    from errands.policy.stored import policy_for

                    self._policy = policy_for(self.settings.home, self.store)
        return self._policy

    @property
    def approvals(self) -> Approvals:
        """Decisions on pending approvals, for every channel (judged by :attr:`policy`)."""
        if self._approvals is None:
            from errands.policy.approvals import Approvals

            toolset, policy = self.toolset, self.policy
            with self._building:
                if self._approvals is None:
                    self._approvals = Approvals(
                        self.store, toolset, policy, home=self.settings.home
                    )
        return self._approvals

    def runner(
        self,
        *,
        owner: str | None = None,
        lease_ttl: float | None = None,
        on_text: TextListener | None = None,
        loop_class: type[Loop] | None = None,
    ) -> Runner:
        """A runner over this harness's parts (each process or thread runs its own);
        its leases last *lease_ttl* seconds (default ``[store] lease_seconds``)."""
        from errands.engine.runner import Runner

        return Runner(
            self.store,
            self.settings,
            self.toolset,
            self.policy,
            models=self.models,
            owner=owner,
            lease_ttl=self.settings.store.lease_seconds if lease_ttl is None else lease_ttl,
            on_text=on_text,
            loop_class=loop_class,
        )

    def tool_names(self) -> list[str]:
        """Every tool an errand could use here (what a schedule's ``tools`` may name)."""
        from errands.core.states import ErrandView

        return list(self.toolset.tools(ErrandView(id="any")).names)

    # -- what a person does (engine.operations, with this harness's store and settings) --

    async def create(
        self,
        text: str,
        *,
        model: str | None = None,
        workspace: str | Path | None = None,
        limits: ev.Limits | None = None,
        max_cost_usd: float | None = None,
        by: str = "local",
        channel: str = "cli",
        parent: str | None = None,
        errand_id: str | None = None,
        mode: str | None = None,
    ) -> str:
        check_text(text, "the errand's text")
        errand_id = errand_id or new_errand_id()
        made = _not_there(self.settings, errand_id, workspace)
        from errands.engine import operations

        try:
            return await operations.create_errand(
                self.store,
                self.settings,
                text,
                model=model,
                workspace=workspace,
                limits=limits,
                max_cost_usd=max_cost_usd,
                by=by,
                channel=channel,
                parent=parent,
                errand_id=errand_id,
                mode=mode,
            )
        except Exception as exc:  # (not a cancel: the errand may have been created)
            # a creation that failed leaves no (empty) workspace folder it made behind
            remove_empty(made)
            if isinstance(exc, OSError):  # (making the folder: a full disk, an I/O error)
                condition = unavailable(exc, str(made[0] if made else self.settings.workspaces))
                if condition is not None:
                    raise condition from exc
            raise

    async def tell(
        self, errand_id: str, text: str, *, by: str = "local", channel: str = "cli"
    ) -> int:
        check_text(text, "the message")
        from errands.engine import operations

        return await operations.tell_errand(self.store, errand_id, text, by=by, channel=channel)

    async def cancel(
        self, errand_id: str, *, reason: str = "", by: str = "local", channel: str = "cli"
    ) -> None:
        from errands.engine import operations

        await operations.cancel_errand(self.store, errand_id, reason=reason, by=by, channel=channel)

    async def continue_errand(
        self, errand_id: str, more_steps: int, *, by: str = "local", channel: str = "cli"
    ) -> None:
        """Give an errand more steps; one that stopped at its step limit goes on."""
        from errands.engine import operations

        await operations.continue_errand(self.store, errand_id, more_steps, by=by, channel=channel)

    async def retry_model(self, errand_id: str) -> bool:
        """Reopen an errand its model failed (True), so that running it asks again."""
        from errands.engine import operations

        return await operations.retry_model(self.store, errand_id)

    def observe(self, env: Mapping[str, str] | None = None) -> Telemetry | None:
        """Start OpenTelemetry on this event loop if the environment (*env*, default
        ``os.environ``) configures it -- ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the like
        (:mod:`errands.observe`): traces and metrics read from the store's commits. None
        when it does not: nothing of OpenTelemetry is imported. The caller closes it."""
        from errands import observe

        config = observe.configured(env)
        return None if config is None else observe.start(self.store, config)

    def channels(self, inbox_url: str) -> list[Channel]:
        """Start the channels the config asks for (in this event loop); the caller closes
        them. *inbox_url*: the inbox's address, for links in what they send."""
        from errands.channels.webhook import Notifier  # (only a serving process has channels)

        channels: list[Channel] = [Notifier(self.settings.notify, self.store, inbox_url)]
        email = self.settings.email
        if email is not None and email.imap_url and email.allowed_senders:
            from errands.channels.email.reader import MailReader  # mail in ([email])

            reader = MailReader(self.settings, self.store)
            reader.start()
            channels.append(reader)
        return channels

    # -- closing ---------------------------------------------------------------------------

    async def close_models(self) -> None:
        """Close the models' connections; call it on the event loop that used them (a
        connection pool belongs to one loop)."""
        close = getattr(self.models, "aclose", None)
        if close is not None:
            await close()

    async def close(self) -> None:
        try:
            if self.mcp is not None:
                await self.mcp.aclose()  # (its servers stop with errands)
            await self.close_models()
        finally:
            await self.store.close()

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _not_there(settings: Settings, errand_id: str, requested: str | Path | None) -> list[Path]:
    """The folders a creation would make for its workspace (the deepest first): the
    workspace's, and those above it that do not exist yet."""
    try:
        where = settings.workspaces / errand_id if requested is None else Path(requested)
        path = Path(os.path.realpath(where.expanduser()))
    except (OSError, ValueError):
        return []
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove *folders* (the deepest first) while they are empty; leave anything else."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def toolset_for(
    settings: Settings, toolsets: Sequence[Toolset] = (), *, builtins: bool = True
) -> Toolset:
    """The tools errands gives an errand: the built-ins, the installed plugins and the
    config's ``[tools] modules`` (:mod:`errands.tools.plugins`), and *toolsets* (a tool
    name may come from only one of them)."""
    from errands.tools.extract import PlanToolset
    from errands.tools.plugins import load_tools
    from errands.tools.toolset import AllowedToolset, CombinedToolset

    parts = [s.toolset for s in load_tools(settings.tools.modules, plugins=builtins)]
    parts.extend(toolsets)
    # an errand that names its tools (a schedule's run) sees only those; one in plan mode
    # has the quarantined extractor too
    return PlanToolset(AllowedToolset(parts[0] if len(parts) == 1 else CombinedToolset(parts)))


def searching(settings: Settings, toolset: Toolset) -> Toolset:
    """*toolset* behind the tool search past ``[tools] search_budget_tokens`` of schemas
    (errands.tools.search). Outermost: a wrapper outside it would sort the tools it
    appends in the order found (and break the cached prefix)."""
    if not settings.tools.search_budget_tokens:
        return toolset
    from errands.tools.search import SearchingToolset

    return SearchingToolset(
        toolset,
        budget_tokens=settings.tools.search_budget_tokens,
        pinned=settings.tools.search_pinned,
        results=settings.tools.search_results,
    )


def _email(settings: Settings, given: Sequence[Toolset]) -> list[Toolset]:
    """The email tools of ``[email]`` (errands.tools.email), unless *given* has them."""
    if settings.email is None:
        return []
    from errands.tools.email import check_libraries

    check_libraries()
    from errands.tools.email.tools import EmailToolset, email_toolset

    if any(isinstance(t, EmailToolset) for t in given):
        return []
    return [email_toolset(settings.email)]


def build(
    settings: Settings,
    *,
    store: Store | None = None,
    toolsets: Sequence[Toolset] = (),
    builtins: bool = True,
    policy: PolicyHook | None = None,
    models: Callable[[str], Model] | None = None,
    redactor: Redactor | None = None,
    tools_later: bool = False,
) -> Harness:
    """Assemble errands for *settings*.

    - *store*: default, the home's store (:func:`errands.store.open_store`, with the
      secret redactor -- or *redactor*);
    - *toolsets*: added to the built-in tools (or in their place, ``builtins=False``;
      the built-ins include the memory tools over the store, errands.tools.builtin.memory);
    - the MCP servers of ``[mcp]`` join as a toolset (:mod:`errands.tools.mcp`), and the
      email tools of ``[email]`` (:mod:`errands.tools.email`; unless *toolsets* has them);
    - *policy*: default, ``policy.toml`` in the home (read on first use, and again
      whenever it changes);
    - *models*: ``spec -> Model``; default, one model per spec from the config;
    - *tools_later*: build the toolset (import the tools, load the plugins and the
      config's ``[tools] modules``) at its first use instead of now -- ``errands up``
      answers first and then builds it, before any errand runs; a bad tools module then
      stops it there.
    """
    if settings.mcp.servers:  # (before the store opens: a missing SDK leaves nothing open)
        from errands.tools.mcp import check_sdk

        check_sdk()
    toolsets = [*toolsets, *_email(settings, toolsets)]  # (before the store: a missing extra)
    the_store = store if store is not None else open_store(settings, redactor=redactor)
    mcp = None
    if settings.mcp.servers:  # (the servers start at the first listing, not here)
        from errands.tools.mcp import mcp_toolset

        mcp = mcp_toolset(settings, the_store)

    def make_toolset() -> Toolset:
        from errands.tools.builtin.recall import RecallToolset

        parts = list(toolsets)
        if builtins:  # remember and search_memory, over this store (docs/memory.md)
            from errands.tools.builtin.memory import memory_toolset

            parts.append(memory_toolset(the_store))
        if mcp is not None:
            parts.append(mcp)
        # recall_output for errands whose context may be compacted (docs/context.md), and
        # the tool search over them all (docs/tool-search.md)
        return searching(
            settings,
            RecallToolset(toolset_for(settings, parts, builtins=builtins), settings, the_store),
        )

    if models is None:
        from errands.models.spec import Models

        models = Models(settings)
    harness = Harness(
        settings=settings,
        store=the_store,
        make_toolset=make_toolset,
        models=models,
        _policy=policy,
        mcp=mcp,
    )
    if not tools_later:
        harness.toolset  # noqa: B018  (built now: a bad tools module stops here)
    return harness
