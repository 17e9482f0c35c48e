"""Debian's Chromium through Playwright, for the inbox's browser tests: one browser for a
module (:func:`chromium`), a fresh page per test that fails the test on any script error
(:func:`fresh_page`), and screenshots kept in ``tests/artifacts/inbox/`` (:func:`shot`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api
import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "inbox"


@contextmanager
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):  # a missing browser is a failure, never a skip
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def fresh_page(browser: Any) -> Iterator[Any]:
    """A page in a context of its own; confirm dialogs are accepted; a script error on
    any page fails the test."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        yield page
    finally:
        context.close()
    assert errors == []


def shot(page: Any, name: str) -> Path:
    """Keep what the page looked like (tests/artifacts/inbox/NAME.png, ignored by git)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
