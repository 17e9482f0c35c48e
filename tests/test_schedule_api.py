"""Schedules and watches through the HTTP API of a real `errands up` (issue 15, item 5):
``GET/POST /api/schedules``, ``GET/PATCH/DELETE /api/schedules/{name}``, ``POST
/api/schedules/{name}/run``.

A schedule every second starts runs that finish on the scripted model; run now is
claimed at once; a watch against a local page records its baseline, starts nothing while
only an ad changes, and starts one errand -- given the new item, as untrusted content --
when an item appears. Bad input is a 4xx naming the field, and nothing is written. The
routes need the token like every other route when the server asks for one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.server import ServerProc, clean_env, wait_for, write_config
from helpers.static_site import StaticSite, listing

DEMO = "scripted:demo"
FAR = "0 0 1 1 *"  # once a year: never falls during a test


@dataclass
class Up:
    proc: ServerProc
    site: StaticSite

    def api(self) -> httpx.Client:
        return self.proc.client()

    def get(self, name: str) -> dict[str, Any]:
        with self.api() as api:
            r = api.get(f"/api/schedules/{name}")
            assert r.status_code == 200, r.text
            data: dict[str, Any] = r.json()
            return data

    def names(self) -> set[str]:
        with self.api() as api:
            return {s["name"] for s in api.get("/api/schedules").json()}

    def errand(self, errand_id: str) -> dict[str, Any]:
        with self.api() as api:
            data: dict[str, Any] = api.get(f"/api/errands/{errand_id}").json()
            return data


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    base = tmp_path_factory.mktemp("schedule-api")
    home = base / "home"
    write_config(home)  # the site on 127.0.0.1 is allowed
    site = StaticSite(base / "site")
    proc = ServerProc(home).start()
    try:
        yield Up(proc, site)
    finally:
        proc.kill()
        site.close()
        assert "Traceback" not in proc.output(), proc.output()[-5000:]


def create(up: Up, **body: Any) -> httpx.Response:
    with up.api() as api:
        return api.post("/api/schedules", json={"text": "say hello", "model": DEMO, **body})


SUMMARY = {
    "name",
    "kind",
    "mode",
    "when",
    "text",
    "state",
    "paused",
    "next_at",
    "due_at",
    "model",
    "max_cost_usd",
    "daily_usd",
    "spent_today_usd",
    "runs",
    "skipped",
    "last_run",
    "last_run_state",
    "last_run_result",
    "last_run_cost_usd",
    "last_error",
    "errors",
    "retry_at",
    "note",
}
WATCH = {"url", "select", "json_path", "checks", "changes", "last_check_at"}


def test_add_show_list_edit_pause_resume_and_remove(up: Up) -> None:
    r = create(up, name="morning", kind="cron", cron="0 8 * * 1-5", tz="Europe/Paris", daily_usd=2)
    assert r.status_code == 201, r.text
    made = r.json()
    assert set(made) == SUMMARY | {"spec", "recent"}
    assert made["when"] == "cron 0 8 * * 1-5 (Europe/Paris)" and made["state"] == "active"
    assert made["spec"]["tz"] == "Europe/Paris" and made["spec"]["model"] == DEMO
    assert made["spec"]["by"] == "api" and made["recent"] == [] and made["daily_usd"] == 2
    slot = time.gmtime(made["next_at"])  # 08:00 in Paris is 07:00 UTC in winter, 06:00 in summer
    assert slot.tm_min == 0 and slot.tm_hour in (6, 7) and slot.tm_wday < 5
    with up.api() as api:
        (listed,) = [s for s in api.get("/api/schedules").json() if s["name"] == "morning"]
        assert set(listed) == SUMMARY  # the list leaves the definition and history out
        assert api.get("/api/schedules/morning").json() == made

        edited = api.patch("/api/schedules/morning", json={"text": "the board, briefly"})
        assert edited.status_code == 200, edited.text
        assert edited.json()["text"] == "the board, briefly"
        assert edited.json()["next_at"] == made["next_at"]  # the timing did not change

        paused = api.patch("/api/schedules/morning", json={"paused": True}).json()
        assert paused["state"] == "paused" and paused["paused"] is True
        resumed = api.patch("/api/schedules/morning", json={"paused": False}).json()
        assert resumed["state"] == "active" and resumed["next_at"] == made["next_at"]

        retimed = api.patch("/api/schedules/morning", json={"cron": "30 9 * * *"}).json()
        assert retimed["when"] == "cron 30 9 * * * (Europe/Paris)"

        gone = api.delete("/api/schedules/morning")
        assert gone.status_code == 204 and gone.content == b""
        assert api.get("/api/schedules/morning").status_code == 404
        again = api.delete("/api/schedules/morning")
        assert again.status_code == 404 and "morning" in again.json()["detail"]
        assert api.patch("/api/schedules/morning", json={"paused": True}).status_code == 404
    assert "morning" not in up.names()


def test_every_second_starts_runs_that_finish(up: Up) -> None:
    r = create(up, name="tick", kind="every", every="1s", max_cost_usd=0.5)
    assert r.status_code == 201, r.text
    try:
        shown = wait_for(
            lambda: (s := up.get("tick"))["runs"] >= 2 and s["last_run_state"] == "done" and s,
            timeout=30,
        )
        assert shown["last_run_result"].startswith("Done:")  # the scripted demo's answer
        done = [r for r in shown["recent"] if r["state"] == "done"]
        assert done and all(r["outcome"] == "started" and r["cost_usd"] == 0 for r in done)
        run = up.errand(shown["last_run"])
        assert run["schedule"] == "tick" and run["status"] == "done"
        with up.api() as api:
            rows = api.get("/api/errands", params={"limit": 200}).json()
        assert {r["schedule"] for r in rows if r["id"] == shown["last_run"]} == {"tick"}
        # each run was told it is a run of the schedule, with the previous run (last_run)
        told = [
            e["event"]["content"]["text"]
            for e in run["events"]
            if e["event"]["type"] == "user_message"
        ]
        assert "a run of the schedule 'tick'" in told[0] and "last_run: errand" in told[0]

        with up.api() as api:
            assert api.patch("/api/schedules/tick", json={"paused": True}).status_code == 200
        before = up.get("tick")["runs"]
        time.sleep(2.5)
        assert up.get("tick")["runs"] == before  # paused: no slot starts a run
    finally:
        with up.api() as api:
            api.delete("/api/schedules/tick")


def test_run_now_starts_a_run_claimed_at_once(up: Up) -> None:
    assert create(up, name="yearly", kind="cron", cron=FAR).status_code == 201
    try:
        with up.api() as api:
            t0 = time.monotonic()
            r = api.post("/api/schedules/yearly/run")
            assert r.status_code == 200, r.text
            said = r.json()
            assert said["outcome"] == "started" and said["schedule"] == "yearly"
            assert said["errand_id"] in said["detail"]
            errand_id = said["errand_id"]
            wait_for(lambda: up.errand(errand_id)["status"] == "done", timeout=15)
            assert time.monotonic() - t0 < 10  # claimed at once, not at a later poll
            shown = up.get("yearly")
            assert shown["last_run"] == errand_id and shown["runs"] == 1
            assert shown["recent"][0]["errand_id"] == errand_id
            missing = api.post("/api/schedules/nothing-here/run")
            assert missing.status_code == 404 and "nothing-here" in missing.json()["detail"]
    finally:
        with up.api() as api:
            api.delete("/api/schedules/yearly")


def bad_bodies(server_port: int) -> list[tuple[dict[str, Any], int, str]]:
    watch = {"kind": "watch", "every": "1h"}
    return [
        ({"kind": "cron", "cron": "61 * * * *"}, 422, "cron: "),
        ({"kind": "cron", "cron": "0 8 * *"}, 422, "cron: "),
        ({"kind": "cron", "cron": "0 8 * * *", "tz": "Mars/Olympus"}, 422, "tz: "),
        ({"kind": "every", "every": "0"}, 422, "every: "),
        ({"kind": "every", "every": 0.5}, 422, "every: "),
        ({"kind": "every", "every": "soon"}, 422, "every: "),
        ({"kind": "every"}, 422, "every: "),
        ({"kind": "every", "every": "1h", "cron": "* * * * *"}, 422, "cron: "),
        ({"kind": "at", "at": "2099-12-08T09:00"}, 422, "at: "),  # no UTC offset
        ({"kind": "at", "at": "2001-12-08T09:00+01:00"}, 422, "at: "),  # passed
        ({"kind": "at", "at": "9999-12-31T23:59:59-23:59"}, 422, "at: "),  # past year 9999
        ({**watch, "url": "http://10.0.0.1/"}, 422, "url: "),
        ({**watch, "url": "http://169.254.169.254/latest"}, 422, "url: "),
        ({**watch, "url": f"http://127.0.0.1:{server_port}/"}, 422, "url: "),  # errands itself
        ({**watch, "url": "file:///etc/passwd"}, 422, "url: "),
        ({**watch}, 422, "url: "),
        (
            {**watch, "url": "http://127.0.0.1:9/", "select": "li", "json_path": "$.a"},
            422,
            "select: ",
        ),
        ({**watch, "url": "http://127.0.0.1:9/", "select": "li["}, 422, "select: "),
        ({**watch, "url": "http://127.0.0.1:9/", "json_path": "$[?"}, 422, "json_path: "),
        (
            {**watch, "url": "http://127.0.0.1:9/", "headers": {"Authorization": "Bearer x"}},
            422,
            "headers: ",
        ),
        ({"kind": "every", "every": "1h", "name": "two words"}, 422, "name: "),
        ({"kind": "every", "every": "1h", "text": "  "}, 422, "text: "),
        ({"kind": "every", "every": "1h", "max_cost_usd": 0}, 422, "max_cost_usd: "),
        ({"kind": "every", "every": "1h", "daily_usd": -1}, 422, "daily_usd: "),
        ({"kind": "every", "every": "1h", "max_steps": 0}, 422, "max_steps: "),
        ({"kind": "every", "every": "1h", "model": "nosuch:model"}, 422, "model: "),
        ({"kind": "every", "every": "1h", "tools": ["read_file", "nosuch"]}, 422, "tools: "),
        ({"kind": "every", "every": "1h", "colour": "red"}, 422, "body.colour: "),
        ({"kind": "sometimes"}, 422, "body.kind: "),
    ]


def test_bad_input_is_a_4xx_naming_the_field_and_nothing_is_written(up: Up) -> None:
    assert create(up, name="taken", kind="cron", cron=FAR).status_code == 201
    before = up.names()
    with up.api() as api:
        for body, status, field in bad_bodies(up.proc.port):
            r = api.post("/api/schedules", json={"name": "fresh", "text": "x", **body})
            assert r.status_code == status, (body, r.text)
            detail = r.json()["detail"]
            assert detail.startswith(field) and "\n" not in detail, (body, detail)
        dup = create(up, name="taken", kind="every", every="1h")
        assert dup.status_code == 409 and "taken" in dup.json()["detail"]
        # an edit is validated the same way, and refused as a whole
        r = api.patch("/api/schedules/taken", json={"text": "new", "cron": "0 25 * * *"})
        assert r.status_code == 422 and r.json()["detail"].startswith("cron: ")
        assert api.patch("/api/schedules/taken", json={"speed": 1}).status_code == 422
        assert api.get("/api/schedules/taken").json()["text"] == "say hello"
        assert api.get("/api/schedules/bad%20name").status_code == 422  # not a name at all
        api.delete("/api/schedules/taken")
    assert up.names() == before - {"taken"}
    assert "fresh" not in up.names()


def test_a_watch_records_a_baseline_then_starts_an_errand_for_new_items_only(up: Up) -> None:
    url = up.site.write("listings.html", listing("Flat A, 2 rooms", "Flat B, 3 rooms"))
    r = create(
        up,
        name="listings",
        kind="watch",
        url=url,
        select="li.item",
        every="1s",
        text="tell me about new listings",
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert set(made) == SUMMARY | WATCH | {"spec", "recent"}
    assert made["url"] == url and made["select"] == "li.item" and made["when"] == "checks every 1s"
    try:
        wait_for(lambda: up.get("listings")["checks"] >= 3, timeout=30)
        up.site.write("listings.html", listing("Flat A, 2 rooms", "Flat B, 3 rooms"))  # an ad
        seen = up.get("listings")["checks"]
        wait_for(lambda: up.get("listings")["checks"] >= seen + 2, timeout=30)
        quiet = up.get("listings")
        assert quiet["runs"] == 0 and quiet["changes"] == 0 and quiet["last_run"] is None

        up.site.write(
            "listings.html", listing("Flat C, 1 room", "Flat A, 2 rooms", "Flat B, 3 rooms")
        )
        changed = wait_for(lambda: (s := up.get("listings"))["runs"] == 1 and s, timeout=30)
        assert changed["changes"] == 1
        run = wait_for(
            lambda: (e := up.errand(changed["last_run"]))["status"] == "done" and e, timeout=30
        )
        assert run["schedule"] == "listings"
        diffs = [
            e["event"]["content"]
            for e in run["events"]
            if e["event"]["type"] == "user_message" and e["event"]["channel"] == "watch"
        ]
        assert len(diffs) == 1 and diffs[0]["integrity"] == "untrusted"
        assert "Flat C, 1 room" in diffs[0]["text"] and "Flat A" not in diffs[0]["text"]

        with up.api() as api:
            said = api.post("/api/schedules/listings/run").json()
        assert said == {
            "schedule": "listings",
            "errand_id": None,
            "outcome": "unchanged",
            "detail": "watch listings: checked: nothing new, no errand started",
        }
        assert up.get("listings")["runs"] == 1
    finally:
        with up.api() as api:
            api.delete("/api/schedules/listings")


def test_a_failing_watch_says_why_and_run_now_says_it_failed(up: Up) -> None:
    r = create(up, name="gone", kind="watch", url=up.site.url("missing.html"), every="1h")
    assert r.status_code == 201, r.text
    try:
        with up.api() as api:
            said = api.post("/api/schedules/gone/run").json()
        assert said["outcome"] == "failed" and said["errand_id"] is None
        assert "404" in said["detail"]
        shown = up.get("gone")
        assert shown["state"] == "erroring" and shown["errors"] >= 1
        assert "404" in shown["last_error"] and shown["retry_at"] is not None
    finally:
        with up.api() as api:
            api.delete("/api/schedules/gone")


def test_the_openapi_document_lists_the_routes_with_their_schemas(up: Up) -> None:
    with up.api() as api:
        spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/api/schedules"]) == {"get", "post"}
    assert set(paths["/api/schedules/{name}"]) == {"get", "patch", "delete"}
    assert set(paths["/api/schedules/{name}/run"]) == {"post"}
    post = paths["/api/schedules"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/ScheduleRequest")
    assert post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ScheduleDetail"
    )
    assert {"409", "422"} <= set(post["responses"])
    request = spec["components"]["schemas"]["ScheduleRequest"]
    assert {"name", "kind", "text"} <= set(request["required"])
    assert {"cron", "tz", "every", "at", "url", "select", "json_path", "catch_up"} <= set(
        request["properties"]
    )
    patch = spec["components"]["schemas"]["SchedulePatch"]
    assert "paused" in patch["properties"]
    assert paths["/api/schedules/{name}"]["delete"]["responses"]["204"]


def test_the_routes_need_the_token_when_the_server_asks_for_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, "[server]\nrequire_token = true")
    proc = ServerProc(home, env=clean_env(home)).start()
    try:
        assert proc.token
        with httpx.Client(base_url=proc.url, timeout=10) as anonymous:
            for method, path in [
                ("GET", "/api/schedules"),
                ("POST", "/api/schedules"),
                ("GET", "/api/schedules/x"),
                ("DELETE", "/api/schedules/x"),
                ("POST", "/api/schedules/x/run"),
            ]:
                assert anonymous.request(method, path).status_code == 401, (method, path)
        with proc.client() as api:
            assert api.get("/api/schedules").json() == []
            body = {"name": "x", "kind": "every", "every": "1h", "text": "x", "model": DEMO}
            assert api.post("/api/schedules", json=body).status_code == 201
            assert api.delete("/api/schedules/x").status_code == 204
    finally:
        proc.kill()
