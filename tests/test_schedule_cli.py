"""``errands schedule`` and ``errands watch``, as a person types them (issue 15, item 5):
real `errands` subprocesses, and a real `errands up` where the schedules must fire.

Adding prints one line (the next run in the person's time zone, ``timezone`` in
errands.toml); ``ls``/``show`` read it back, ``--json`` for machines; pause, resume, rm;
``run-now`` runs the errand here when no server runs and goes through the server when
one does; with ``errands up`` a schedule every second starts runs that finish, and a
watch against a local page starts an errand only for a new item. Bad input is one line
naming the option, exit 2, and nothing is written. ``errands ls`` marks a run with its
schedule and says until when, and why, an errand sleeps.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from helpers.kit import call, write_script
from helpers.server import ServerProc, clean_env, wait_for, write_config
from helpers.static_site import StaticSite, listing

DEMO = "scripted:demo"


def shown(cli: CLI, name: str) -> dict[str, Any]:
    r = cli("schedule", "show", name, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def listed(cli: CLI) -> list[dict[str, Any]]:
    r = cli("schedule", "ls", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


def ok(r: Any) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return str(r.stdout)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[StaticSite]:
    s = StaticSite(tmp_path / "site")
    yield s
    s.close()


@pytest.fixture
def up(home: Path) -> Iterator[ServerProc]:
    """`errands up` for the CLI's home, the local site allowed (write the config first)."""
    if not (home / "errands.toml").exists():
        write_config(home)
    proc = ServerProc(home, env=clean_env(home)).start()
    yield proc
    proc.kill()
    assert "Traceback" not in proc.output(), proc.output()[-5000:]


def test_add_list_show_pause_resume_and_remove(cli: CLI, home: Path) -> None:
    (home / "errands.toml").write_text('timezone = "America/New_York"\n')
    said = ok(
        cli(
            "schedule", "add", "morning", "summarise my board", "--cron", "0 8 * * 1-5",
            "--tz", "Europe/Paris", "-m", DEMO, "--daily", "2", "--max-cost", "0.5",
        )
    )  # fmt: skip
    first, hint = said.splitlines()[:2]
    # the next run in the person's zone: 08:00 in Paris is 02:00 in New York
    assert re.fullmatch(
        r"schedule morning added: cron 0 8 \* \* 1-5 \(Europe/Paris\); "
        r"next run (Mon|Tue|Wed|Thu|Fri) \d+ \w{3}( \d{4})? 02:00 EST",
        first,
    ), first
    assert "no errands up runs for this home" in hint
    ok(cli("schedule", "add", "hourly", "look around", "--every", "90m", "-m", DEMO))

    table = ok(cli("schedule", "ls"))
    assert "morning" in table and "hourly" in table and "02:00 EST" in table
    rows = {r["name"]: r for r in listed(cli)}
    assert set(rows) == {"morning", "hourly"}
    assert rows["hourly"]["when"] == "every 1h30m" and rows["morning"]["daily_usd"] == 2
    assert "spec" not in rows["morning"]  # the list leaves the definition out

    detail = shown(cli, "morning")
    assert detail["spec"]["tz"] == "Europe/Paris" and detail["spec"]["max_cost_usd"] == 0.5
    assert detail["state"] == "active" and detail["recent"] == []
    text = ok(cli("schedule", "show", "morning"))
    for words in ("cron 0 8 * * 1-5 (Europe/Paris)", "summarise my board", "02:00 EST", "$2.00"):
        assert words in text, text

    assert ok(cli("schedule", "pause", "morning")).startswith("morning paused")
    assert shown(cli, "morning")["state"] == "paused"
    assert "paused" in ok(cli("schedule", "ls"))
    assert ok(cli("schedule", "resume", "morning")).startswith("morning resumed: next run ")
    assert shown(cli, "morning")["state"] == "active"

    assert ok(cli("schedule", "rm", "hourly")) == "hourly removed\n"
    assert [r["name"] for r in listed(cli)] == ["morning"]
    assert ok(cli("watch", "ls")).startswith("No watches yet")
    assert json.loads(ok(cli("schedule", "rm", "morning", "--json"))) == {
        "removed": "morning",
        "runs": 0,
    }
    assert listed(cli) == []


