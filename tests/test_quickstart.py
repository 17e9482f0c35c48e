"""The README's quickstart, as a new user types it (issue 14, item 1): its commands run by
copy and paste in a shell after activating the virtual environment the first command
made, and the hints for optional extras name a command that works from this install."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from errands.install import extra_hint

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_block() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Quickstart") : text.index("## Concepts")]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()]


def test_the_quickstart_runs_by_copy_and_paste(tmp_path: Path) -> None:
    lines = quickstart_block()
    assert lines[0] == ". .venv/bin/activate"
    # the commands that need no id from an earlier one, exactly as written
    runnable = [ln for ln in lines[1:] if ln and "…" not in ln]
    assert "errands demo" in runnable and "errands ls" in runnable
    # a schedule, run here (issue 15): added with --every, run now, listed
    assert any(ln.startswith("errands schedule add") and "--every" in ln for ln in runnable)
    assert "errands schedule ls" in runnable
    venv = Path(sys.prefix)
    script = "\n".join([f". {venv}/bin/activate", "set -e", *runnable])
    r = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ERRANDS_HOME": str(tmp_path / "h")},
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shopping" in r.stdout.lower() and "done" in r.stdout
    assert "schedule lists added: every 1h; next run" in r.stdout
    assert "schedule lists: run started: " in r.stdout


def test_the_quickstart_shows_a_watch() -> None:
    """A watch needs a page errands may fetch, which an offline test cannot promise: its
    command is shown in the Quickstart's second block, not run."""
    text = README.read_text()
    section = text[text.index("## Quickstart") : text.index("## Concepts")]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert any("errands watch add " in b and "--every" in b and "--url" in b for b in blocks)


def test_the_extra_hint_names_this_installs_pip() -> None:
    hint = extra_hint("anthropic")
    assert "anthropic" in hint
    if "-e" in hint:  # an editable install from a checkout: its own pip and path
        pip, _, target = hint.split(" ", 2)
        assert Path(pip).exists() and Path(pip).parent == Path(sys.prefix) / "bin"
        assert Path(target.split("'")[1].split("[")[0], "pyproject.toml").exists()
