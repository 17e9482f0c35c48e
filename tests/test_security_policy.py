"""Issue 13, items 1, 3 and 6: holes in the permission boundary, each with its control.

1. An approval edited to arguments the policy denies is refused when it is approved
   (``Approvals.within_policy``) and, should a grant exist anyway, never runs
   (``Dispatcher.permitted`` decides the granted arguments again before the intent).
3. ``http_request`` is a plain read only as a GET/HEAD without a body and with safe
   headers; a body, credentials or a custom header make it ``external`` (it asks).
6. A write to a file other programs run or trust later (``.git/config``, ``.envrc``,
   ``.github/workflows/*``, ...) is at least ``ask``, from the one list that
   docs/security.md shows -- checked against a real ``git status`` running the
   ``core.fsmonitor`` command such a write plants.

Real parts: a real store, the real loop and tools, a real HTTP endpoint on 127.0.0.1,
real files and symlinks, real git, and the real CLI for ``errands approve --edit``.
Each control is a subclass defined here and passed in by the test.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from helpers.kit import call, harness_for, script, write_script
from helpers.server import Sink, write_config

from errands.config import Settings, load_settings
from errands.core import events as ev
from errands.core.canonical import canonical_hash
from errands.core.events import EffectClass
from errands.core.labels import BOTTOM, Label
from errands.core.progress import Progress
from errands.core.states import ErrandState
from errands.engine.dispatch import Dispatcher
from errands.engine.loop import Loop
from errands.errors import EditRefused
from errands.harness import Harness
from errands.policy.approvals import Approvals
from errands.policy.executable import EXECUTES_LATER, ExecutesLater
from errands.policy.hook import Decision, PolicyCall, Verdict
from errands.policy.rules import CallValues, Policy, Rule
from errands.store import Store, open_store
from errands.tools.builtin import builtin_toolset
from errands.tools.builtin.web import http_request
from errands.tools.tool import Tool, make_tool
from errands.tools.toolset import FunctionToolset

ALLOW, ASK, DENY = Decision.allow, Decision.ask, Decision.deny
DOCS = Path(__file__).resolve().parent.parent / "docs" / "security.md"


# -- the controls: errands without each guard ----------------------------------------------


class PolicyBlindApprovals(Approvals):
    """Approvals that take any edit the schema accepts, whatever the policy says."""

    def within_policy(self, pending: Any, verdict: Verdict | None) -> None:
        return None


class GrantTrustingDispatcher(Dispatcher):
    """Runs what a person granted without asking the policy again."""

    def permitted(
        self, p: Progress, tool: Tool, name: str, args: dict[str, Any], context: Label
    ) -> Verdict:
        return Verdict(ALLOW, "granted")


class GrantTrustingLoop(Loop):
    dispatcher_class = GrantTrustingDispatcher


class NoLaterPolicy(Policy):
    """The policy without the executes-later vote."""

    def executes_later(
        self, call: PolicyCall, values: CallValues
    ) -> tuple[str, ExecutesLater] | None:
        return None


def method_only_effect(args: Any) -> EffectClass:
    """What http_request's effect was: GET and HEAD read, whatever they carry."""
    return EffectClass.network if args.get("method") in ("GET", "HEAD") else EffectClass.external


def method_only_toolset() -> FunctionToolset:
    return FunctionToolset(
        [
            make_tool(
                http_request,
                effect=method_only_effect,
                honours_idempotency_key=True,
                roles={"method": "method", "url": "url", "headers": "headers", "body": "body"},
            )
        ]
    )


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def net_settings(home: Path) -> Settings:
    write_config(home)  # the network tools may reach 127.0.0.1, where the sink listens
    return load_settings(home)


@pytest.fixture
async def db(net_settings: Settings) -> AsyncIterator[Store]:
    store = open_store(net_settings)
    yield store
    await store.close()


def blocked_policy(sink: Sink) -> Policy:
    return Policy(
        rules=[
            Rule(
                name="no-blocked",
                tool="http_request",
                args={"url": f"{sink.url}/blocked/*"},
                decision=DENY,
                reason="that endpoint is off limits",
            )
        ]
    )


