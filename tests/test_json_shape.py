"""One errand JSON shape everywhere (issue 14, item 8): ``ls --json``, ``inbox --json``,
``run --json`` and ``show --json`` agree on every field they share --
``pending_approvals`` is a count everywhere, the approvals themselves are
``approvals`` -- and ``ls`` shows a long title on one line in 80 columns."""

from __future__ import annotations

import json

from conftest import CLI

ROW = {
    "id",
    "status",
    "title",
    "model",
    "parent",
    "created_at",
    "updated_at",
    "steps",
    "usage",
    "cost_usd",
    "result",
    "reason",
    "pending_approvals",
    "last_seq",
    "wake_at",
    "schedule",
    "mode",
}


def test_every_command_gives_the_same_errand_shape(cli: CLI) -> None:
    ran = json.loads(cli("demo", "--json").stdout)
    (row,) = json.loads(cli("ls", "--json").stdout)
    shown = json.loads(cli("show", ran["id"], "--json").stdout)
    inbox = json.loads(cli("inbox", "--json").stdout)
    assert set(row) == ROW
    assert set(ran) == ROW | {"workspace", "budget_usd", "approvals"}
    assert set(shown) == set(ran) | {"events"}
    assert {k: ran[k] for k in ROW} == row == {k: shown[k] for k in ROW}
    assert row["pending_approvals"] == 0 and ran["approvals"] == []
    assert row["result"] and row["model"] == "scripted:demo"
    assert [e for e in inbox["errands"] if e["id"] == row["id"]] == [row]


def test_ls_keeps_a_long_title_on_one_line(cli: CLI) -> None:
    cli("run", "a very long errand title " * 8, "-m", "scripted:demo", "--json")
    table = cli("ls", COLUMNS="80").stdout
    body = [line for line in table.splitlines() if "│" in line]
    assert len(body) == 1, table  # one line for the errand
    assert all(len(line) <= 80 for line in table.splitlines())


def test_help_shows_flags_as_flags_and_sentences_whole(cli: CLI) -> None:
    for args in (["--help"], ["ls", "--help"], ["run", "--help"], ["doctor", "--help"]):
        text = cli(*args, COLUMNS="100").stdout
        assert "<bool>" not in text, (args, text)
        assert "--json" in text or args == ["--help"]
    models = " ".join(cli("models", "--help", COLUMNS="200").stdout.split())
    assert "the default model, and which keys are present" in models  # one sentence
