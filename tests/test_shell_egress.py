"""The shell's one way out: errands' egress proxy, in real bubblewrap, to real servers.

Servers on 127.0.0.1 stand for the internet (listed in ``allow_private`` for the test:
the guard's private-address check stays on for everything else). Worst case: the person
approves every call. The sandbox reaches an allowed host only through the proxy, and
nothing else: not a host outside the call's egress list, not an address the network
guard refuses (loopback not allowed, the metadata address, errands' own server port),
not an address a DNS answer swaps in after the check (rebinding), not past the byte
budget. Negative controls (tests/seams/shell_controls.py): a proxy without the policy and
the guard, and one that checks the name's addresses and then connects to the name; the
forbidden connections then go through.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.upstream import Upstream, upstream
from seams.shell_controls import CheckThenConnectProxy, NoSandbox, UnguardedProxy

from errands.config import NetworkSettings, Settings
from errands.core.events import EffectClass
from errands.tools.builtin.shell import make_shell_tool, shell_preview
from errands.tools.netguard import NetworkRefused, egress_entries, guarded_request
from errands.tools.sandbox.egress import Egress, egress_session
from errands.tools.sandbox.proxy import EgressProxy
from errands.tools.tool import ToolArgumentError, ToolContext, ToolOutput


@pytest.fixture
def allowed() -> Iterator[Upstream]:
    with upstream() as u:
        yield u


@pytest.fixture
def other() -> Iterator[Upstream]:
    with upstream() as u:
        yield u


def settings_for(
    *egress: str, allow_private: tuple[str, ...] = ("127.0.0.1",), **more: Any
) -> Settings:
    network = NetworkSettings(
        allow_private=list(allow_private), egress_allow=list(egress), timeout_seconds=5
    )
    return Settings(network=network, **more)


async def shell(
    settings: Settings,
    workspace: Path,
    command: str,
    egress: list[str],
    proxy: type[EgressProxy] = EgressProxy,
) -> ToolOutput:
    tool = make_shell_tool(proxy=proxy)
    args = tool.validate({"command": command, "egress": egress, "timeout_s": 30})
    return await tool.invoke(args, ToolContext("e1", 1, "k", workspace, settings=settings))


def curl(url: str) -> str:
    return f"curl -sS -m 5 {url} 2>&1; echo"


async def test_an_allowed_host_is_reached_only_through_the_proxy(
    tmp_path: Path, allowed: Upstream
) -> None:
    s = settings_for(allowed.hostport)
    url = f"http://{allowed.hostport}"
    command = "\n".join(
        [
            curl(f"{url}/curl"),
            curl(f"--proxytunnel {url}/connect"),  # CONNECT, as for https
            f"python3 -c \"import urllib.request as u; print(u.urlopen('{url}/py').read())\"",
            f"curl -sS -m 3 --noproxy '*' {url}/direct 2>&1 | tail -1",
            f"(exec 3<>/dev/tcp/{allowed.host}/{allowed.port}) 2>&1 || echo no-raw-tcp",
            "getent hosts example.com || echo no-dns",
        ]
    )
    out = await shell(s, tmp_path, command, [allowed.hostport])
    assert out.text.count("upstream-ok") == 3, out.text
    assert [r["path"] for r in allowed.requests] == ["/curl", "/connect", "/py"]
    assert "no-raw-tcp" in out.text and "no-dns" in out.text
    assert "--- network (errands' egress proxy) ---" in out.text
    assert f"allowed GET {allowed.hostport}" in out.text
    assert f"allowed CONNECT {allowed.hostport}" in out.text


async def test_udp_gets_nowhere_even_with_egress(tmp_path: Path, allowed: Upstream) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(0.5)
        port = sink.getsockname()[1]
        send = (
            'python3 -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); '
            f"print(s.sendto(b'leak', ('127.0.0.1', {port})))\" 2>&1"
        )
        out = await shell(settings_for(allowed.hostport), tmp_path, send, [allowed.hostport])
        with pytest.raises(TimeoutError):
            sink.recvfrom(16)
        control = await make_shell_tool(NoSandbox()).invoke(
            make_shell_tool().validate({"command": send}), ToolContext("e", 1, "k", tmp_path)
        )
        assert sink.recvfrom(16)[0] == b"leak", (out.text, control.text)


async def test_a_host_outside_the_egress_list_gets_nothing(
    tmp_path: Path, allowed: Upstream, other: Upstream
) -> None:
    s = settings_for(allowed.hostport, other.hostport)  # configured, but not for this call
    out = await shell(
        s,
        tmp_path,
        curl(f"http://{other.hostport}/leak") + ";" + curl(f"-p http://{other.hostport}/x"),
        [allowed.hostport],
    )
    assert other.requests == [], out.text
    assert f"denied  GET {other.hostport}: not in this call's egress list" in out.text
    assert f"denied  CONNECT {other.hostport}" in out.text


async def test_a_call_may_name_only_configured_hosts(tmp_path: Path, allowed: Upstream) -> None:
    with pytest.raises(ToolArgumentError, match="egress_allow"):
        await shell(settings_for(), tmp_path, "true", [allowed.hostport])
    with pytest.raises(ToolArgumentError, match=r"egress to \*\.github\.com is not allowed"):
        await shell(settings_for("api.github.com"), tmp_path, "true", ["*.github.com"])
    with pytest.raises(ToolArgumentError, match=r"no scheme, no path"):
        await shell(settings_for("pypi.org"), tmp_path, "true", ["https://pypi.org/simple"])


@pytest.mark.parametrize("proxy", [EgressProxy, UnguardedProxy], ids=["guarded", "CONTROL"])
async def test_the_network_guard_holds_behind_the_allow_list(
    tmp_path: Path, allowed: Upstream, other: Upstream, proxy: type[EgressProxy]
) -> None:
    """Listed in egress_allow, and still refused: loopback not in allow_private, the
    metadata address (a broad allow_private does not open it), errands' own port."""
    own = allowed  # stands for errands' own server
    s = settings_for(
        own.hostport,
        other.hostport,
        "169.254.169.254:80",
        allow_private=("169.254.0.0/16",),  # not loopback
        server_port=own.port,
    )
    out = await shell(
        s,
        tmp_path,
        "\n".join(
            [
                curl(f"http://{own.hostport}/own"),
                curl(f"http://{other.hostport}/loopback"),
                curl("-m 2 http://169.254.169.254/latest/meta-data/"),
            ]
        ),
        [own.hostport, other.hostport, "169.254.169.254:80"],
        proxy=proxy,
    )
    if proxy is UnguardedProxy:  # the control: errands' own API and loopback are reached
        assert own.requests and other.requests, out.text
        return
    assert own.requests == [] and other.requests == [], out.text
    assert "errands' own server" in out.text
    assert "a loopback address (not in network.allow_private)" in out.text
    assert "169.254.169.254 is a cloud metadata address" in out.text


