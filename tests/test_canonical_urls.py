"""Issue 13, item 2: rules match what the tool will do, not how its arguments are spelled.

Every walk-around the attack run found is checked one by one, then hypothesis generates
equivalent spellings of a denied URL or path -- case, trailing dot, default port,
userinfo, IDNA, ``./``, ``a/../``, ``//``, percent-encoded unreserved characters,
whitespace, tabs and line breaks, the absolute path, symbolic links planted in the
workspace -- and the decision must never weaken. The generators are kept honest by the
real tools: a generated path spelling must read the very file the denied one names, a
generated URL must reach the very endpoint (a real HTTP server on 127.0.0.1).

The control, ``RawTextPolicy``, is the policy as it was: rules matched on the raw text.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.kit import call, harness_for, script
from helpers.server import Sink, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from errands.config import Settings, load_settings
from errands.core import events as ev
from errands.core.labels import BOTTOM
from errands.policy.hook import Decision, PolicyCall
from errands.policy.rules import CallValues, Policy, Rule
from errands.store import Store, open_store
from errands.tools.builtin import builtin_toolset
from errands.tools.builtin.web import HttpMethod, http_request, http_request_effect
from errands.tools.canonical import (
    UrlError,
    canonical_path,
    canonical_url,
    path_pattern,
    url_pattern,
    web_url,
)
from errands.tools.tool import ArgRole, ToolArgumentError, ToolContext, ToolOutput, make_tool
from errands.tools.toolset import FunctionToolset

DENY, ALLOW = Decision.deny, Decision.allow
TOOLS = builtin_toolset()


# -- the control: the policy matching raw text ------------------------------------------------


class RawValues(CallValues):
    def matches(self, name: str, glob: str, *, every: bool = True) -> bool:
        value = self.call.arguments.get(name)
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return name in self.call.arguments and fnmatch.fnmatchcase(text, glob)


class RawTextPolicy(Policy):
    """The rules as they were matched before: on the argument's raw text."""

    def values(self, call: PolicyCall) -> CallValues:
        return RawValues(call)


# -- URLs -------------------------------------------------------------------------------------

PROD = Policy(
    rules=[
        Rule(
            name="never-touch-production",
            args={"url": "https://prod.example.com/*"},
            decision=DENY,
            reason="production is off limits",
        ),
        Rule(name="no-v1", args={"url": "https://api.example.com/v1/*"}, decision=DENY),
        Rule(name="no-books", args={"url": "https://bücher.example/*"}, decision=DENY),
    ]
)
URL_ROLE = {"url": ArgRole.url, "method": ArgRole.method}


def url_call(url: str, ws: Path = Path("/nonexistent")) -> PolicyCall:
    """A call of a tool that declares ``url`` a URL, with the arguments as given (a
    third-party tool need not canonicalise them itself: the policy does)."""
    return PolicyCall(
        errand_id="e1",
        tool="fetch_thing",
        arguments={"url": url, "method": "GET"},
        effect=ev.EffectClass.network,
        workspace=ws,
        context=BOTTOM,
        roles=URL_ROLE,
    )


def builtin_decision(policy: Policy, url: str) -> Decision | None:
    """The decision on the built-in http_request with *url*; None: refused as invalid
    (nothing is judged, nothing runs)."""
    tool = TOOLS.get("http_request")
    try:
        args = tool.validate({"method": "GET", "url": url})
    except ToolArgumentError:
        return None
    c = PolicyCall(
        "e1", "http_request", args, tool.effect(args), Path("/x"), BOTTOM, roles=tool.arg_roles
    )
    return policy.check(c).decision


ISSUE_URLS = [
    "HTTPS://prod.example.com/x",
    "https://PROD.example.com/x",
    "https://prod.example.com./x",
    "https://prod.example.com:443/x",
    "https://user@prod.example.com/x",
    "https://user:pw@prod.example.com/x",
    "https://prod.example.com",  # no trailing slash
    "https://api.example.com/x/../v1/y",
    "https://api.example.com//v1/y",
    "https://api.example.com/%761/y",
    "https://api.example.com/./v1/y",
    " https://prod.example.com/x\n",
    "https:prod.example.com/x",  # WHATWG reads the host after any number of slashes
    "https://prod.example.com\\x",  # and "\" as "/"
    "https://pr%6Fd.example.com/x",  # a percent-encoded host
    "https://ＰＲＯＤ．example．com/x",  # full-width letters and dots (UTS #46)
    "https://xn--bcher-kva.example/x",  # the denied host, IDNA-encoded
    "https://BÜCHER.example/x",
]


