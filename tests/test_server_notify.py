"""The webhook notifier, against a real server and a real (flaky) webhook endpoint."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.server import ServerProc, Sink, post_script, wait_for, write_config


def test_webhook_is_told_and_retried_without_secrets(tmp_path: Path) -> None:
    hook = Sink(fail_first=2)  # the first two deliveries get 503: they must be retried
    sink = Sink()
    home = tmp_path / "home"
    write_config(home, f'[notify]\nwebhook_url = "{hook.url}/hook"\n')
    proc = ServerProc(home).start()
    try:
        with proc.client() as api:
            spec = post_script(tmp_path / "s.json", f"{sink.url}/post", body="SECRET-BODY-42")
            r = api.post("/api/errands", json={"text": "post it", "model": spec})
            errand_id = r.json()["id"]
            wait_for(lambda: hook.effects, timeout=30)
            note = json.loads(hook.effects[0]["body"])
            assert note["event"] == "approval_requested"
            assert note["errand_id"] == errand_id
            assert note["title"] == "post it"
            assert note["tool"] == "http_request" and note["effect"] == "external"
            assert note["url"] == f"{proc.url}/errands/{errand_id}"
            assert "waits for your approval" in note["text"]
            approval_id = note["approval_id"]
            assert api.post(f"/api/approvals/{approval_id}/approve", json={}).status_code == 200
            wait_for(lambda: len(hook.effects) == 2, timeout=30)
            done = json.loads(hook.effects[1]["body"])
            assert done["event"] == "errand_done" and done["state"] == "done"
            assert done["summary"] == "Sent: the note is posted."  # the result's first line
            assert done["text"] == "errands: done — post it: Sent: the note is posted."
        assert len(hook.requests) == 4  # two refused, then one each
        for request in hook.requests:  # never argument values or URLs it called
            assert "SECRET-BODY-42" not in request["body"]
            assert sink.url not in request["body"]
    finally:
        proc.kill()
        hook.close()
        sink.close()


def test_a_dead_webhook_never_blocks_errands(tmp_path: Path) -> None:
    sink = Sink()
    home = tmp_path / "home"
    write_config(home, '[notify]\nwebhook_url = "http://127.0.0.1:9/nobody-listens"\nretries = 1\n')
    proc = ServerProc(home).start()
    try:
        with proc.client() as api:
            spec = post_script(tmp_path / "s.json", f"{sink.url}/post")
            errand_id = api.post("/api/errands", json={"text": "go", "model": spec}).json()["id"]

            def approval() -> str | None:
                pending = api.get("/api/approvals").json()
                return pending[0]["id"] if pending else None

            approval_id = wait_for(approval)
            assert api.post(f"/api/approvals/{approval_id}/approve", json={}).status_code == 200
            wait_for(lambda: api.get(f"/api/errands/{errand_id}").json()["status"] == "done")
        wait_for(lambda: "gave up" in proc.output(), timeout=20)
        assert proc.stop() == 0
    finally:
        proc.kill()
        sink.close()


def test_the_summary_is_a_first_line_and_never_a_secret_result() -> None:
    from errands.channels.webhook import _summary
    from errands.core import events as ev
    from errands.core.labels import Confidentiality, Provenance

    def ended(text: str, confidentiality: Confidentiality) -> ev.StateChanged:
        content = ev.Content(
            text=text, provenance=Provenance(kind="model"), confidentiality=confidentiality
        )
        return ev.StateChanged(state="done", result=content)

    assert _summary(ended("\n  Three new flats.\nDetails...", Confidentiality.private)) == (
        "Three new flats."
    )
    assert _summary(ended("the code is 1234", Confidentiality.secret)) == ""
    assert len(_summary(ended("x" * 500, Confidentiality.public))) == 200
    failed = ev.StateChanged(state="failed", reason="step limit reached (2 of 2 model turns)")
    assert _summary(failed) == "step limit reached (2 of 2 model turns)"
