"""Issue 13, item 11: a changed ``policy.toml`` is used without a restart.

Every errands process checks, at most once a second, whether the file changed and reads
it again, so a change is in force everywhere within 2 s; a file that is not valid is
refused, once, in the log, and the policy in force stays. Checked in-process with a
clock the test moves (control: ``StaticPolicyFile``, a policy read once), and with real
processes: a running ``errands up`` doing real requests to a local HTTP endpoint, and
``errands policy reload`` through the real CLI.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from helpers.kit import call, write_script
from helpers.server import ServerProc, Sink, running, wait_for, write_config

from errands.config import load_settings
from errands.core.events import EffectClass
from errands.core.labels import BOTTOM
from errands.errors import ConfigError
from errands.harness import build
from errands.policy.hook import Decision, PolicyCall
from errands.policy.reload import PolicyFile
from errands.tools.tool import ArgRole

ALLOW, DENY = Decision.allow, Decision.deny

DENY_PROBES = """\
[[rules]]
name = "no-probes"
args = {{ url = "{url}/probe/*" }}
decision = "deny"
reason = "probes are off"
"""


class StaticPolicyFile(PolicyFile):
    """The policy read once, at start: what errands did before (a restart needed)."""

    def refresh(self) -> bool:
        return False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def probe(url: str = "https://example.com/probe/1") -> PolicyCall:
    return PolicyCall(
        errand_id="e1",
        tool="http_request",
        arguments={"method": "GET", "url": url},
        effect=EffectClass.network,
        workspace=Path("/nonexistent"),
        context=BOTTOM,
        roles={"url": ArgRole.url},
    )


def rewrite(path: Path, text: str) -> None:
    """Replace the file as an editor does (a new file renamed over the old one)."""
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    temp.replace(path)


def test_a_changed_policy_is_used_within_two_seconds(home: Path) -> None:
    for cls, sees_it in ((PolicyFile, True), (StaticPolicyFile, False)):
        (home / "policy.toml").write_text("")
        clock = Clock()
        policy = cls(home, clock=clock)
        assert policy.check(probe()).decision is ALLOW
        (home / "policy.toml").write_text(DENY_PROBES.format(url="https://example.com"))
        clock.now += 0.5
        policy.check(probe())  # (looked less than a second ago: not yet)
        clock.now += 0.5
        decision = policy.check(probe()).decision  # a second after the last look: read again
        assert (decision is DENY) is sees_it, cls.__name__
        clock.now += 1.0
        assert (policy.check(probe()).decision is DENY) is sees_it, cls.__name__


def test_a_change_is_seen_on_the_real_clock(home: Path) -> None:
    (home / "policy.toml").write_text("")
    policy = PolicyFile(home)
    assert policy.check(probe()).decision is ALLOW
    rewrite(home / "policy.toml", DENY_PROBES.format(url="https://example.com"))
    changed = time.monotonic()
    while policy.check(probe()).decision is not DENY:
        assert time.monotonic() - changed < 2.0, "not seen within 2 s"
        time.sleep(0.02)


def test_an_invalid_file_is_refused_and_the_old_policy_kept(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = home / "policy.toml"
    path.write_text(DENY_PROBES.format(url="https://example.com"))
    clock = Clock()
    policy = PolicyFile(home, clock=clock)
    assert policy.check(probe()).decision is DENY
    caplog.set_level(logging.INFO, logger="errands.policy")
    for bad in ("[[rules]\nname = 'x'", '[[rules]]\nname = "x"\ndecision = "maybe"\n'):
        rewrite(path, bad)
        for _ in range(3):
            clock.now += 1.0
            assert policy.check(probe()).decision is DENY  # the old policy stays
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refusals) == 2, refusals  # once per bad file, not once per look
    assert "not valid TOML" in refusals[0] and "stays in force" in refusals[0]
    assert "decision" in refusals[1]
    path.unlink()  # gone: the policy in force stays too
    clock.now += 1.0
    assert policy.check(probe()).decision is DENY
    rewrite(path, "")  # a valid file again: taken
    clock.now += 1.0
    assert policy.check(probe()).decision is ALLOW
    assert (policy.reloads, policy.refusals) == (1, 3)


def test_an_invalid_file_at_start_stops_with_one_clear_error(home: Path) -> None:
    (home / "policy.toml").write_text("[effects]\nnetwork = 'sometimes'\n")
    with pytest.raises(ConfigError, match=r"effects\.network"):
        PolicyFile(home)


async def test_the_harness_policy_follows_the_file(home: Path) -> None:
    harness = build(load_settings(home))
    try:
        policy = harness.policy
        assert isinstance(policy, PolicyFile)
        assert harness.approvals.policy is policy  # approvals are judged by the same one
    finally:
        await harness.close()


# -- real processes ----------------------------------------------------------------------


def probe_errand(server: ServerProc, tmp: Path, sink: Sink, n: int) -> dict[str, Any]:
    """Create an errand that GETs the sink's /probe/N; wait until it settles."""
    spec = write_script(
        tmp / f"probe{n}.json",
        {
            "text": "probing",
            "tool_calls": [call("http_request", method="GET", url=f"{sink.url}/probe/{n}")],
        },
        {"text": "probed"},
    )
    with server.client() as api:
        r = api.post("/api/errands", json={"text": f"probe {n}", "model": spec})
        assert r.status_code == 201, r.text
        errand_id = r.json()["id"]

        def settled() -> dict[str, Any] | None:
            detail: dict[str, Any] = api.get(f"/api/errands/{errand_id}").json()
            return detail if detail["status"] not in ("queued", "running") else None

        return wait_for(settled)


