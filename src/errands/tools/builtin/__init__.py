"""The built-in tools: files in the errand's workspace, the web behind the guard, the
sandboxed shell, wait, and sub-errands."""

from __future__ import annotations

from errands.tools.tool import Contract, ToolContext
from errands.tools.toolset import FunctionToolset

__all__ = ["builtin_toolset"]


def _workspace_exists(args: object, ctx: ToolContext) -> bool:
    return ctx.workspace.is_dir()


WORKSPACE_EXISTS = Contract("the errand's workspace is a directory", _workspace_exists)


def builtin_toolset() -> FunctionToolset:
    """A toolset holding the built-in tools (files, the web, the shell, and wait).

    Their modules are imported here, not with this package: a module that needs one
    of them (the server's workspace view: ``files``) does not load the web's and the
    shell's (httpx, the sandbox)."""
    from errands.core.events import EffectClass
    from errands.tools.builtin.files import WROTE_EXACTLY, list_files, read_file, write_file
    from errands.tools.builtin.shell import make_shell_tool
    from errands.tools.builtin.subagents import join_tools
    from errands.tools.builtin.waiting import wait, wake_time
    from errands.tools.builtin.web import (
        fetch_url,
        http_request,
        http_request_effect,
        http_request_preview,
    )
    from errands.tools.tool import make_tool

    return FunctionToolset(
        [
            make_tool(
                read_file,
                effect=EffectClass.read,
                idempotent=True,
                pre=[WORKSPACE_EXISTS],
                roles={"path": "path"},
            ),
            make_tool(
                write_file,
                effect=EffectClass.write_local,
                idempotent=True,
                pre=[WORKSPACE_EXISTS],
                post=[WROTE_EXACTLY],
                roles={"path": "path", "content": "content"},
            ),
            make_tool(
                list_files,
                effect=EffectClass.read,
                idempotent=True,
                pre=[WORKSPACE_EXISTS],
                roles={"path": "path"},
            ),
            make_tool(
                fetch_url,
                effect=EffectClass.network,
                idempotent=True,
                roles={"url": "url"},
                preview=lambda args, workspace: f"GET {args['url']}",
            ),
            make_tool(
                http_request,
                effect=http_request_effect,
                honours_idempotency_key=True,
                roles={"method": "method", "url": "url", "headers": "headers", "body": "body"},
                preview=http_request_preview,
            ),
            make_shell_tool(),
            make_tool(wait, effect=EffectClass.none, idempotent=True, pauses=wake_time),
            *join_tools(),  # sub-errands (docs/subagents.md)
        ]
    )
