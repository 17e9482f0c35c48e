"""Issue 13, item 7: an errand started with ``errands run`` could reach a running
server's API -- the network guard refused the server's port only inside ``errands up``.

Every ``errands up`` publishes its port (``$XDG_RUNTIME_DIR/errands/``, or
``/run/errands/`` as root: :mod:`errands.registry`), and every errands process's network
guard refuses every published port on this machine's addresses, whatever
``[network] allow_private`` says. Here: a real ``errands up`` for home A, and
``errands run`` in home B whose scripted model fetches A's API with 127.0.0.1
allow-listed. Negative control: ``no_server_registry`` in B's process (the registry
ignored) -- then B reads A's errands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import call, write_script
from helpers.server import ServerProc, Sink, clean_env, running, write_config
from seams import child_env

from errands import registry
from errands.config import Settings
from errands.tools.netguard import NetworkRefused, check_url

SECRET_TITLE = "the surprise party guest list"


@pytest.fixture(params=["run/errands (root)", "XDG_RUNTIME_DIR"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment both processes share: no XDG_RUNTIME_DIR (root publishes in
    /run/errands), or a runtime directory of the test's own."""
    if request.param == "XDG_RUNTIME_DIR":
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        yield {"XDG_RUNTIME_DIR": str(runtime)}
    else:
        yield {}


def env_for(home: Path, where: dict[str, str], control: str | None = None) -> dict[str, str]:
    env = clean_env(home, COLUMNS="2000", **where)
    if "XDG_RUNTIME_DIR" not in where:
        env.pop("XDG_RUNTIME_DIR", None)
    return child_env(env, controls=[control] if control else [])


def observe(tmp_path: Path, where: dict[str, str], control: str | None) -> dict[str, Any]:
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    write_config(home_a)
    write_config(home_b)  # 127.0.0.1 allow-listed in B
    with running(home_a, env=env_for(home_a, where)) as server:
        with server.client() as api:
            made = api.post("/api/errands", json={"text": SECRET_TITLE, "model": "scripted:demo"})
            assert made.status_code == 201, made.text
        urls = [
            f"http://127.0.0.1:{server.port}/api/errands",
            f"http://localhost:{server.port}/api/errands",
        ]
        spec = write_script(
            tmp_path / "reach.json",
            {"text": "Let me look at the inbox.", "tool_calls": [call("fetch_url", url=urls[0])]},
            {"text": "And by name.", "tool_calls": [call("fetch_url", url=urls[1])]},
            {"text": "Done."},
        )
        # (the person names both addresses: flow control lets the calls go, and only the
        # network guard stands between the errand and the other server)
        text = f"peek at {urls[0]} and {urls[1]}"
        r = subprocess.run(
            [sys.executable, "-m", "errands", "run", text, "--model", spec, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env_for(home_b, where, control),
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        errand = json.loads(r.stdout)["id"]
        shown = subprocess.run(
            [sys.executable, "-m", "errands", "show", errand, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env_for(home_b, where),
        )
        events = json.loads(shown.stdout)["events"]
        with server.client() as api:
            a_errands = len(api.get("/api/errands").json())
        port = server.port
    results = [e for e in events if e["type"] == "tool_result"]
    return {"results": results, "port": port, "a_errands": a_errands}


def check(obs: dict[str, Any]) -> None:
    assert len(obs["results"]) == 2
    for result in obs["results"]:
        assert not result["ok"], result
        assert result["error_kind"] == "network_refused"
        text = result["content"]["text"]
        assert f"port {obs['port']} is an errands server" in text, text
        assert SECRET_TITLE not in text
    assert obs["a_errands"] == 1


def test_errands_run_cannot_reach_another_homes_server(
    tmp_path: Path, where: dict[str, str]
) -> None:
    check(observe(tmp_path, where, None))


def test_control_ignoring_the_registry_an_errand_reads_the_other_servers_api(
    tmp_path: Path,
) -> None:
    obs = observe(tmp_path, {}, "no_server_registry")
    assert any(SECRET_TITLE in r["content"]["text"] for r in obs["results"])
    with pytest.raises(AssertionError):
        check(obs)


def test_the_port_is_withdrawn_when_the_server_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    server = ServerProc(home, env=clean_env(home, XDG_RUNTIME_DIR=str(runtime))).start()
    try:
        [entry] = list((runtime / "errands").iterdir())
        assert json.loads(entry.read_text())["port"] == server.port
        assert (runtime / "errands").stat().st_mode & 0o777 == 0o700
    finally:
        assert server.stop() == 0
    assert list((runtime / "errands").iterdir()) == []


# -- the registry's rules, in this process ---------------------------------------------------


@pytest.fixture
def own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime / "errands"


def entry(directory: Path, pid: int, port: int) -> None:
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / f"{port}-{pid}.json").write_text(
        json.dumps({"pid": pid, "port": port, "host": "127.0.0.1", "home": "/elsewhere"})
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_entry_is_refused_and_a_stale_one_ignored(own_registry: Path) -> None:
    sink = Sink()
    try:
        settings = Settings(home=Path("/nonexistent"), network={"allow_private": ["127.0.0.1"]})
        url = f"{sink.url}/"
        check_url(url, settings)  # nothing published: allow-listed, reachable
        entry(own_registry, dead_pid(), sink.port)
        check_url(url, settings)  # a crashed server's file: ignored
        entry(own_registry, os.getpid(), sink.port)
        with pytest.raises(NetworkRefused, match="is an errands server"):
            check_url(url, settings)
        settings.network.allow_private = ["0.0.0.0/0", "::/0"]  # whatever the allowances
        for other in (f"http://0.0.0.0:{sink.port}/", f"http://[::ffff:127.0.0.1]:{sink.port}/"):
            with pytest.raises(NetworkRefused, match="is an errands server"):
                check_url(other, settings)
    finally:
        sink.close()


def test_publishing_removes_stale_entries_and_refuses_a_foreign_directory(
    own_registry: Path,
) -> None:
    entry(own_registry, dead_pid(), 1)
    path = registry.publish(2, "127.0.0.1", Path("/h"))
    assert sorted(p.name for p in own_registry.iterdir()) == [path.name]
    assert registry.published_ports()[2] == "/h" and 1 not in registry.published_ports()
    registry.withdraw(path)
    assert 2 not in registry.published_ports()
    # a registry directory others may write is not used
    own_registry.chmod(0o777)
    path = registry.publish(3, "127.0.0.1", Path("/h"))
    assert path.parent != own_registry
    registry.withdraw(path)
