"""One shell call's way out: its egress hosts checked, the proxy and the bridge set up.

:func:`call_egress` checks the hosts a call names against ``[network] egress_allow``
(each must be covered by an entry there). :func:`egress_session` starts errands' proxy
(:mod:`errands.tools.sandbox.proxy`) on a unix socket in a private directory, binds that
directory into the sandbox read-only at ``/run/errands`` with the bridge
(:mod:`errands.tools.sandbox.bridge`), and has the shell run under the bridge with
``http_proxy``/``https_proxy`` pointing at it; a call with no egress gets none of it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from errands.tools.netguard import EgressEntry, NetworkRefused, egress_entries
from errands.tools.sandbox import bridge
from errands.tools.sandbox.bwrap import Extras
from errands.tools.sandbox.proxy import EgressProxy, SecretHosts
from errands.tools.sandbox.secrets import Redact
from errands.tools.tool import ToolArgumentError, ToolError

if TYPE_CHECKING:
    from errands.config import Settings

__all__ = [
    "BRIDGE_PORT",
    "PROXY_ENV",
    "Egress",
    "RedactorFactory",
    "call_egress",
    "egress_session",
]

RedactorFactory = Callable[[Mapping[str, str]], Redact]

INSIDE = "/run/errands"  # the proxy's socket and the bridge, in the sandbox
BRIDGE_PORT = 3128  # on the sandbox's own loopback
PYTHON = Path("/usr/bin/python3")  # the sandbox's, from the read-only /usr
_URL = f"http://127.0.0.1:{BRIDGE_PORT}"
PROXY_ENV = {"http_proxy": _URL, "https_proxy": _URL, "HTTP_PROXY": _URL, "HTTPS_PROXY": _URL}


@dataclass(frozen=True)
class Egress:
    """What a call may reach and carry: its egress entries, its secrets' values (for the
    sandbox's environment) and where each secret may go."""

    entries: list[EgressEntry] = field(default_factory=list)
    secrets: Mapping[str, str] = field(default_factory=dict)
    hosts: list[SecretHosts] = field(default_factory=list)


def call_egress(texts: Iterable[str], settings: Settings) -> list[EgressEntry]:
    """The call's egress entries; each must be covered by ``[network] egress_allow``."""
    try:
        entries = egress_entries(texts)
    except NetworkRefused as exc:
        raise ToolArgumentError(f"shell: egress: {exc}") from None
    configured = egress_entries(settings.network.egress_allow)
    for entry in entries:
        if not any(entry.covered_by(c) for c in configured):
            allowed = ", ".join(map(str, configured)) or "nothing"
            raise ToolArgumentError(
                f"shell: egress to {entry} is not allowed; errands.toml's [network] "
                f"egress_allow lists what the shell may reach (now: {allowed})"
            )
    return entries


@asynccontextmanager
async def egress_session(
    plan: Egress, settings: Settings, proxy_class: type[EgressProxy] = EgressProxy
) -> AsyncIterator[tuple[Extras, EgressProxy | None]]:
    """The sandbox's extras for *plan*, and the proxy serving it (None: no egress)."""
    if not plan.entries:
        yield Extras(env=dict(plan.secrets)), None
        return
    if not PYTHON.is_file():
        raise ToolError(
            f"shell: egress needs {PYTHON} for the bridge inside the sandbox "
            "(Debian/Ubuntu: `apt-get install python3-minimal`)"
        )
    with tempfile.TemporaryDirectory(prefix="errands-egress-") as tmp:
        where = Path(tmp)  # 0700: the sandbox's user is errands' own user outside
        shutil.copyfile(bridge.FILE, where / "bridge.py")
        proxy = proxy_class(settings, plan.entries, plan.hosts)
        await proxy.start(where / "proxy.sock")
        try:
            prefix = (str(PYTHON), "-I", "-S", f"{INSIDE}/bridge.py")
            yield (
                Extras(
                    env={**PROXY_ENV, **plan.secrets},
                    ro_binds=((where, INSIDE),),
                    prefix=(*prefix, f"{INSIDE}/proxy.sock", str(BRIDGE_PORT), "--"),
                ),
                proxy,
            )
        finally:
            await proxy.close()