@pytest.mark.parametrize("proxy", [EgressProxy, CheckThenConnectProxy], ids=["guarded", "CONTROL"])
async def test_dns_rebinding_gains_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: type[EgressProxy]
) -> None:
    """rebind.test answers 127.0.0.1 (allowed) first and 127.0.0.2 (not) after: the proxy
    connects to the address it checked."""
    with upstream("127.0.0.1") as good, upstream("127.0.0.2", good.port) as bad:
        real = socket.getaddrinfo
        answers = iter(["127.0.0.1"])

        def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "rebind.test":
                host = next(answers, "127.0.0.2")
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        s = settings_for(f"rebind.test:{good.port}", allow_private=("127.0.0.1/32",))
        out = await shell(
            s,
            tmp_path,
            curl(f"http://rebind.test:{good.port}/x"),
            [f"rebind.test:{good.port}"],
            proxy=proxy,
        )
        if proxy is CheckThenConnectProxy:
            assert bad.requests, out.text  # the control: the swapped-in address is reached
            return
        assert bad.requests == [] and [r["path"] for r in good.requests] == ["/x"], out.text
        assert f"rebind.test:{good.port} (127.0.0.1)" in out.text


async def test_the_byte_budget_cuts_a_connection(tmp_path: Path, allowed: Upstream) -> None:
    s = settings_for(allowed.hostport)
    s.network.egress_max_bytes = 20_000
    out = await shell(
        s,
        tmp_path,
        f"curl -sS -m 5 http://{allowed.hostport}/big/1000000 | wc -c",
        [allowed.hostport],
    )
    got = int(out.text.split("--- stdout ---\n", 1)[1].split()[0])
    assert got < 20_000, out.text
    assert "cut off: the call's 20000 bytes of egress are spent" in out.text


def test_egress_makes_the_call_external_and_the_card_names_the_hosts() -> None:
    tool = make_shell_tool()
    assert tool.effect({"command": "ls"}) is EffectClass.write_local
    assert tool.effect({"command": "pip download x", "egress": ["pypi.org"]}) is (
        EffectClass.external
    )
    card = shell_preview({"command": "pip download x", "egress": ["pypi.org"]}, Path("/w"))
    assert "network only through errands' proxy, to pypi.org" in card


async def test_fetch_url_obeys_the_same_allow_list(allowed: Upstream, other: Upstream) -> None:
    s = settings_for(allowed.hostport)
    fetched = await guarded_request("GET", f"http://{allowed.hostport}/a", s)
    assert fetched.status == 200
    with pytest.raises(NetworkRefused, match=r"not in network\.egress_allow"):
        await guarded_request("GET", f"http://{other.hostport}/b", s)
    assert other.requests == []
    unset = settings_for()  # no egress_allow: the web tools reach any public host (as before)
    assert (await guarded_request("GET", f"http://{other.hostport}/c", unset)).status == 200


