"""Issue 13, item 5: a workspace anywhere. The API accepted ``"workspace": "/etc"`` and
an errand running as root wrote ``/etc/shopping-list.md``.

A workspace named through the API or ``errands run --workspace`` must lie under a
workspace root (``[workspaces] roots``; ``ERRANDS_HOME/workspaces`` always is one),
symbolic links resolved first; system directories are refused outright, as roots too.
Refused means one clear error (422 / exit 2) and nothing created.

Negative controls: ``no_workspace_roots`` (a server whose ``make_workspace`` skips the
roots check, installed in its process) and a config without the system list.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.server import ServerProc, clean_env, running, write_config
from seams import child_env

from errands import config
from errands.config import load_settings
from errands.errors import ConfigError


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "errands", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(home, COLUMNS="2000"),
        stdin=subprocess.DEVNULL,
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    text = r.stderr.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


def observe_api(tmp_path: Path, control: str | None) -> dict[str, Any]:
    """A server with ``projects`` as its one configured root; errands asked for inside
    it, outside it, and outside it through a symlink that lies inside it."""
    home = tmp_path / "home"
    projects = tmp_path / "projects"
    elsewhere = tmp_path / "elsewhere"
    projects.mkdir()
    elsewhere.mkdir()
    (projects / "sneaky").symlink_to(elsewhere)
    write_config(home, f'[workspaces]\nroots = ["{projects}"]')
    env = child_env(clean_env(home), controls=[control] if control else [])
    server = ServerProc(home, env=env).start()
    answers = {}
    try:
        with server.client() as api:
            for name, where in (
                ("inside", projects / "site"),
                ("outside", elsewhere / "ws"),
                ("symlink", projects / "sneaky" / "ws"),
            ):
                r = api.post(
                    "/api/errands",
                    json={"text": "make a list", "model": "scripted:demo", "workspace": str(where)},
                )
                answers[name] = (r.status_code, r.json())
            listed = api.get("/api/errands").json()
    finally:
        server.kill()
    return {
        "answers": answers,
        "errands": len(listed),
        "created": sorted(p.name for p in elsewhere.iterdir()),
        "inside": projects / "site",
        "projects": projects,
    }


def check_api(obs: dict[str, Any]) -> None:
    answers = obs["answers"]
    assert answers["inside"][0] == 201, answers["inside"]
    for name in ("outside", "symlink"):
        status, body = answers[name]
        assert status == 422, (name, body)
        assert "is not under a workspace root" in body["detail"]
        assert str(obs["projects"]) in body["detail"]  # it says where workspaces may be
    assert obs["errands"] == 1  # only the one inside
    assert obs["created"] == []  # nothing made outside the roots
    assert obs["inside"].stat().st_mode & 0o777 == 0o700


def test_api_workspaces_must_lie_under_a_root(tmp_path: Path) -> None:
    check_api(observe_api(tmp_path, None))


def test_control_without_the_roots_check_a_workspace_lands_anywhere(tmp_path: Path) -> None:
    obs = observe_api(tmp_path, "no_workspace_roots")
    assert obs["answers"]["outside"][0] == 201
    with pytest.raises(AssertionError):
        check_api(obs)


def test_system_directories_are_refused_outright(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home)
    fresh = f"/etc/errands-test-{secrets.token_hex(4)}"
    with running(home) as server, server.client() as api:
        for where in ("/etc", fresh, "/usr/local/share", "/var/lib", "/proc/self", "/home"):
            r = api.post(
                "/api/errands",
                json={"text": "make a list", "model": "scripted:demo", "workspace": where},
            )
            assert r.status_code == 422, (where, r.text)
            detail = r.json()["detail"]
            assert "system directory" in detail or "not under a workspace root" in detail, detail
        assert api.get("/api/errands").json() == []
    assert not os.path.exists(fresh)
    assert not os.path.exists("/etc/shopping-list.md")
    # the CLI the same: one line, nothing written
    for where in ("/etc", str(tmp_path / "elsewhere")):
        line = one_line(run_cli(home, "run", "x", "--model", "scripted:demo", "--workspace", where))
        assert "system directory" in line or "not under a workspace root" in line, line
    assert not (tmp_path / "elsewhere").exists()


def test_the_default_workspace_is_always_allowed_wherever_the_home_is(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = run_cli(home, "demo", "--json")
    assert r.returncode == 0, r.stderr
    [ws] = list((home / "workspaces").iterdir())
    assert (ws / "shopping-list.md").exists()
    # and a workspace named below it
    below = home / "workspaces" / "mine"
    r = run_cli(home, "run", "x", "--model", "scripted:demo", "--workspace", str(below), "--json")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("root", ["/etc", "/", "/usr/local", "/var/www", "/home", "relative/dir"])
def test_a_root_in_a_system_directory_is_refused_in_the_config(tmp_path: Path, root: str) -> None:
    home = tmp_path / "home"
    write_config(home, f'[workspaces]\nroots = ["{root}"]')
    with pytest.raises(ConfigError, match=r"workspaces\.roots"):
        load_settings(home)
    line = one_line(run_cli(home, "run", "x", "--model", "scripted:demo"))
    assert "workspaces.roots" in line
    assert not (home / "errands.sqlite").exists()


def test_a_root_that_is_a_symlink_is_judged_by_its_target(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "etc-link").symlink_to("/etc")
    write_config(home, f'[workspaces]\nroots = ["{tmp_path / "etc-link"}"]')
    with pytest.raises(ConfigError, match=r"etc-link' cannot hold workspaces: /etc is a system"):
        load_settings(home)


def test_control_without_the_system_list_etc_is_a_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    write_config(home, '[workspaces]\nroots = ["/etc"]')
    monkeypatch.setattr(config, "SYSTEM_TREES", ())
    monkeypatch.setattr(config, "SYSTEM_DIRS", ())
    settings = load_settings(home)  # accepted: the check above is what refuses it
    assert settings.workspace_roots.roots == [Path("/etc")]