@pytest.mark.parametrize("url", ISSUE_URLS)
def test_the_issues_url_walkarounds_are_denied(url: str) -> None:
    assert PROD.check(url_call(url)).decision is DENY
    assert builtin_decision(PROD, url) in (DENY, None)  # denied, or refused as invalid
    assert RawTextPolicy.model_validate(PROD.model_dump()).check(url_call(url)).decision is ALLOW


def test_a_rules_url_glob_is_spelled_canonically() -> None:
    assert url_pattern("HTTPS://PROD.Example.com.:443") == "https://prod.example.com/"
    assert url_pattern("https://Bücher.example/*") == "https://xn--bcher-kva.example/*"
    assert url_pattern("https://*.Example.com/%7e*") == "https://*.example.com/~*"
    assert url_pattern("*Prod*") == "*Prod*"  # no scheme: as written
    for glob in ("HTTPS://PROD.example.com.:443/*", "https://prod.example.com"):
        policy = Policy(rules=[Rule(name="r", args={"url": glob}, decision=DENY)])
        assert policy.check(url_call("https://prod.example.com/")).decision is DENY


def test_a_url_argument_that_is_no_url_is_denied_not_matched() -> None:
    for junk in ("prod.example.com/x", "http://127.1/", "https://a..b/", "https://[::1/"):
        verdict = Policy().check(url_call(junk))
        assert (verdict.decision, verdict.rule) == (DENY, "unreadable-url"), junk


def test_the_web_tools_refuse_what_they_cannot_send_with_one_clear_error() -> None:
    tool = TOOLS.get("fetch_url")
    for url, why in [
        ("ftp://example.com/x", "only http and https"),
        ("https://user:pw@example.com/", "Authorization header"),
        ("example.com", "not an absolute URL"),
        ("http://0x7f.1/", "numeric host in an unusual form"),
    ]:
        with pytest.raises(ToolArgumentError, match=why):
            tool.validate({"url": url})
    assert tool.validate({"url": " HTTP://Example.COM:80/a/./b/../c "}) == {
        "url": "http://example.com/a/c"
    }


# hypothesis: equivalent spellings of https://prod.example.com/api/v1/items?id=7


def _cases(text: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(text), max_size=len(text)).map(
        lambda flips: "".join(
            c.upper() if f else c.lower() for c, f in zip(text, flips, strict=True)
        )
    )


def _percent(segment: str) -> st.SearchStrategy[str]:
    def spell(flags: list[int]) -> str:
        out = []
        for c, f in zip(segment, flags, strict=True):
            if f == 1:
                out.append(f"%{ord(c):02X}")
            elif f == 2:
                out.append(f"%{ord(c):02x}")
            else:
                out.append(c)
        return "".join(out)

    return st.lists(st.integers(0, 2), min_size=len(segment), max_size=len(segment)).map(spell)


@st.composite
def url_spellings(draw: st.DrawFn, host: str = "prod.example.com", port: int | None = None) -> str:
    scheme = draw(_cases("https" if port is None else "http"))
    slashes = draw(st.sampled_from(["//", "//", "/", "", "\\\\", "/\\"]))
    userinfo = draw(st.sampled_from(["", "", "user@", "user:pw@", "@", "a%40b:c@"]))
    name = draw(_cases(host)) + draw(st.sampled_from(["", "", "."]))
    default = ":443" if port is None else ""
    shown_port = f":{port}" if port is not None else draw(st.sampled_from(["", default, ":"]))
    segments: list[str] = []
    for segment in ("api", "v1", "items"):
        for _ in range(draw(st.integers(0, 2))):
            segments.append(draw(st.sampled_from([".", "%2e", "", "zz/..", "q/%2E%2E"])))
        segments.append(draw(_percent(segment)))
    sep = draw(st.sampled_from(["/", "/", "//", "\\"]))
    path = sep + sep.join(segments)
    query = "?" + draw(_percent("id")) + "=7"
    fragment = draw(st.sampled_from(["", "#frag", "#/../../x"]))
    text = f"{scheme}:{slashes}{userinfo}{name}{shown_port}{path}{query}{fragment}"
    if draw(st.booleans()):  # tabs and line breaks inside are dropped, as browsers do
        at = draw(st.integers(len(scheme) + 1, len(text)))
        text = text[:at] + draw(st.sampled_from(["\t", "\n", "\r\n"])) + text[at:]
    return draw(st.sampled_from(["", " ", "\t", "\n "])) + text + draw(st.sampled_from(["", " \n"]))


API = Policy(
    rules=[Rule(name="no-prod-api", args={"url": "https://prod.example.com/api/*"}, decision=DENY)]
)


def url_property(policy: Policy) -> None:
    @settings(max_examples=300, deadline=None, database=None)
    @given(url=url_spellings())
    def never_weaker(url: str) -> None:
        assert canonical_url(url).text == "https://prod.example.com/api/v1/items?id=7", url
        assert policy.check(url_call(url)).decision is DENY, url
        assert builtin_decision(policy, url) in (DENY, None), url

    never_weaker()