S = ["schedule", "add", "x", "t"]
# a watch of a public address, not a name: nothing is resolved or fetched when it is added
W = ["watch", "add", "x", "t", "--every", "1h", "--url", "http://8.8.8.8/"]
BAD = [
    ([*S, "--cron", "61 * * * *"], "--cron: "),
    ([*S, "--cron", "0 8 * *"], "--cron: "),
    ([*S, "--cron", "0 8 * * *", "--tz", "Mars/Olympus"], "--tz: "),
    ([*S, "--every", "0"], "--every: "),
    ([*S, "--every", "0.5s"], "--every: "),
    ([*S, "--every", "whenever"], "--every: "),
    ([*S, "--at", "2001-01-01T09:00"], "--at: "),
    ([*S, "--at", "next tuesday"], "--at: "),
    ([*S, "--at", "9999-12-31T23:00"], "--at: "),
    (S, "give one of --cron, --every or --at"),
    ([*S, "--every", "1h", "--cron", "* * * * *"], "give one of"),
    (["schedule", "add", "two words", "t", "--every", "1h"], "NAME: "),
    (["schedule", "add", "x", " ", "--every", "1h"], "TEXT: "),
    ([*S, "--every", "1h", "--max-cost", "0"], "--max-cost: "),
    ([*S, "--every", "1h", "--daily", "-1"], "--daily: "),
    ([*S, "--every", "1h", "-m", "nosuch:model"], "--model: "),
    ([*S, "--every", "1h", "--tool", "read_file", "--tool", "nosuch"], "--tool: "),
    ([*W[:-1], "http://10.0.0.1/"], "--url: "),
    ([*W[:-1], "http://127.0.0.1:8080/"], "--url: "),  # (not in allow_private here)
    ([*W[:-1], "file:///etc/passwd"], "--url: "),
    ([*W[:4], "--every", "0", *W[-2:]], "--every: "),
    ([*W, "--select", "li", "--json-path", "$.items[*]"], "--select: "),
    ([*W, "--select", "li["], "--select: "),
    ([*W, "--json-path", "$[?"], "--json-path: "),
    ([*W, "--header", "Authorization=Bearer abc"], "--header: "),
    ([*W, "--header", "no-equals-sign"], "--header: "),
    (["schedule", "pause", "nothing"], "no schedule named 'nothing'"),
    (["schedule", "run-now", "nothing"], "no schedule named 'nothing'"),
    (["schedule", "show", "nothing"], "no schedule named 'nothing'"),
]


def test_bad_input_is_one_line_naming_the_option_exit_2_and_nothing_written(cli: CLI) -> None:
    ok(cli("schedule", "add", "taken", "t", "--every", "1h", "-m", DEMO))
    cases = [
        *BAD,
        (
            ["schedule", "add", "taken", "t", "--every", "2h"],
            "a schedule named 'taken' exists already",
        ),
    ]
    for args, says in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), (args, r.stderr)
        assert r.stdout == "", (args, r.stdout)
    assert [(r["name"], r["when"]) for r in listed(cli)] == [("taken", "every 1h")]


def test_run_now_without_a_server_runs_it_here_or_queues_it(cli: CLI) -> None:
    ok(cli("schedule", "add", "yearly", "make the list", "--cron", "0 0 1 1 *", "-m", DEMO))
    said = ok(cli("schedule", "run-now", "yearly"))
    first = said.splitlines()[0]
    match = re.match(
        r"schedule yearly: run started: (\w+) \(no server runs: running it here\)", first
    )
    assert match, said
    errand_id = match.group(1)
    assert f"{errand_id} · done" in said
    (row,) = json.loads(ok(cli("ls", "--json")))
    assert row["id"] == errand_id and row["schedule"] == "yearly" and row["status"] == "done"
    assert re.search(rf"{errand_id} .*⏲ yearly make the list", ok(cli("ls")))

    queued = ok(cli("schedule", "run-now", "yearly", "--queue")).splitlines()
    queued_id = queued[0].rsplit(" ", 1)[1]
    assert queued[1] == f"queued: errands up runs it, or run it here: errands resume {queued_id}"
    assert json.loads(ok(cli("show", queued_id, "--json")))["status"] == "queued"

    time.sleep(1.1)  # (a run a second: a schedule's slot is a whole second)
    machine = json.loads(ok(cli("schedule", "run-now", "yearly", "--json")))
    assert machine["outcome"] == "started" and machine["via"] is None
    assert machine["errand"]["status"] == "done" and machine["errand"]["schedule"] == "yearly"
    detail = shown(cli, "yearly")
    assert detail["runs"] == 3 and [r["outcome"] for r in detail["recent"]] == ["started"] * 3


def test_a_runs_calls_stop_at_its_schedules_daily_budget(cli: CLI, home: Path) -> None:
    # a price for the scripted model: one call may cost dollars, the schedule's day $0.01
    (home / "errands.toml").write_text('[prices."scripted:demo"]\ninput = 1000\noutput = 1000\n')
    ok(
        cli(
            "schedule",
            "add",
            "dear",
            "make the list",
            "--every",
            "1d",
            "-m",
            DEMO,
            "--daily",
            "0.01",
        )
    )
    r = cli("schedule", "run-now", "dear")  # the run starts, and its first call is refused
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the daily budget of schedule dear of $0.0100 is reached" in r.stdout
    detail = shown(cli, "dear")
    assert detail["runs"] == 1 and detail["spent_today_usd"] == 0  # nothing was spent


