"""The demo chat in a real browser: two headless Chromium pages chat through
the demo app, using the bundled JavaScript client (atmosphere-client.js).

Needs Debian's Chromium at /usr/bin/chromium; without it these tests fail
(they never skip), because the client is only really tested in a browser.
"""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from demo import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update",
                 "--disable-sync"]
WAIT_MS = 10_000  # the longest any expectation waits


@pytest.fixture(scope="module")
def browser():
    assert os.access(CHROMIUM, os.X_OK), f"the browser tests need Chromium at {CHROMIUM}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: Browser):
    """``open_page(url)``: a page of its own browser context (a separate
    browser, as far as cookies and storage go), closed after the test."""
    contexts = []

    def open_(url: str) -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()


def join(page: Page, name: str, transport: str) -> None:
    page.fill("#name", name)
    page.click("#join")
    expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
    expect(page.locator("#transport")).to_have_text(transport, timeout=WAIT_MS)


def say(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def run_chat(live, open_page, query: str, transport: str, config: dict | None = None) -> None:
    """Alice and Bob join the demo chat (``query`` appended to its URL, the
    app's ``config`` overridden), check that the page reports ``transport``,
    and each sees the other's message."""
    server = live(create_app(config))
    url = server.url("/", scheme="http") + query
    alice = open_page(url)
    bob = open_page(url)

    join(alice, "alice", transport)
    join(bob, "bob", transport)
    # Bob is registered once Alice has seen both joins (the server broadcasts
    # "joined the room" from each client's Connected event).
    joined = alice.locator("#messages li", has_text="Someone: joined the room")
    expect(joined).to_have_count(2, timeout=WAIT_MS)

    say(alice, "hello from <b>alice</b> & co")
    expect(bob.locator("#messages")).to_contain_text("alice: hello from <b>alice</b> & co",
                                                     timeout=WAIT_MS)
    # the sender shows its own line (the server does not echo it)
    expect(alice.locator("#messages li.mine")).to_contain_text("alice: hello from <b>alice</b>")

    say(bob, "hi alice, bob here ✓ 😀")
    expect(alice.locator("#messages")).to_contain_text("bob: hi alice, bob here ✓ 😀",
                                                       timeout=WAIT_MS)

    # Data is shown as text, never parsed as HTML.
    assert bob.locator("#messages b").count() == 0
    # Each page saw the other's message exactly once.
    expect(bob.locator("#messages li", has_text="hello from")).to_have_count(1)
    expect(alice.locator("#messages li", has_text="bob here")).to_have_count(1)


def test_two_browsers_chat_over_websocket(live, open_page):
    # (live before open_page: the pages close before the server stops)
    run_chat(live, open_page, "", "websocket")


@pytest.mark.parametrize("transport", ["sse", "streaming", "long-polling"])
def test_two_browsers_chat_over_a_forced_fallback_transport(live, open_page, transport):
    run_chat(live, open_page, f"?transport={transport}", transport)


def test_the_page_falls_back_by_itself_when_websocket_is_refused(live, open_page):
    # The server answers upgrades with 501; the client moves on to SSE.
    run_chat(live, open_page, "", "sse",
             {"ATMOSPHERE_TRANSPORTS": ["sse", "streaming", "long-polling"]})
