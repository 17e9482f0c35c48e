"""The model-free check of a watch, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.site import HTML, Page, Site, serving

from errands.config import NetworkSettings, Settings
from errands.errors import UserError
from errands.tools.watchcheck import (
    Item,
    WatchError,
    WatchSpecError,
    check,
    extract,
    validate_watch,
)


@pytest.fixture(scope="module")
def _server() -> Iterator[Site]:
    with serving() as site:
        yield site


@pytest.fixture
def site(_server: Site) -> Site:
    _server.pages.clear()
    _server.seen.clear()
    return _server


def settings_for(allow: list[str] | None = None, **kw: Any) -> Settings:
    return Settings(network=NetworkSettings(allow_private=allow or [], timeout_seconds=5, **kw))


LOCAL = settings_for(["127.0.0.1"])


def listings(ad: str) -> bytes:
    return f"""<!doctype html><html><head><title>Flats</title>
    <style>li {{ color: red }}</style><script>var seen = "{ad}";</script></head>
    <body><div class="ad">Sponsored: {ad}</div>
    <ul id="results">
      <li class="listing"><h2>Two  bedrooms</h2> <b>1,900</b>&nbsp;EUR<script>track()</script></li>
      <li class="listing"><h2>Studio</h2> <b>900</b> EUR</li>
    </ul></body></html>""".encode()


def texts(items: tuple[Item, ...]) -> list[str]:
    return [item.text for item in items]


def keys(items: tuple[Item, ...]) -> list[str]:
    return [item.key for item in items]


# -- extracting ------------------------------------------------------------------------------


async def test_each_selector_match_is_one_item_of_visible_text(site: Site) -> None:
    site.pages["/flats"] = Page(listings("Buy a boat"))
    checked = await check(site.url("/flats"), LOCAL, select="#results li.listing")
    assert texts(checked.items) == ["Two bedrooms 1,900 EUR", "Studio 900 EUR"]
    assert checked.items[1].key == hashlib.sha256(b"Studio 900 EUR").hexdigest()
    assert (checked.status, checked.not_modified) == (200, False)
    assert checked.url == site.url("/flats")


async def test_a_rotating_ad_outside_the_selection_changes_no_key(site: Site) -> None:
    site.pages["/flats"] = Page(listings("Buy a boat"))
    first = await check(site.url("/flats"), LOCAL, select="li.listing")
    whole_first = await check(site.url("/flats"), LOCAL)
    site.pages["/flats"] = Page(listings("Learn French"))
    second = await check(site.url("/flats"), LOCAL, select="li.listing")
    whole_second = await check(site.url("/flats"), LOCAL)
    assert keys(first.items) == keys(second.items)
    # the basis of the negative control: the whole page's text does change
    assert set(keys(whole_second.items)) - set(keys(whole_first.items))
    assert "Sponsored: Learn French" in texts(whole_second.items)
    assert not any("seen" in t or "color" in t for t in texts(whole_second.items))


async def test_json_path_gives_one_item_per_element_whatever_the_key_order(site: Site) -> None:
    data = {"listings": [{"id": 1, "price": 900}, {"id": 2, "price": 1900}], "ad": "boat"}
    site.pages["/api"] = Page(json.dumps(data).encode(), "application/json")
    by_array = await check(site.url("/api"), LOCAL, json_path="$.listings")
    by_elements = await check(site.url("/api"), LOCAL, json_path="$.listings[*]")
    assert texts(by_array.items) == ['{"id":1,"price":900}', '{"id":2,"price":1900}']
    assert keys(by_elements.items) == keys(by_array.items)
    reordered = {"ad": "car", "listings": [{"price": 900, "id": 1}, {"price": 1900, "id": 2}]}
    site.pages["/api"] = Page(json.dumps(reordered, indent=2).encode(), "application/json")
    again = await check(site.url("/api"), LOCAL, json_path="$.listings")
    assert keys(again.items) == keys(by_array.items)


def test_json_strings_are_items_as_they_are_and_the_whole_document_without_a_path() -> None:
    body = b'{"titles": ["Studio", "Loft"], "n": 2}'
    found = extract(body, "application/json", select=None, json_path="$.titles[*]")
    assert texts(found) == ["Studio", "Loft"]
    assert texts(extract(body, "application/json", select=None, json_path=None)) == [
        '{"n":2,"titles":["Studio","Loft"]}'
    ]
    assert texts(extract(b'"just this"', "application/json", select=None, json_path="$")) == [
        "just this"
    ]
    assert extract(b'"just this"', "application/json", select=None, json_path="$.a") == ()


async def test_text_mode_gives_one_item_per_non_empty_line(site: Site) -> None:
    site.pages["/notes"] = Page(
        b"  first   line \n\n\t\nsecond\tline\r\nfirst line\n", "text/plain"
    )
    checked = await check(site.url("/notes"), LOCAL)
    assert texts(checked.items) == ["first line", "second line"]


async def test_the_result_names_the_url_after_redirects(site: Site) -> None:
    site.pages["/old"] = Page(b"", "text/plain", status=301, location="/new")
    site.pages["/new"] = Page(b"moved here\n", "text/plain")
    checked = await check(site.url("/old"), LOCAL)
    assert (checked.url, texts(checked.items)) == (site.url("/new"), ["moved here"])


def test_the_page_charset_is_honoured_and_feeds_are_read_as_text() -> None:
    latin = b'<html><head><meta charset="iso-8859-1"></head><p>Caf\xe9 cr\xe8me</p></html>'
    assert texts(extract(latin, "text/html", select="p", json_path=None)) == ["Café crème"]
    declared = "<p>Café</p>".encode("utf-16")
    assert texts(extract(declared, HTML, select="p", json_path=None, encoding="utf-16")) == ["Café"]
    feed = b"<rss><channel><item><title>New flat</title></item></channel></rss>"
    assert texts(extract(feed, "application/rss+xml", select=None, json_path=None)) == ["New flat"]
    assert texts(extract(feed, "application/rss+xml", select="item title", json_path=None)) == [
        "New flat"
    ]


def test_duplicates_are_dropped_keeping_the_first() -> None:
    body = b"<ul><li>b</li><li>a</li><li> b </li><li></li><li>c</li><li>a</li></ul>"
    assert texts(extract(body, HTML, select="li", json_path=None)) == ["b", "a", "c"]


def test_text_is_nfkc_normalised_with_whitespace_collapsed() -> None:
    body = "<p>\uff26\uff4c\uff41\uff54\u00a0\u00a0 \ufb01ve\u2003rooms\n</p>".encode()
    (item,) = extract(body, HTML, select="p", json_path=None)
    assert item.text == "Flat five rooms"
    assert item.key == hashlib.sha256(b"Flat five rooms").hexdigest()


def test_a_long_item_keeps_2000_characters_and_a_key_over_all_of_it() -> None:
    body = ("x" * 2500 + "\n" + "x" * 2400 + "\n").encode()
    one, two = extract(body, "text/plain", select=None, json_path=None)
    assert one.text == two.text == "x" * 2000
    assert one.key != two.key


def test_a_body_that_is_not_what_is_asked_is_a_clear_error() -> None:
    with pytest.raises(WatchError, match="not usable JSON") as caught:
        extract(b"<html>no</html>", HTML, select=None, json_path="$.a")
    assert not caught.value.transient
    with pytest.raises(WatchError, match="image/png, not text"):
        extract(b"\x89PNG\x00", "image/png", select=None, json_path=None)


# -- conditional requests ------------------------------------------------------------------

# errands.tools.netguard.guarded_request takes every 3xx for a redirect (httpx's
# Response.is_redirect) and reads its Location header, so a 304 raises KeyError there;
# `response.has_redirect_location` is the fix. Strict: these fail once it is fixed.
async def test_an_etag_is_sent_back_and_a_304_is_not_modified(site: Site) -> None:
    site.pages["/flats"] = Page(listings("boat"), etag='"v1"')
    first = await check(site.url("/flats"), LOCAL, select="li")
    assert first.etag == '"v1"' and first.items
    second = await check(site.url("/flats"), LOCAL, select="li", etag=first.etag)
    assert site.seen[-1].get("if-none-match") == '"v1"'
    assert (second.not_modified, second.items, second.status) == (True, (), 304)
    assert second.etag == '"v1"'


async def test_last_modified_is_sent_back_and_a_304_is_not_modified(site: Site) -> None:
    stamp = "Wed, 21 Oct 2026 07:28:00 GMT"
    site.pages["/flats"] = Page(listings("boat"), last_modified=stamp)
    first = await check(site.url("/flats"), LOCAL, select="li")
    assert (first.last_modified, first.etag) == (stamp, None)
    assert "if-modified-since" not in site.seen[-1]
    second = await check(site.url("/flats"), LOCAL, select="li", last_modified=stamp)
    assert site.seen[-1].get("if-modified-since") == stamp
    assert second.not_modified and second.items == ()


# -- failures --------------------------------------------------------------------------------

SECRET = "Bearer s3cret-watch-token"


async def test_the_callers_headers_are_sent_and_never_shown_in_an_error(site: Site) -> None:
    url = site.url("/private")
    site.pages["/private"] = Page(f"echo: {SECRET}".encode(), "text/plain", status=500)
    with pytest.raises(WatchError) as caught:
        await check(url, LOCAL, headers={"Authorization": SECRET, "X-Key": "k-123456"})
    assert site.seen[-1]["authorization"] == SECRET and site.seen[-1]["x-key"] == "k-123456"
    message = str(caught.value)
    assert "HTTP 500" in message and url in message and caught.value.transient
    assert "s3cret" not in message and "k-123456" not in message
    with pytest.raises(WatchError, match="'X-Key' has forbidden characters") as bad:
        await check(url, LOCAL, headers={"X-Key": "k-123456\r\nX-Other: 1"})
    assert "k-123456" not in str(bad.value) and not bad.value.transient


@pytest.mark.parametrize(
    ("status", "transient", "hint"),
    [
        (404, False, "check the watch's URL"),
        (410, False, "check the watch's URL"),
        (403, False, "check the watch's headers"),
        (429, True, "HTTP 429"),
        (503, True, "HTTP 503"),
    ],
)
async def test_an_error_status_names_itself_and_says_whether_to_retry_soon(
    site: Site, status: int, transient: bool, hint: str
) -> None:
    site.pages["/flaky"] = Page(b"sorry", "text/plain", status=status)
    with pytest.raises(WatchError) as caught:
        await check(site.url("/flaky"), LOCAL)
    assert f"HTTP {status}" in str(caught.value) and hint in str(caught.value)
    assert caught.value.transient is transient


async def test_the_network_guard_refuses_before_any_request(site: Site) -> None:
    site.pages["/flats"] = Page(listings("boat"))
    with pytest.raises(WatchError, match="loopback") as caught:
        await check(site.url("/flats"), settings_for())
    assert not caught.value.transient
    assert site.seen == []


async def test_a_name_that_does_not_resolve_is_worth_retrying() -> None:
    with pytest.raises(WatchError, match=r"no-such-host\.invalid") as caught:
        await check("http://no-such-host.invalid/", settings_for())
    assert caught.value.transient


async def test_a_page_over_the_size_limit_says_which_setting_raises_it(site: Site) -> None:
    site.pages["/big"] = Page(b"line\n" * 1000, "text/plain")
    with pytest.raises(
        WatchError, match=r"larger than the 1,000 bytes network\.max_response_bytes"
    ):
        await check(site.url("/big"), settings_for(["127.0.0.1"], max_response_bytes=1000))
    small = await check(site.url("/big"), settings_for(["127.0.0.1"], max_response_bytes=5000))
    assert texts(small.items) == ["line"]


# -- validating a watch ----------------------------------------------------------------------


def test_validate_watch_returns_the_canonical_url(site: Site) -> None:
    url = f"HTTP://127.0.0.1:{site.port}/a/../flats?"
    assert validate_watch(url, "li", None, LOCAL) == site.url("/flats")
    assert validate_watch(site.url("/api"), None, "$.listings[*]", LOCAL) == site.url("/api")


@pytest.mark.parametrize(
    ("url", "select", "json_path", "field", "says"),
    [
        ("http://10.0.0.1/", None, None, "url", "10.0.0.1 is a private address"),
        ("http://localhost:{port}/", None, None, "url", "not in network.allow_private"),
        ("ftp://127.0.0.1/", None, None, "url", "only http and https"),
        ("http://user:pw@127.0.0.1/", None, None, "url", "user name or password"),
        ("http://[::1", None, None, "url", "does not close"),
        ("http://127.0.0.1/", "li[", None, "select", "is not a CSS selector"),
        ("http://127.0.0.1/", None, "$.[", "json_path", "not a valid JSONPath"),
        ("http://127.0.0.1/", None, "listings", "json_path", "not a valid JSONPath"),
        ("http://127.0.0.1/", "li", "$.a", "select", "select or json_path, not both"),
    ],
)
def test_validate_watch_refuses_naming_the_field(
    site: Site, url: str, select: str | None, json_path: str | None, field: str, says: str
) -> None:
    allowed = LOCAL if "localhost" not in url else settings_for()  # 127.0.0.1 but not localhost
    with pytest.raises(WatchSpecError) as caught:
        validate_watch(url.format(port=site.port), select, json_path, allowed)
    assert isinstance(caught.value, UserError)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and says in str(caught.value)
    assert "\n" not in str(caught.value)