def test_equivalent_url_spellings_never_weaken_a_deny() -> None:
    url_property(API)


def test_negative_control_raw_text_matching_lets_spellings_through() -> None:
    with pytest.raises(AssertionError):
        url_property(RawTextPolicy.model_validate(API.model_dump()))


@settings(max_examples=300, deadline=None, database=None)
@given(
    url=st.one_of(
        url_spellings(),
        st.builds(
            lambda p, q: f"https://h.example/{p}?{q}",
            st.text(max_size=12),
            st.text(max_size=8),
        ),
    )
)
def test_canonical_urls_are_idempotent_and_sent_as_written(url: str) -> None:
    try:
        c = canonical_url(url)
    except UrlError:
        return
    again = canonical_url(c.text)  # idempotent (the userinfo is never in the text)
    assert again.text == c.text and again == canonical_url(c.text)
    assert (again.host, again.port, again.path, again.query) == (c.host, c.port, c.path, c.query)
    sent = httpx.URL(c.text)  # what the HTTP client sends: the canonical text, unchanged
    assert str(sent) == c.text
    assert sent.raw_path.decode() == c.path + ("" if c.query is None else "?" + c.query)
    assert sent.raw_host.decode() == c.host.strip("[]")
    if not c.userinfo:
        assert web_url(c.text) == c.text


# -- paths --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("canon")
    ws = root / "ws"
    (ws / "sub" / "deep").mkdir(parents=True)
    (ws / "secret.txt").write_text("TOP SECRET")
    (ws / "notes.txt").write_text("just notes")
    (ws / "innocent.txt").symlink_to(ws / "secret.txt")  # a link planted in the workspace
    (ws / "here").symlink_to(ws)  # a link to the workspace itself
    (ws / "down").symlink_to(ws / "sub" / "deep")
    (root / "alias").symlink_to(ws)
    return ws


SECRETS = Policy(
    rules=[Rule(name="no-secrets", tool="*_file", args={"path": "secret*"}, decision=DENY)]
)


def file_call(path: str, ws: Path) -> PolicyCall:
    tool = TOOLS.get("read_file")
    args = tool.validate({"path": path})
    return PolicyCall("e1", "read_file", args, tool.effect(args), ws, BOTTOM, roles=tool.arg_roles)


async def read(path: str, ws: Path) -> str:
    tool = TOOLS.get("read_file")
    return (await tool.invoke(tool.validate({"path": path}), ToolContext("e1", 1, "k", ws))).text


def issue_paths(ws: Path) -> list[str]:
    return [
        "./secret.txt",
        " secret.txt",
        "\tsecret.txt",
        "sub/../secret.txt",
        str(ws / "secret.txt"),
        str(ws.parent / "alias" / "secret.txt"),
        "innocent.txt",  # the planted symlink
        "here/secret.txt",
        "down/../../secret.txt",  # the link is followed before the ".."
    ]


async def test_the_issues_path_walkarounds_are_denied(ws: Path) -> None:
    raw = RawTextPolicy.model_validate(SECRETS.model_dump())
    for path in issue_paths(ws):
        assert await read(path, ws) == "TOP SECRET", path  # what the tool really reads
        verdict = SECRETS.check(file_call(path, ws))
        assert (verdict.decision, verdict.rule) == (DENY, "no-secrets"), path
        assert raw.check(file_call(path, ws)).decision is ALLOW, path  # the control
    assert SECRETS.check(file_call("notes.txt", ws)).decision is ALLOW


def test_a_rules_path_glob_is_spelled_canonically(ws: Path) -> None:
    assert path_pattern(" ./secret* ") == "secret*"
    assert path_pattern("a//./b/") == "a/b/"
    absolute = Policy(
        rules=[Rule(name="abs", args={"path": f"{os.path.realpath(ws)}/secret*"}, decision=DENY)]
    )
    assert absolute.check(file_call("innocent.txt", ws)).decision is DENY
    assert canonical_path(" here//sub/../innocent.txt", ws).relative == "secret.txt"


@st.composite
def path_spellings(draw: st.DrawFn, ws: Path) -> str:
    prefix = draw(
        st.sampled_from(
            [
                "",
                "./",
                "sub/../",
                "sub/./deep/../../",
                "here/",
                "here/here/",
                "down/../../",
                f"{ws}/",
                f"{ws.parent / 'alias'}/",
                f"{ws}/sub/../",
            ]
        )
    )
    name = draw(st.sampled_from(["secret.txt", "innocent.txt", "here/innocent.txt"]))
    sep = draw(st.sampled_from(["", "./"] if not prefix else ["", "/", "./"]))
    text = prefix + sep + name
    if draw(st.booleans()):
        text = text.replace("/", "//", 1)
    return draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", " ", "\n"]))


