"""`errands cost`: roll-ups from the log agree with every errand's own usage."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CLI


def test_cost_rollups_match_the_log(cli: CLI, home: Path) -> None:
    (home / "errands.toml").write_text(
        '[prices."scripted:demo"]\ninput = 2.0\noutput = 10.0\ncached_input = 0.2\n'
    )
    assert cli("demo").returncode == 0
    assert cli("demo").returncode == 0
    report = json.loads(cli("cost", "--json").stdout)
    errands = json.loads(cli("ls", "--json").stdout)
    usages = [json.loads(cli("show", e["id"], "--json").stdout)["usage"] for e in errands]
    expected = sum(u["input_tokens"] * 2.0 + u["output_tokens"] * 10.0 for u in usages) / 1e6
    assert report["total"]["cost_usd"] > 0
    assert abs(report["total"]["cost_usd"] - expected) < 1e-12
    assert report["total"]["calls"] == 8  # 4 model turns per demo errand
    assert [m["key"] for m in report["by_model"]] == ["scripted:demo"]
    assert len(report["by_errand"]) == 2 and len(report["by_day"]) >= 1
    one = json.loads(cli("cost", errands[0]["id"], "--json").stdout)
    assert one["total"]["calls"] == 4
    assert "total" in cli("cost").stdout


def test_prices_come_from_genai_prices_unless_the_config_overrides() -> None:
    from errands.config import Price
    from errands.core.events import Usage
    from errands.costs.pricing import cost_usd

    usage = Usage(input_tokens=1_000_000, cached_input_tokens=500_000, output_tokens=100_000)
    # gpt-4o-mini: $0.15 / 1M input, $0.075 / 1M cached input, $0.60 / 1M output
    assert abs(cost_usd("openai:gpt-4o-mini", usage, {}) - (0.075 + 0.0375 + 0.06)) < 1e-9
    override = {"openai:gpt-4o-mini": Price(input=1.0, output=2.0)}
    assert cost_usd("openai:gpt-4o-mini", usage, override) == 1.0 + 0.2
    assert cost_usd("local:llama3", usage, {}) == 0.0  # unknown: unpriced, not an error
    # a chain: the spec has no price, the member that answered has
    assert cost_usd(("chain:main", "anthropic:claude-sonnet-4-5"), usage, {}) > 0


def test_a_spent_daily_budget_stops_errands_clearly_and_tell_goes_on(cli: CLI, home: Path) -> None:
    prices = 'max_tokens = 200\n[prices."scripted:demo"]\ninput = 2.0\noutput = 10.0\n'
    (home / "errands.toml").write_text(prices + "[budget]\ndaily_usd = 0.02\n")
    # a demo errand costs ~$0.0018 in 4 calls; each call first reserves its worst case
    # (~$0.016: 200 output tokens at $10/M, and its input bounded by its bytes -- the
    # system prompt and the ten built-in tools' schemas, ~7 KB, at $2/M): the fourth or
    # so stops
    runs = [json.loads(cli("demo", "--json").stdout) for _ in range(5)]
    stopped = next(r for r in runs if r["status"] != "done")
    assert stopped["status"] == "needs_attention", stopped
    assert "the daily budget of $0.0200 is reached" in stopped["reason"]
    assert f'errands tell {stopped["id"]} "go on"' in stopped["reason"]
    budget = json.loads(cli("cost", "--json").stdout)["budget"]
    assert budget["daily_usd"] == 0.02 and budget["calls_in_flight"] == 0
    assert 0 < budget["spent_usd"] <= 0.02
    assert abs(budget["left_usd"] - (0.02 - budget["spent_usd"])) < 1e-12
    assert "daily budget $0.02" in cli("cost").stdout
    # a person raises the budget and tells the errand to go on
    (home / "errands.toml").write_text(prices + "[budget]\ndaily_usd = 5.0\n")
    told = cli("tell", stopped["id"], "go on")
    assert told.returncode == 0, told.stderr
    assert cli("resume", stopped["id"]).returncode == 0
    assert json.loads(cli("show", stopped["id"], "--json").stdout)["status"] == "done"


def test_an_errands_budget_is_shown_with_it(cli: CLI) -> None:
    r = cli("run", "x", "-m", "scripted:demo", "--max-cost", "0.25", "--json", "--no-input")
    shown = json.loads(r.stdout)
    assert shown["budget_usd"] == 0.25
    assert json.loads(cli("show", shown["id"], "--json").stdout)["budget_usd"] == 0.25
    assert "this errand's budget: $" in cli("cost", shown["id"]).stdout
    bad = cli("run", "x", "--max-cost", "-1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