async def pending_post(
    db: Store, settings: Settings, sink: Sink, policy: Policy, **runner: Any
) -> tuple[Harness, str, str]:
    """An errand whose POST to the sink's open endpoint waits for approval."""
    model = script(
        {
            "text": "posting",
            "tool_calls": [call("http_request", method="POST", url=f"{sink.url}/open/1", body="x")],
        },
        {"text": "done"},
    )
    harness = harness_for(db, settings, model=model, policy=policy)
    eid = await harness.create("post it", model="scripted:demo")
    await harness.runner(**runner).run_errand(eid)
    view = await db.view(eid)
    assert view.state is ErrandState.waiting_approval
    (pending,) = view.pending.values()
    assert pending.rule == "effects.external"
    return harness, eid, pending.id


def edit(url: str) -> dict[str, Any]:
    return {"method": "POST", "url": url, "body": "x"}


def results(events: list[Any]) -> list[ev.ToolResult]:
    return [e for e in events if isinstance(e, ev.ToolResult)]


# == 1. an edited approval is decided by the policy again ====================================


async def test_an_edit_the_policy_denies_is_refused_and_nothing_is_recorded(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    policy = blocked_policy(sink)
    harness, eid, aid = await pending_post(db, net_settings, sink, policy)
    approvals = Approvals(db, harness.toolset, policy)
    before = (await db.view(eid)).last_seq
    spellings = [
        f"{sink.url}/blocked/2",
        f"HTTP://127.0.0.1:{sink.port}/blocked/2",  # scheme case
        f"{sink.url}/open/../blocked/2",  # a dot segment
        f"{sink.url}//blocked/2",  # an empty segment
        f"{sink.url}/%62locked/2",  # an unreserved character percent-encoded
        f"  {sink.url}/blocked/2 ",  # surrounding whitespace
    ]
    for url in spellings:
        with pytest.raises(EditRefused, match=r"rule no-blocked: that endpoint is off limits"):
            await approvals.approve(aid, by="ann", channel="cli", edited_arguments=edit(url))
        # what the approval card can show before anyone says yes: the new decision
        verdict = await approvals.decision_for(aid, edit(url))
        assert verdict is not None and (verdict.decision, verdict.rule) == (DENY, "no-blocked")
    assert (await db.view(eid)).last_seq == before  # refused: nothing was written
    # an edit the policy asks about is fine (a person is approving it), and runs
    assert (await approvals.decision_for(aid, edit(f"{sink.url}/open/2"))).decision is ASK  # type: ignore[union-attr]
    await approvals.approve(
        aid, by="ann", channel="cli", edited_arguments=edit(f"{sink.url}/open/2")
    )
    await harness.runner().run_errand(eid)
    assert [(r["method"], r["path"]) for r in sink.requests] == [("POST", "/open/2")]


async def test_negative_control_an_approvals_blind_to_the_policy_records_the_denied_edit(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    policy = blocked_policy(sink)
    harness, eid, aid = await pending_post(db, net_settings, sink, policy)
    before = (await db.view(eid)).last_seq
    await PolicyBlindApprovals(db, harness.toolset, policy).approve(
        aid, by="ann", channel="cli", edited_arguments=edit(f"{sink.url}/blocked/2")
    )
    assert (await db.view(eid)).last_seq == before + 1  # the control recorded the grant


async def test_a_granted_edit_the_policy_denies_never_runs(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    """Whatever put the grant in the log (an older errands, another channel), the loop
    decides the granted arguments again: the deny wins, the request is never sent."""
    policy = blocked_policy(sink)
    harness, eid, aid = await pending_post(db, net_settings, sink, policy)
    await PolicyBlindApprovals(db, harness.toolset, policy).approve(
        aid, by="ann", channel="cli", edited_arguments=edit(f"{sink.url}/blocked/2")
    )
    await harness.runner().run_errand(eid)
    assert sink.requests == []
    events = [s.event for s in await db.read(eid)]
    assert not [e for e in events if isinstance(e, ev.ToolIntent)]
    (result,) = results(events)
    assert result.error_kind == "denied"
    assert result.content.text.startswith(
        "denied by policy rule no-blocked: that endpoint is off limits"
    )


async def test_negative_control_a_loop_trusting_grants_sends_the_denied_edit(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    policy = blocked_policy(sink)
    harness, eid, aid = await pending_post(db, net_settings, sink, policy)
    await PolicyBlindApprovals(db, harness.toolset, policy).approve(
        aid, by="ann", channel="cli", edited_arguments=edit(f"{sink.url}/blocked/2")
    )
    await harness.runner(loop_class=GrantTrustingLoop).run_errand(eid)
    assert [(r["method"], r["path"]) for r in sink.requests] == [("POST", "/blocked/2")]


async def test_a_grant_whose_arguments_a_changed_policy_now_denies_never_runs(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    """Deny wins at run time too: the policy in force when the call would run decides."""
    harness, eid, aid = await pending_post(db, net_settings, sink, Policy())
    await Approvals(db, harness.toolset, Policy()).approve(aid, by="ann", channel="cli")
    stricter = Policy(
        rules=[Rule(name="no-open", args={"url": f"{sink.url}/open/*"}, decision=DENY)]
    )
    runner_harness = harness_for(db, net_settings, model=script({"text": "done"}), policy=stricter)
    await runner_harness.runner().run_errand(eid)
    assert sink.requests == []
    (result,) = results([s.event for s in await db.read(eid)])
    assert result.error_kind == "denied" and "no-open" in result.content.text


def test_the_cli_refuses_an_edit_the_policy_denies(cli: CLI, home: Path, sink: Sink) -> None:
    """``errands approve --edit`` through the real CLI: one clear error, exit 2, no grant."""
    write_config(home)
    (home / "policy.toml").write_text(
        f"""\
[[rules]]
name = "no-blocked"
tool = "http_request"
args = {{ url = "{sink.url}/blocked/*" }}
decision = "deny"
reason = "that endpoint is off limits"
"""
    )
    spec = write_script(
        home.parent / "post.json",
        {
            "text": "posting",
            "tool_calls": [call("http_request", method="POST", url=f"{sink.url}/open/1", body="x")],
        },
        {"text": "done"},
    )
    r = cli("run", "post it", "--model", spec)
    assert r.returncode == 3, r.stderr  # no terminal: left waiting for a person
    r = cli("approvals", "--json")
    assert r.returncode == 0, r.stderr
    (pending,) = json.loads(r.stdout)
    errand_id = pending["errand_id"]
    edited = json.dumps(edit(f"HTTP://127.0.0.1:{sink.port}/open/../blocked/9"))
    r = cli("approve", pending["id"], "--edit", edited)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "rule no-blocked" in r.stderr and "off limits" in r.stderr
    shown = json.loads(cli("show", errand_id, "--json").stdout)
    assert not [e for e in shown["events"] if e["type"] == "approval_granted"]
    assert sink.requests == []


# == 3. http_request: what a GET carries decides its effect ==================================


@pytest.mark.parametrize(
    ("args", "effect"),
    [
        ({"method": "GET"}, "network"),
        ({"method": "HEAD", "headers": {}}, "network"),
        ({"method": "GET", "body": ""}, "network"),
        (
            {"method": "GET", "headers": {"Accept": "application/json", "Range": "bytes=0-9"}},
            "network",
        ),
        ({"method": "GET", "headers": {"user-agent": "x", "If-None-Match": '"e"'}}, "network"),
        ({"method": "GET", "body": "q=1"}, "external"),
        ({"method": "HEAD", "body": "{}"}, "external"),
        ({"method": "GET", "headers": {"Authorization": "Bearer t"}}, "external"),
        ({"method": "GET", "headers": {"authorization": "Basic dTpw"}}, "external"),
        ({"method": "GET", "headers": {"Cookie": "session=1"}}, "external"),
        ({"method": "GET", "headers": {"X-Api-Key": "k"}}, "external"),
        ({"method": "HEAD", "headers": {"Accept": "*/*", "X-Custom": "1"}}, "external"),
        ({"method": "GET", "headers": {" Authorization ": "Bearer t"}}, "external"),
        ({"method": "POST"}, "external"),
        ({"method": "DELETE"}, "external"),
    ],
)
def test_http_request_effect_follows_what_the_request_carries(
    args: dict[str, Any], effect: str
) -> None:
    tool = builtin_toolset().get("http_request")
    validated = tool.validate({"url": "https://api.example.com/x", **args})
    assert tool.effect(validated).value == effect


async def get_with_credentials(
    db: Store, settings: Settings, sink: Sink, tools: FunctionToolset | None
) -> str:
    model = script(
        {
            "text": "reading",
            "tool_calls": [
                call(
                    "http_request",
                    method="GET",
                    url=f"{sink.url}/account",
                    headers={"Authorization": "Bearer stolen-session", "X-Exfil": "data"},
                    body="more data",
                )
            ],
        },
        {"text": "done"},
    )
    harness = harness_for(db, settings, tools=tools, model=model, policy=Policy())
    eid = await harness.create("read it", model="scripted:demo")
    await harness.runner().run_errand(eid)
    return eid


async def test_a_get_with_credentials_or_a_body_waits_for_a_person(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    eid = await get_with_credentials(db, net_settings, sink, tools=None)  # the built-ins
    view = await db.view(eid)
    assert view.state is ErrandState.waiting_approval
    (pending,) = view.pending.values()
    assert (pending.effect, pending.rule) == ("external", "effects.external")
    assert "Authorization: Bearer stolen-session" in pending.preview
    assert sink.requests == []


async def test_negative_control_a_method_only_effect_sends_the_credentials_unasked(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    eid = await get_with_credentials(db, net_settings, sink, tools=method_only_toolset())
    assert (await db.view(eid)).state is ErrandState.done
    assert [(r["method"], r["path"]) for r in sink.requests] == [("GET", "/account")]


# == 6. files that execute later =============================================================

# A few entries written out here, so that emptying EXECUTES_LATER fails this test too.
BY_HAND = [
    ".git/config",
    ".git/hooks/pre-commit",
    ".gitattributes",
    ".envrc",
    ".vscode/tasks.json",
    ".github/workflows/ci.yml",
    ".bashrc",
    "sub/.git/config",  # a nested repository
    ".GIT/CONFIG",  # what a case-insensitive file system opens as .git/config
]


def example_of(glob: str) -> list[str]:
    """Concrete paths an entry covers: at the top, and below a directory for ``**/``."""
    body = glob.removeprefix("**/")
    body = body[:-3] + "/x/y.txt" if body.endswith("/**") else body
    body = body.replace("*", "x")
    return [body, f"sub/dir/{body}"] if glob.startswith("**/") else [body]


LISTED = sorted({p for entry in EXECUTES_LATER for p in example_of(entry.glob)})


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("later") / "ws"
    (root / ".git").mkdir(parents=True)
    (root / "notes").mkdir()
    (root / "gitdir").symlink_to(root / ".git")  # a link planted in the workspace
    return root


def write_call(path: str, ws: Path, always: tuple[tuple[str, str], ...] = ()) -> PolicyCall:
    tool = builtin_toolset().get("write_file")
    args = tool.validate({"path": path, "content": "[core]\n\tfsmonitor = evil\n"})
    return PolicyCall(
        errand_id="e1",
        tool="write_file",
        arguments=args,
        effect=tool.effect(args),
        workspace=ws,
        context=BOTTOM,
        always_allowed=always,
        roles=tool.arg_roles,
    )


LOOSE = Policy(rules=[Rule(name="writes-are-fine", tool="write_file", decision=ALLOW)])


@pytest.mark.parametrize("path", BY_HAND + LISTED)
def test_a_write_to_a_file_that_executes_later_is_asked_about(path: str, ws: Path) -> None:
    for policy in (Policy(), LOOSE):  # not loosened by an allow rule either
        verdict = policy.check(write_call(path, ws))
        assert (verdict.decision, verdict.rule) == (ASK, "executes-later"), path
    # nor by an "always" approval whose pattern covers it
    always = (("write_file", json.dumps({"path": "*"})),)
    assert Policy().check(write_call(path, ws, always)).decision is ASK
    assert NoLaterPolicy().check(write_call(path, ws)).decision is ALLOW  # the control


@pytest.mark.parametrize(
    "path",
    [
        "./.git/config",
        "notes/../.git/config",
        " .git/config",
        "gitdir/config",
        "gitdir/hooks/post-checkout",
    ],
)
def test_the_executes_later_vote_sees_through_spellings_and_links(path: str, ws: Path) -> None:
    verdict = Policy().check(write_call(path, ws))
    assert (verdict.decision, verdict.rule) == (ASK, "executes-later")
    assert NoLaterPolicy().check(write_call(path, ws)).decision is ALLOW


@pytest.mark.parametrize(
    "path", ["notes/plan.md", "src/git/config.py", "gitconfig.txt", "my.envrc.bak"]
)
def test_ordinary_files_are_not_on_the_list(path: str, ws: Path) -> None:
    assert Policy().check(write_call(path, ws)).decision is ALLOW


def test_reading_those_files_is_not_asked_about(ws: Path) -> None:
    tool = builtin_toolset().get("read_file")
    args = tool.validate({"path": ".git/config"})
    call_ = PolicyCall("e1", "read_file", args, tool.effect(args), ws, BOTTOM, roles=tool.arg_roles)
    assert Policy().check(call_).decision is ALLOW


def test_docs_security_md_lists_exactly_the_entries_the_policy_matches() -> None:
    text = DOCS.read_text()
    section = text.split("## 6.", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+?) \|$", section, re.MULTILINE)
    assert rows, "docs/security.md has no table of files that execute later"
    assert [g for g, _ in rows] == [e.glob for e in EXECUTES_LATER]
    assert all(glob in [g for g, _ in rows] for glob in ("**/.git/**", "**/.envrc", ".github/**"))


def fsmonitor_errand(marker: Path) -> dict[str, Any]:
    content = f"[core]\n\trepositoryformatversion = 0\n\tfsmonitor = touch {marker}; false\n"
    return {
        "text": "configuring",
        "tool_calls": [call("write_file", path=".git/config", content=content)],
    }


async def run_fsmonitor_attack(
    db: Store, settings: Settings, tmp_path: Path, policy: Policy
) -> tuple[str, Path, Path]:
    repo = settings.workspaces / "repo"  # (a workspace under the default root)
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    marker = tmp_path / "PWNED"
    model = script(fsmonitor_errand(marker), {"text": "done"})
    harness = harness_for(db, settings, model=model, policy=policy)
    eid = await harness.create("set up the repo", model="scripted:demo", workspace=repo)
    await harness.runner().run_errand(eid)
    # what the person does next in their repository
    subprocess.run(["git", "status"], cwd=repo, capture_output=True, check=False)
    return eid, repo, marker


async def test_a_planted_fsmonitor_command_waits_for_a_person(
    db: Store, net_settings: Settings, tmp_path: Path
) -> None:
    eid, repo, marker = await run_fsmonitor_attack(db, net_settings, tmp_path, Policy())
    view = await db.view(eid)
    assert view.state is ErrandState.waiting_approval
    (pending,) = view.pending.values()
    assert pending.rule == "executes-later" and ".git/config" in pending.reason
    assert "fsmonitor" not in (repo / ".git" / "config").read_text()
    assert not marker.exists()


async def test_negative_control_without_the_vote_git_status_runs_the_planted_command(
    db: Store, net_settings: Settings, tmp_path: Path
) -> None:
    eid, _, marker = await run_fsmonitor_attack(db, net_settings, tmp_path, NoLaterPolicy())
    assert (await db.view(eid)).state is ErrandState.done
    assert marker.exists()  # the person's `git status` ran the model's command


def test_canonical_hash_binds_the_canonical_url() -> None:
    """The grant is bound to what will be sent: an edit's spelling is canonical before
    it is hashed, so two spellings of one request are one approval."""
    tool = builtin_toolset().get("http_request")
    a = tool.validate(edit("HTTPS://API.example.com:443/a/../b"))
    b = tool.validate(edit("https://api.example.com/b"))
    assert a == b and canonical_hash(a) == canonical_hash(b)
