"""The CLI against a running server.

When ``errands up`` runs for this ``ERRANDS_HOME`` (``server.json`` names a live
process), ``errands inbox``, ``approvals``, ``approve``, ``deny`` and ``tell`` go
through its HTTP API instead of writing to the store themselves -- the server then
picks the decision up at once and the inbox updates live. The channel recorded is
still ``cli``. Without a server (or with a stale ``server.json``) they work on the
store directly; both paths write the same events.

Finding the server reads two files; the HTTP client is imported when a request is made.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console

from errands.cli.render import approval_card, policy_line, visible
from errands.cli.whoami import who
from errands.errors import UserError
from errands.server.files import ServerRefused, live_server, load_token

if TYPE_CHECKING:
    from errands.config import Settings

__all__ = [
    "Remote",
    "RemoteError",
    "approvals",
    "approve",
    "deny",
    "find",
    "get",
    "tell",
]

out = Console()


class RemoteError(UserError):
    """The server refused the request, or did not answer; the message says why."""


@dataclass
class Remote:
    url: str
    token: str | None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        headers = {"X-Errands-Channel": "cli", "X-Errands-By": who()[:64]}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with httpx.Client(base_url=self.url, timeout=30.0, trust_env=False) as client:
                response = client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RemoteError(
                f"the errands server at {self.url} did not answer ({type(exc).__name__}); "
                "is it still up? (errands up)"
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            detail = data.get("detail") if isinstance(data, dict) else None
            raise RemoteError(  # (the server's words: shown, never obeyed, by a terminal)
                visible(str(detail))
                if detail
                else f"the server answered HTTP {response.status_code}"
            )
        return data


def find(settings: Settings) -> Remote | None:
    """The server running for this home, or None."""
    info = live_server(settings.home)
    if info is None:
        return None
    token = None
    if info.get("token_required"):
        try:
            token, _ = load_token(settings.home, create=False)
        except ServerRefused as exc:
            raise RemoteError(str(exc)) from None
        if token is None:
            raise RemoteError(
                f"the server at {info['url']} asks for a token, but "
                f"{settings.home / 'server-token'} is missing"
            )
    return Remote(str(info["url"]), token)


def get(remote: Remote, path: str) -> Any:
    return remote.call("GET", path)


def approvals(remote: Remote, *, as_json: bool) -> None:
    from errands.core.errand import ApprovalOut

    items: list[dict[str, Any]] = remote.call("GET", "/api/approvals")
    if as_json:
        sys.stdout.write(json.dumps(items) + "\n")
        return
    if not items:
        out.print(f"Nothing waits for your approval. [dim](server {remote.url})[/dim]")
        return
    for item in items:
        approval = ApprovalOut.model_validate(item)
        out.print(approval_card(approval.pending(), approval.errand_title))
    out.print(
        "[dim]errands approve ID [--always] [--edit JSON] · errands deny ID --reason TEXT · "
        f"or in the inbox: {remote.url}[/dim]"
    )


def approve(
    remote: Remote,
    approval_id: str,
    *,
    edited: dict[str, Any] | None,
    always: bool,
    pattern: dict[str, str] | None,
    as_json: bool,
    standing: bool = False,
    standing_pattern: dict[str, str] | None = None,
) -> None:
    from errands.policy.approvals import parse_approval_id

    errand_id, _ = parse_approval_id(approval_id)
    if edited is not None and not as_json:  # the card's new decision, before the yes
        said = remote.call(
            "POST", f"/api/approvals/{approval_id.strip()}/policy", {"edited_arguments": edited}
        )
        if isinstance(said, dict) and said.get("decision"):
            out.print(policy_line(said["decision"], said.get("rule"), said.get("reason")))
    body: dict[str, Any] = {"edited_arguments": edited, "always": always, "always_pattern": pattern}
    if standing:
        body |= {"standing": True, "standing_pattern": standing_pattern}
    remote.call("POST", f"/api/approvals/{approval_id.strip()}/approve", body)
    if as_json:
        sys.stdout.write(
            json.dumps({"approved": approval_id, "errand": errand_id, "via": remote.url}) + "\n"
        )
    else:
        out.print(
            f"[green]approved[/green] {approval_id} via the server at {remote.url}; "
            "it carries on now"
        )


def deny(remote: Remote, approval_id: str, *, reason: str, as_json: bool) -> None:
    from errands.policy.approvals import parse_approval_id

    errand_id, _ = parse_approval_id(approval_id)
    if not reason.strip():
        raise RemoteError("say why you deny it: the reason goes back to the model")
    remote.call("POST", f"/api/approvals/{approval_id.strip()}/deny", {"reason": reason})
    if as_json:
        sys.stdout.write(
            json.dumps({"denied": approval_id, "errand": errand_id, "via": remote.url}) + "\n"
        )
    else:
        out.print(
            f"[red]denied[/red] {approval_id} via the server at {remote.url}; the errand hears why"
        )


def tell(remote: Remote, full: str, text: str) -> None:
    if not text.strip():
        raise RemoteError("the message is empty")
    remote.call("POST", f"/api/errands/{full}/messages", {"text": text})
    out.print(f"told {full} via the server at {remote.url}; it picks it up now")