def test_egress_entries_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ValueError, match="egress_allow"):
        NetworkSettings(egress_allow=["http://pypi.org/"])
    assert NetworkSettings(egress_allow=["PyPI.org", "*.github.com", "[::1]:8080"]).egress_allow


async def test_many_connections_are_logged_in_a_bounded_result(
    tmp_path: Path, allowed: Upstream
) -> None:
    s = settings_for(allowed.hostport)
    command = "for i in $(seq 60); do curl -s -m 2 http://127.0.0.1:9/$i; done; echo"
    out = await shell(s, tmp_path, command, [allowed.hostport])
    assert out.text.count("denied  GET 127.0.0.1:9") == 50, out.text
    assert "... and 10 more connections (10 denied)" in out.text


@pytest.mark.parametrize("loosened", [False, True], ids=["private", "CONTROL"])
async def test_no_other_user_of_the_machine_can_use_the_proxy(
    allowed: Upstream, loosened: bool
) -> None:
    """The proxy's socket is errands' user's only (the sandbox's user is that user
    outside); another user (uid 65534 here, errands runs as root) cannot connect. The
    control loosens the permissions and the other user gets in."""
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to act as another user"
    s = settings_for(allowed.hostport)
    plan = Egress(egress_entries([allowed.hostport]))
    async with egress_session(plan, s) as (extras, _):
        where = extras.ro_binds[0][0]
        if loosened:
            where.chmod(0o755)
            (where / "proxy.sock").chmod(0o666)
        connect = (
            f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(where / 'proxy.sock')!r}); "
            "print('connected')"
        )
        done = await asyncio.to_thread(
            subprocess.run,
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "/usr/bin/python3", "-c", connect],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    if loosened:
        assert "connected" in done.stdout, done.stderr
        return
    assert "Permission denied" in done.stderr and "connected" not in done.stdout


async def test_the_sandbox_trusts_the_public_certificate_authorities(tmp_path: Path) -> None:
    """https through the proxy needs the CA bundle; /etc/ssl/private stays outside."""
    assert Path("/etc/ssl/certs/ca-certificates.crt").is_file(), "ca-certificates is missing"
    command = (
        "python3 -c 'import ssl; print(len(ssl.create_default_context().get_ca_certs()))'; "
        "ls /etc/ssl/private 2>&1; ls /etc/ssl"
    )
    out = await shell(settings_for(), tmp_path, command, [])
    lines = out.text.split("--- stdout ---\n", 1)[1].splitlines()
    assert int(lines[0]) > 50, out.text
    assert "No such file or directory" in lines[1] and "private" not in lines[2:], out.text


async def test_https_goes_through_by_connect_end_to_end(tmp_path: Path) -> None:
    """Real TLS to a server of the test's (its certificate for localhost, trusted inside
    by --cacert): the proxy tunnels it by CONNECT without seeing inside."""
    assert shutil.which("openssl"), "openssl is needed to make the test's certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with upstream(tls=context) as secure:
        where = f"localhost:{secure.port}"
        s = settings_for(where, allow_private=("127.0.0.1", "::1"))
        command = (
            f"curl -sS -m 5 --cacert cert.pem https://{where}/curl 2>&1; "
            'python3 -c "import ssl, urllib.request as u; '
            "c = ssl.create_default_context(cafile='cert.pem'); "
            f"print(u.urlopen('https://{where}/py', context=c).read())\""
        )
        out = await shell(s, tmp_path, command, [where])
        assert out.text.count("upstream-ok") == 2, out.text
        assert [r["path"] for r in secure.requests] == ["/curl", "/py"]
        assert f"allowed CONNECT {where} (127.0.0.1)" in out.text


async def test_connections_at_once_are_capped(tmp_path: Path, allowed: Upstream) -> None:
    """80 tunnels held open at once: 64 are served, the rest refused with 503 (each open
    connection costs errands two descriptors)."""
    hold = (
        "import socket\n"
        "held, said = [], []\n"
        "for _ in range(80):\n"
        "    s = socket.create_connection(('127.0.0.1', 3128))\n"
        f"    s.sendall(b'CONNECT {allowed.hostport} HTTP/1.1\\r\\n\\r\\n')\n"
        "    said.append(s.recv(64).split()[1].decode())\n"
        "    held.append(s)\n"
        "print(said.count('200'), said.count('503'))\n"
    )
    (tmp_path / "hold.py").write_text(hold)
    out = await shell(
        settings_for(allowed.hostport), tmp_path, "python3 hold.py", [allowed.hostport]
    )
    assert "--- stdout ---\n64 16\n" in out.text, out.text
