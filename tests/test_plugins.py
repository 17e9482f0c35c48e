"""Custom tools reach every errands process, the server included (issue 14, item 9):
from an installed plugin (entry-point group ``errands.tools``, the hook errands' own
built-ins use) and from modules named in ``[tools] modules``, with their effect
classes, roles and previews; ``errands tools`` lists them; a broken one stops the start
with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import CLI
from helpers.kit import call, write_script
from helpers.server import clean_env, running, wait_for, write_config

MODULE = '''
from errands.core.events import EffectClass
from errands.tools.toolset import FunctionToolset

errands_tools = FunctionToolset()


@errands_tools.tool(effect=EffectClass.external, roles={"to": "recipient", "text": "body"})
def page_someone(to: str, text: str) -> str:
    """Page a person on call. Returns the page id.

    Args:
        to: Who.
        text: What.
    """
    return f"paged {to}: {text}"


@errands_tools.tool(effect=EffectClass.read, idempotent=True)
def shout(word: str) -> str:
    """Say a word louder.

    Args:
        word: The word.
    """
    return word.upper() + "!"
'''

PLUGIN = '''
from errands.core.events import EffectClass
from errands.tools.tool import make_tool


def whisper(word: str) -> str:
    """Say a word softly.

    Args:
        word: The word.
    """
    return word.lower() + "..."


def tools():
    return [make_tool(whisper, effect=EffectClass.none, idempotent=True)]
'''


def site(tmp_path: Path) -> Path:
    """A directory for PYTHONPATH: a config module, and an 'installed' plugin (its
    dist-info declares the entry point, as pip would write it)."""
    d = tmp_path / "site"
    d.mkdir()
    (d / "my_tools.py").write_text(MODULE)
    (d / "quiet_plugin.py").write_text(PLUGIN)
    info = d / "quiet_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: quiet-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[errands.tools]\nquiet = quiet_plugin:tools\n")
    return d


def test_errands_tools_lists_builtins_plugins_and_modules(cli: CLI, tmp_path: Path) -> None:
    path = site(tmp_path)
    (cli.home / "errands.toml").write_text('[tools]\nmodules = ["my_tools"]\n')
    r = cli("tools", "--json", PYTHONPATH=str(path))
    assert r.returncode == 0, r.stderr
    rows = {t["name"]: t for t in json.loads(r.stdout)}
    assert rows["read_file"]["source"] == "builtin"
    assert rows["whisper"]["source"] == "plugin quiet" and rows["whisper"]["effect"] == "none"
    page = rows["page_someone"]
    assert page["source"] == "module my_tools" and page["effect"] == "external"
    assert page["roles"] == {"to": "recipient", "text": "body"}
    assert page["description"] == "Page a person on call."


def test_a_module_that_cannot_load_is_one_clear_line(cli: CLI, tmp_path: Path) -> None:
    (cli.home / "errands.toml").write_text('[tools]\nmodules = ["no_such_module_here"]\n')
    r = cli("tools")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no_such_module_here" in r.stderr and "cannot be imported" in r.stderr


def test_custom_tools_run_in_the_server_with_their_effect_class(tmp_path: Path) -> None:
    path = site(tmp_path)
    home = tmp_path / "home"
    write_config(home, '[tools]\nmodules = ["my_tools"]')
    spec = write_script(
        tmp_path / "s.json",
        {"tool_calls": [call("shout", word="hi"), call("whisper", word="HUSH")]},
        {"tool_calls": [call("page_someone", to="ana", text="the build is red")]},
        {"text": "done"},
    )
    env = clean_env(home, PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))
    with running(home, env=env) as server, server.client() as api:
        eid = api.post("/api/errands", json={"text": "x", "model": spec}).json()["id"]
        wait_for(lambda: api.get(f"/api/errands/{eid}").json()["status"] == "waiting_approval")
        shown = api.get(f"/api/errands/{eid}").json()
        (approval,) = shown["approvals"]
        assert approval["tool"] == "page_someone" and approval["effect"] == "external"
        assert api.post(f"/api/approvals/{approval['id']}/approve", json={}).status_code == 200
        wait_for(lambda: api.get(f"/api/errands/{eid}").json()["status"] == "done")
    shown = CLI(home)("show", eid, "--json", PYTHONPATH=env["PYTHONPATH"])
    events = json.loads(shown.stdout)["events"]
    texts = [e["content"]["text"] for e in events if e["type"] == "tool_result"]
    assert texts == ["HI!", "hush...", "paged ana: the build is red"]
