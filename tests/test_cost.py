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