def path_property(policy: Policy, ws: Path) -> None:
    @settings(
        max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(path=path_spellings(ws))
    def never_weaker(path: str) -> None:
        assert canonical_path(path, ws).relative == "secret.txt", path
        assert policy.check(file_call(path, ws)).decision is DENY, path

    never_weaker()


async def test_equivalent_path_spellings_never_weaken_a_deny(ws: Path) -> None:
    path_property(SECRETS, ws)
    # and each such spelling is the same file for the real tool
    for path in ("here//innocent.txt", f" {ws}/sub/../here/innocent.txt\t"):
        assert await read(path, ws) == "TOP SECRET"


def test_negative_control_raw_text_path_matching_lets_spellings_through(ws: Path) -> None:
    with pytest.raises(AssertionError):
        path_property(RawTextPolicy.model_validate(SECRETS.model_dump()), ws)


# -- a real run: nothing a rule denies reaches the server ----------------------------------------


@pytest.fixture
def net_settings(home: Path) -> Settings:
    write_config(home)
    return load_settings(home)


@pytest.fixture
async def db(net_settings: Settings) -> AsyncIterator[Store]:
    store = open_store(net_settings)
    yield store
    await store.close()


def blocked_spellings(sink: Sink) -> list[str]:
    return [
        f"HTTP://127.0.0.1:{sink.port}/blocked/1",
        f"http://127.0.0.1:{sink.port}/open/../blocked/2",
        f"http://127.0.0.1:{sink.port}//blocked/3",
        f"http://127.0.0.1:{sink.port}/%62locked/4",
        f" http://127.0.0.1:{sink.port}/blocked/5",
        f"http:127.0.0.1:{sink.port}/blocked/6",
    ]


async def raw_http_request(
    method: HttpMethod,
    url: str,
    ctx: ToolContext,
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> ToolOutput:
    """http_request as it was: its URL argument taken as written.

    Args:
        method: The HTTP method.
        url: The URL.
        headers: Request headers.
        body: The request body.
    """
    return await http_request(method, url, ctx, headers, body)  # type: ignore[arg-type]


RAW_TOOLS = FunctionToolset(
    [
        make_tool(
            raw_http_request,
            name="http_request",
            effect=http_request_effect,
            honours_idempotency_key=True,
            roles={"method": "method", "url": "url", "headers": "headers", "body": "body"},
        )
    ]
)


async def run_blocked(
    db: Store, settings: Settings, sink: Sink, policy: Policy, tools: FunctionToolset | None = None
) -> list[Any]:
    calls = [call("http_request", method="GET", url=u) for u in blocked_spellings(sink)]
    calls.append(call("http_request", method="GET", url=f"HTTP://127.0.0.1:{sink.port}/open/./ok"))
    model = script({"text": "fetching", "tool_calls": calls}, {"text": "done"})
    harness = harness_for(db, settings, tools=tools, model=model, policy=policy)
    eid = await harness.create("fetch them", model="scripted:demo")
    await harness.runner().run_errand(eid)
    return [s.event for s in await db.read(eid)]


def blocked_rule(sink: Sink) -> Policy:
    return Policy(
        rules=[Rule(name="no-blocked", args={"url": f"{sink.url}/blocked/*"}, decision=DENY)]
    )


async def test_a_real_run_sends_nothing_a_rule_denies_whatever_the_spelling(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    events = await run_blocked(db, net_settings, sink, blocked_rule(sink))
    assert [(r["method"], r["path"]) for r in sink.requests] == [("GET", "/open/ok")]
    denied = [e for e in events if isinstance(e, ev.ToolResult) and e.error_kind == "denied"]
    assert len(denied) == len(blocked_spellings(sink))
    intents = [e for e in events if isinstance(e, ev.ToolIntent)]
    assert [i.arguments["url"] for i in intents] == [f"{sink.url}/open/ok"]  # canonical


async def test_negative_control_raw_text_matching_sends_the_spellings(
    db: Store, net_settings: Settings, sink: Sink
) -> None:
    """errands without canonical spellings: the tool takes its URL as written, the policy
    matches the raw text -- and the denied endpoint is reached."""
    raw = RawTextPolicy.model_validate(blocked_rule(sink).model_dump())
    await run_blocked(db, net_settings, sink, raw, tools=RAW_TOOLS)
    assert sorted(r["path"] for r in sink.requests if r["path"].startswith("/blocked/")) == [
        f"/blocked/{n}" for n in range(1, 7)
    ]