def outcome(detail: dict[str, Any]) -> str:
    (result,) = [e["event"] for e in detail["events"] if e["event"]["type"] == "tool_result"]
    return "ran" if result["ok"] else result["error_kind"]


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def test_a_running_server_sees_a_changed_policy_within_two_seconds(
    tmp_path: Path, sink: Sink, cli: CLI, home: Path
) -> None:
    write_config(home)
    path = home / "policy.toml"
    path.write_text("")
    with running(home) as server:  # (the default: worker processes, each with its own look)
        assert outcome(probe_errand(server, tmp_path, sink, 1)) == "ran"

        rewrite(path, DENY_PROBES.format(url=sink.url))
        wait_until(time.monotonic() + 2.0)
        assert outcome(probe_errand(server, tmp_path, sink, 2)) == "denied"

        rewrite(path, "[[rules]\n")  # not valid: refused, the deny stays
        r = cli("policy", "reload")
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "not valid TOML" in r.stderr and "keep the policy they have" in r.stderr
        wait_until(time.monotonic() + 2.0)
        assert outcome(probe_errand(server, tmp_path, sink, 3)) == "denied"

        rewrite(path, "# probes are fine again\n")
        r = cli("policy", "reload")
        assert r.returncode == 0, r.stderr
        assert f"the server at {server.url}" in r.stdout and "within 2 s" in r.stdout
        wait_until(time.monotonic() + 2.0)
        assert outcome(probe_errand(server, tmp_path, sink, 4)) == "ran"
        log = server.err_path.read_text()
    assert [q["path"] for q in sink.requests] == ["/probe/1", "/probe/4"]
    assert log.count("not valid TOML") == 1, log  # said once, on the server's stderr
    assert log.count("stays in force") == 1


def test_errands_policy_reload_refuses_an_invalid_file(cli: CLI, home: Path) -> None:
    path = home / "policy.toml"
    path.write_text(
        '[[rules]]\nname = "a"\ndecision = "deny"\n[[rules]]\nname = "a"\ndecision = "ask"\n'
    )
    before = path.read_text()
    r = cli("policy", "reload")
    assert r.returncode == 2
    assert "two rules share a name" in r.stderr and "keep the policy they have" in r.stderr
    assert r.stderr.count("error:") == 1 and path.read_text() == before  # nothing changed
    path.write_text('[[rules]]\nname = "a"\ndecision = "deny"\n')
    mtime = path.stat().st_mtime_ns
    r = cli("policy", "reload", "--json")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert (answer["valid"], answer["rules"], answer["server"]) == (True, 1, None)
    assert path.stat().st_mtime_ns > mtime  # marked changed for every running process