def test_with_errands_up_a_schedule_every_second_runs_and_run_now_goes_through_it(
    cli: CLI, up: ServerProc
) -> None:
    said = ok(cli("schedule", "add", "tick", "say hi", "--every", "1s", "-m", DEMO))
    assert said.startswith("schedule tick added: every 1s; next run ")
    assert "no errands up runs" not in said  # a server runs: nothing to say
    done = wait_for(
        lambda: (s := shown(cli, "tick"))["runs"] >= 2 and s["last_run_state"] == "done" and s,
        timeout=30,
    )
    rows = [r for r in json.loads(ok(cli("ls", "--json"))) if r["id"] == done["last_run"]]
    assert rows and rows[0]["schedule"] == "tick"
    assert "⏲ tick" in ok(cli("ls"))
    assert re.search(r"tick .* active .* \w{13} \w+ ", ok(cli("schedule", "ls")))

    ok(cli("schedule", "pause", "tick"))
    runs = shown(cli, "tick")["runs"]
    time.sleep(2.5)
    assert shown(cli, "tick")["runs"] == runs  # paused in the store: the server saw it
    wait_for(lambda: shown(cli, "tick")["last_run_state"] == "done")
    table = ok(cli("schedule", "ls"))
    assert re.search(r"tick .* paused .* — \(paused\) .* done .* " + str(runs), table), table

    now = ok(cli("schedule", "run-now", "tick")).splitlines()
    match = re.fullmatch(r"schedule tick: run started: (\w+) \(the server runs it now\)", now[0])
    assert match, now
    assert now[1].startswith(f"follow it: errands show {match.group(1)} · {up.url}/errands/")
    wait_for(lambda: json.loads(ok(cli("show", match.group(1), "--json")))["status"] == "done")
    time.sleep(1.1)
    machine = json.loads(ok(cli("schedule", "run-now", "tick", "--json")))
    assert machine["outcome"] == "started" and machine["via"].rstrip("/") == up.url

    removed = ok(cli("schedule", "rm", "tick"))
    assert re.fullmatch(r"tick removed; its \d+ runs stay, as errands\n", removed), removed
    assert listed(cli) == []


def test_a_watch_from_the_cli_against_a_local_page(
    cli: CLI, home: Path, site: StaticSite, tmp_path: Path
) -> None:
    # 127.0.0.1 allowed; a secret the board's page may be sent (its value: not set)
    write_config(home, '[secrets.BOARD_TOKEN]\nhosts = ["127.0.0.1"]')
    url = site.write("board.html", listing("Sofa, 40 EUR", "Lamp, 5 EUR"))
    proc = ServerProc(home, env=clean_env(home)).start()
    try:
        said = ok(
            cli(
                "watch", "add", "board", "tell me what is new", "--url", url,
                "--select", "li.item", "--every", "1s", "-m", DEMO,
            )
        )  # fmt: skip
        assert said.startswith(f"watch board added: checks every 1s on {url}; the first check (")
        assert "records what is there, later ones start an errand only for new items" in said
        wait_for(lambda: shown(cli, "board")["checks"] >= 2, timeout=30)
        assert shown(cli, "board")["runs"] == 0  # the baseline, and an ad that changes

        site.write("board.html", listing("Bike, 90 EUR", "Sofa, 40 EUR", "Lamp, 5 EUR"))
        found = wait_for(lambda: (s := shown(cli, "board"))["runs"] == 1 and s, timeout=30)
        run = json.loads(ok(cli("show", found["last_run"], "--json")))
        assert run["schedule"] == "board"
        diff = [e for e in run["events"] if e["type"] == "user_message" and e["channel"] == "watch"]
        assert "Bike, 90 EUR" in diff[0]["content"]["text"]
        assert diff[0]["content"]["integrity"] == "untrusted"

        table = ok(cli("watch", "ls"))
        assert "board" in table and "checks" in table
        text = ok(cli("schedule", "show", "board"))
        for words in (url, "CSS li.item", "with new items", "last check"):
            assert words in text, text
        assert ok(cli("watch", "run-now", "board")) == (
            "watch board: checked: nothing new, no errand started\n"
        )

        # a header from a secret: the name is kept, never a value; errands up lacks it
        ok(
            cli(
                "watch", "add", "private", "x", "--url", url, "--every", "1h", "-m", DEMO,
                "--header", "Authorization=secret:BOARD_TOKEN",
            )
        )  # fmt: skip
        assert shown(cli, "private")["spec"]["headers"] == {"Authorization": "secret:BOARD_TOKEN"}
        failed = ok(cli("schedule", "run-now", "private"))
        assert "the check failed" in failed and "BOARD_TOKEN" in failed
        assert "erroring" in ok(cli("schedule", "ls"))
    finally:
        proc.kill()


def test_errands_ls_and_show_say_until_when_and_why_an_errand_sleeps(
    cli: CLI, tmp_path: Path
) -> None:
    spec = write_script(
        tmp_path / "s.json",
        {"tool_calls": [call("wait", seconds=7200, reason="the vendor's answer")]},
        {"text": "done"},
    )
    r = cli("run", "chase the vendor", "-m", spec)
    assert r.returncode == 6, r.stdout + r.stderr
    (row,) = json.loads(ok(cli("ls", "--json")))
    table = ok(cli("ls"))
    wake = time.strftime("%H:%M", time.localtime(row["wake_at"]))
    assert "sleeping (→" in table and wake in table, table
    assert "waits for: the vendor's answer" in table
    assert "☾ sleeps until" in ok(cli("show", row["id"]))
