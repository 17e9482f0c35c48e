"""``errands service install|status|uninstall``: errands up as a systemd service.

See :mod:`errands.service` (the unit, and why each line of it) and the README's
"Run it for real".
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from errands import __version__
from errands.cli.common import JsonOpt, fail, out, settings, state
from errands.errors import ErrandsError

if TYPE_CHECKING:
    from errands.service.systemd import Outcome

__all__ = ["register"]

service_app = typer.Typer(
    help="Run errands up as a systemd service: started at boot, restarted on a failure.",
    no_args_is_help=True,
)

SystemOpt = Annotated[
    bool,
    typer.Option(
        "--system/--user",
        help="A system unit (/etc/systemd/system; as root) or, the default, a user unit "
        "(~/.config/systemd/user).",
    ),
]


def _owner(home: Path, system: bool) -> str | None:
    """A system unit's User=: whoever ran sudo (never root when known); they must own the
    home (it is made theirs if it is new)."""
    name = os.environ.get("SUDO_USER") if system else None
    if not name or name == "root":
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if not home.exists():
        home.mkdir(mode=0o700, parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    elif home.stat().st_uid != entry.pw_uid:
        fail(f"{home} does not belong to {name}, who the service would run as: choose a home "
             f"they own with --home (sudo errands --home /home/{name}/errands service install "
             "--system)")  # fmt: skip
    return name


def _tell(done: Outcome, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"unit": str(done.path), "changed": done.changed, "said": done.lines}))
        return
    for line in done.lines:
        out.print(line, highlight=False, markup=False)


ENV_FILE_HEADER = """\
# The environment of errands up as a service (errands service install): KEY=value lines,
# read by systemd when it starts errands. Mode 0600: model keys belong here, never in the
# unit file. For example:
# OPENAI_API_KEY=sk-...
# OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
"""


def _env_file(path: Path, user: str | None) -> None:
    """Make the service's environment file (0600, comments only) unless it exists."""
    from errands.private import private_file

    if path.exists():
        return  # (the person's: left as it is)
    private_file(path)
    path.write_text(ENV_FILE_HEADER, encoding="utf-8")
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def install(system: SystemOpt = False, as_json: JsonOpt = False) -> None:
    """Write the unit for this installation's errands up (its own ERRANDS_HOME, restarted
    on a failure, sandboxed), then enable and start it -- or, without systemd, say what
    to run instead."""
    from errands.private import private_dir
    from errands.service import systemd
    from errands.service.unit import UnitSpec

    try:
        s = settings()
        user = _owner(s.home, system)
        if user is None:
            private_dir(s.home)
            private_dir(s.workspaces)
        spec = UnitSpec(
            scope="system" if system else "user",
            home=s.home,
            command=systemd.up_command(state.config),
            writable=[s.workspaces, *s.workspace_roots.roots],
            user=user,
            version=__version__,
        )
        _env_file(spec.env_file, user)
        done = systemd.install(spec)
    except (ErrandsError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot prepare {exc.filename}: {exc.strerror}")
    _tell(done, as_json)


def uninstall(system: SystemOpt = False, as_json: JsonOpt = False) -> None:
    """Stop and disable the service and remove its unit (the home and its store stay)."""
    from errands.service import systemd

    try:
        done = systemd.uninstall("system" if system else "user")
    except ErrandsError as exc:
        fail(str(exc))
    _tell(done, as_json)


def _ready(home: Path) -> str:
    """What the home's running server says at /readyz (loopback: no token needed)."""
    import httpx

    from errands.server.files import live_server, load_token

    info = live_server(home)
    if info is None:
        return f"no errands up is running for {home}"
    url = str(info["url"]).rstrip("/") + "/readyz"
    try:  # (from loopback no token is needed; a server bound elsewhere sees another address)
        token = load_token(home, create=False)[0] if info.get("token_required") else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = httpx.get(url, timeout=5.0, headers=headers)
        said = answer.json()
    except (httpx.HTTPError, ValueError, ErrandsError) as exc:
        return f"{url} did not answer: {type(exc).__name__}"
    if answer.status_code == 200:
        return f"ready at {info['url']} (pid {info['pid']})"
    return f"not ready at {info['url']}: {said.get('reason', answer.status_code)}"


def status(system: SystemOpt = False, as_json: JsonOpt = False) -> None:
    """Is the unit installed, enabled and active, and is the server ready?"""
    from errands.service import systemd

    _, found = systemd.status("system" if system else "user")
    found["server"] = _ready(settings().home)
    if as_json:
        print(json.dumps(found))
        return
    for key, value in found.items():
        out.print(f"{key}: {value}", highlight=False, markup=False)


service_app.command()(install)
service_app.command()(status)
service_app.command()(uninstall)


def register(app: typer.Typer) -> None:
    app.add_typer(service_app, name="service")
