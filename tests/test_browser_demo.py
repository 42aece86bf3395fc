"""The demo chat in a real browser: two headless Chromium pages chat through
the demo app, using the bundled JavaScript client (atmosphere-client.js);
joins and leaves are announced with the names given; a message typed while
the server is down shows as sending, and arrives once it is back; the send
bar fits a phone's screen.

Needs Debian's Chromium at /usr/bin/chromium; without it these tests fail
(they never skip), because the client is only really tested in a browser.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from demo import create_app
from http_clients import PollClient
from outage import OutageProxy

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
    """``open_page(url, **context_options)``: a page of its own browser
    context (a separate browser, as far as cookies and storage go; options
    as Playwright's ``new_context`` takes them), closed after the test."""
    contexts = []

    def open_(url: str, **context_options) -> Page:
        context = browser.new_context(**context_options)
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
    # "<name> joined the room" from each client's Connected event).
    joined = alice.locator("#messages li.system", has_text="joined the room")
    expect(joined).to_have_count(2, timeout=WAIT_MS)
    expect(joined.nth(1)).to_have_text(re.compile(r"bob joined the room$"))

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


# -- names in the announcements ----------------------------------------------------

def test_joins_and_leaves_are_announced_with_the_names_given(live, open_page):
    server = live(create_app())
    url = server.url("/", scheme="http")
    first = open_page(url)
    second = open_page(url)
    join(first, "Ada Lovelace", "websocket")
    expect(first.locator("#messages li.system")).to_have_text(
        [re.compile(r"Ada Lovelace joined the room$")], timeout=WAIT_MS)
    join(second, "Grace <i>Hopper</i>", "websocket")
    # The first page's line for the second join carries the second's name,
    # as text.
    expect(first.locator("#messages li.system")).to_have_text(
        [re.compile(r"Ada Lovelace joined the room$"),
         re.compile(r"Grace <i>Hopper</i> joined the room$")], timeout=WAIT_MS)
    expect(first.locator("#messages li.system .author")).to_have_text(
        ["Ada Lovelace", "Grace <i>Hopper</i>"])
    assert first.locator("#messages i").count() == 0
    assert first.locator("#messages", has_text="Someone").count() == 0

    second.click("#leave")
    expect(first.locator("#messages li.system").last).to_have_text(
        re.compile(r"Grace <i>Hopper</i> has left the room$"), timeout=WAIT_MS)


# -- a message typed while the server is down ----------------------------------------

@pytest.mark.parametrize("transport", ["websocket", "long-polling", "sse", "streaming"])
def test_a_message_typed_while_the_server_is_down_shows_as_sending_and_arrives_once(
        live, open_page, transport):
    # Alice reaches the server through a proxy that goes down and comes back
    # (the server keeps her within its grace period); Bob connects directly.
    server = live(create_app())
    proxy = OutageProxy(server.port)
    try:
        query = f"?transport={transport}"
        alice = open_page(proxy.url("/") + query)
        bob = open_page(server.url("/", scheme="http") + query)
        join(alice, "alice", transport)
        join(bob, "bob", transport)
        expect(alice.locator("#messages li.system", has_text="bob joined the room")) \
            .to_have_count(1, timeout=WAIT_MS)

        say(alice, "before the outage")
        expect(bob.locator("#messages")).to_contain_text("alice: before the outage",
                                                         timeout=WAIT_MS)
        before = alice.locator("#messages li.mine", has_text="before the outage")
        expect(before).not_to_have_class(re.compile(r"\b(pending|unsent)\b"))

        proxy.down()
        expect(alice.locator("#status")).to_have_attribute("data-state", "reconnecting",
                                                           timeout=WAIT_MS)
        say(alice, "typed while the server is down")
        line = alice.locator("#messages li.mine", has_text="typed while the server is down")
        # Shown, but as sending, not as sent.
        expect(line).to_have_class(re.compile(r"\bpending\b"))
        expect(line.locator(".state")).to_have_text("sending…")
        assert bob.locator("#messages li", has_text="typed while").count() == 0

        proxy.wait_refused(1)  # a reconnect attempt met the outage
        expect(line).to_have_class(re.compile(r"\bpending\b"))
        proxy.up()
        expect(alice.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
        expect(bob.locator("#messages li", has_text="alice: typed while the server is down")) \
            .to_have_count(1, timeout=WAIT_MS)
        expect(line).not_to_have_class(re.compile(r"\b(pending|unsent)\b"), timeout=WAIT_MS)
        expect(line.locator(".state")).to_have_count(0)

        # Anything sent twice would come before the next message.
        say(alice, "after the outage")
        expect(bob.locator("#messages")).to_contain_text("alice: after the outage",
                                                         timeout=WAIT_MS)
        lines = bob.locator("#messages li:not(.system) .text").all_text_contents()
        assert lines == ["before the outage", "typed while the server is down",
                         "after the outage"]
    finally:
        proxy.stop()


def test_a_message_waiting_when_the_user_leaves_shows_as_not_sent(live, open_page):
    server = live(create_app())
    proxy = OutageProxy(server.port)
    try:
        alice = open_page(proxy.url("/"))
        join(alice, "alice", "websocket")
        proxy.down()
        expect(alice.locator("#status")).to_have_attribute("data-state", "reconnecting",
                                                           timeout=WAIT_MS)
        say(alice, "never sent")
        line = alice.locator("#messages li.mine", has_text="never sent")
        expect(line).to_have_class(re.compile(r"\bpending\b"))
        alice.click("#leave")
        expect(line).to_have_class(re.compile(r"\bunsent\b"))
        expect(line).not_to_have_class(re.compile(r"\bpending\b"))
        expect(line.locator(".state")).to_have_text("not sent")
    finally:
        proxy.stop()


# -- a phone's screen ------------------------------------------------------------------

NAME_40 = "Maximiliane Wolfeschlegelsteinhausenberg"  # 40 characters, one long word


def test_the_send_bar_fits_a_360_px_screen_with_a_40_character_name(live, open_page):
    assert len(NAME_40) == 40
    server = live(create_app())
    # A phone: 360 CSS px wide, three device pixels to each.
    page = open_page(server.url("/", scheme="http"), viewport={"width": 360, "height": 740},
                     device_scale_factor=3, is_mobile=True, has_touch=True)
    assert page.evaluate("[window.innerWidth, document.documentElement.clientWidth,"
                         " window.devicePixelRatio]") == [360, 360, 3]
    join(page, NAME_40, "websocket")
    expect(page.locator("#you")).to_have_text(NAME_40)
    say(page, "hello from a small screen")
    expect(page.locator("#messages li.mine")).to_have_count(1)

    for selector in ("#message", "#send", "#leave", "#you"):
        box = page.evaluate(
            """selector => {
                 const r = document.querySelector(selector).getBoundingClientRect();
                 return {left: r.left, right: r.right, top: r.top, bottom: r.bottom,
                         width: r.width};
               }""", selector)
        assert box["left"] >= 0 and box["right"] <= 360, (selector, box)
        assert box["top"] >= 0 and box["bottom"] <= 740, (selector, box)
        assert box["width"] > 0, (selector, box)
    # The input keeps room to type in.
    assert page.evaluate("document.querySelector('#message').getBoundingClientRect().width") >= 120
    # Nothing scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth"
                         " <= document.documentElement.clientWidth")
    assert page.evaluate("document.body.scrollWidth <= document.documentElement.clientWidth")


def test_the_readme_page_for_the_bundled_client_works_as_it_is(live, open_page):
    """The whole page of the README's "The bundled JavaScript client",
    served by a view of the demo app: it connects, and lists what arrives
    (its own join); its message reaches another client."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The bundled JavaScript client", 1)[1]
    page_html = section.split("```html\n", 1)[1].split("```", 1)[0]
    app = create_app()
    app.add_url_rule("/readme-page", "readme_page", lambda: page_html)
    server = live(app)
    other = PollClient(server.url("", scheme="http").rstrip("/"), "/the-chat")
    page = open_page(server.url("/readme-page", scheme="http"))
    expect(page.locator("#log li", has_text="joined the room")).to_have_count(1,
                                                                            timeout=WAIT_MS)
    got: list[dict] = []
    while not any(line.get("message") == "hello" for line in got):
        got += [json.loads(text) for text in other.poll()]
    assert [line["author"] for line in got if line.get("message") == "hello"] == ["ada"]
