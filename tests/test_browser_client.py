"""The bundled JavaScript client (atmosphere-client.js) in a real browser,
on each of its transports, against a real server: acknowledgements (every
request says how many messages the client got, and what a drop lost comes
again, once, in order), heartbeats, refusals (the client stops for good),
try-later answers with Retry-After, the app closing a client, POSTs, and
messages sent while the server is down (queued, bounded, sent once in order
when it is back; 'sent' and 'unsent' say what became of each).

Needs Debian's Chromium at /usr/bin/chromium; without it these tests fail
(they never skip), because the client is only really tested in a browser.
Nothing here sleeps to wait: the page and the server are polled
(``wait_for_function``, ``LiveServer.wait_until``) until what is awaited
is there.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from flask import Flask, request
from playwright.sync_api import Browser, Page, sync_playwright

from conftest import Recorder
from outage import OutageProxy
from flask_atmosphere import (Atmosphere, AtmosphereClient, Connected, JsonMessage, Refused,
                              TextMessage)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update",
                 "--disable-sync"]
WAIT_MS = 10_000  # the longest any wait in the page may take
PAGE = (Path(__file__).parent / "client_page" / "index.html").read_text(encoding="utf-8")
TRANSPORTS = ["websocket", "sse", "streaming", "long-polling"]
POST_TRANSPORTS = ["sse", "streaming", "long-polling"]


# -- the app ---------------------------------------------------------------------

class Seen:
    """What the server saw: every HTTP request (time, method, path, query,
    whether it asked for a WebSocket upgrade), every admission of the
    ``before_connect`` hook (time, refused or not, whether it was a probe),
    and every event of the route's clients."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.admissions: list[dict[str, Any]] = []
        self.events = Recorder()
        #: Called by the before_connect hook, if set: raises Refused to refuse.
        self.gate: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def connection_requests(self, uuid: str) -> list[dict[str, Any]]:
        """The GETs of the tracking id ``uuid`` (not the probes)."""
        with self._lock:
            return [r for r in self.requests
                    if r["method"] == "GET" and r["args"].get("X-Atmosphere-tracking-id") == uuid
                    and not r["probe"] and r["path"] == "/live"]


def make_app(**config: Any) -> tuple[Flask, Atmosphere, Seen]:
    app = Flask(__name__)
    app.secret_key = "test"
    app.config.update(config)
    atmosphere = Atmosphere(app)
    seen = Seen()

    def is_probe() -> bool:
        return (request.args.get("X-Atmosphere-Transport") == "websocket"
                and request.headers.get("Upgrade", "").lower() != "websocket")

    @app.before_request
    def record() -> None:
        with seen._lock:
            seen.requests.append({"time": time.monotonic(), "method": request.method,
                                  "path": request.path, "args": dict(request.args),
                                  "probe": request.path == "/live" and is_probe(),
                                  "length": request.content_length})

    @atmosphere.before_connect
    def admit() -> None:
        entry = {"time": time.monotonic(), "probe": is_probe(), "refused": False,
                 "transport": request.args.get("X-Atmosphere-Transport")}
        try:
            if seen.gate is not None:
                seen.gate()
        except Refused:
            entry["refused"] = True
            raise
        finally:
            with seen._lock:
                seen.admissions.append(entry)

    @atmosphere.route("/live")
    class Live(AtmosphereClient):
        def receive(self, event: Any) -> None:
            seen.events.add((self.uuid, event))
            match event:
                case JsonMessage({"cmd": "close", "code": code, "reason": reason}):
                    self.close(code, reason)

    @app.route("/")
    def page() -> Any:
        return PAGE

    @app.route("/ping")
    def ping() -> str:
        return "pong"

    return app, atmosphere, seen


# -- the browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    assert os.access(CHROMIUM, os.X_OK), f"the browser tests need Chromium at {CHROMIUM}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: Browser):
    """``open_page(server)``: the test page of ``server`` in a browser context
    of its own, closed after the test."""
    contexts = []

    def open_(server) -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.goto(server.url("/", scheme="http"))
        return page

    yield open_
    for context in contexts:
        context.close()


def start(page: Page, transport: str, **options: Any) -> None:
    """Start the page's client on ``transport`` only, quick to reconnect."""
    page.evaluate("options => start(options)",
                  {"transports": [transport], "reconnectInterval": 50, **options})


def wait(page: Page, expression: str, arg: Any = None) -> None:
    page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)


def wait_open(page: Page) -> str:
    """Wait until the client is open; return its uuid."""
    wait(page, "() => client.state === 'open'")
    return page.evaluate("client.uuid")


def events(page: Page, name: str) -> list[list[Any]]:
    return page.evaluate("name => events(name)", name)


def messages(page: Page) -> list[str]:
    return page.evaluate("messages")


def wait_messages(page: Page, count: int) -> list[str]:
    wait(page, "n => messages.length >= n", count)
    return messages(page)


def connect(live, open_page, transport: str, plain: bool = False, client_options=None,
            **config: Any):
    """A server with the test app (``config`` on top), a page, and its client
    open on ``transport``: (server, atmosphere, seen, page, uuid)."""
    app, atmosphere, seen = make_app(**config)
    server = live(app, plain=plain)
    page = open_page(server)
    start(page, transport, **(client_options or {}))
    uuid = wait_open(page)
    assert page.evaluate("client.transport") == transport
    return server, atmosphere, seen, page, uuid


def record_sends(page: Page) -> None:
    """Log the client's 'sent' and 'unsent' events too (see events())."""
    page.evaluate("""() => {
        for (const name of ['sent', 'unsent'])
            client.on(name, (...args) => log.push([name, args.map(plain)]));
    }""")


def app_messages(seen: Seen) -> list[Any]:
    """What the app received, in order: texts, and JSON as its value."""
    return [e.text if isinstance(e, TextMessage) else e.json
            for _, e in seen.events.items if isinstance(e, (TextMessage, JsonMessage))]


def wait_app_messages(seen: Seen, count: int) -> list[Any]:
    seen.events.wait_for(lambda items: sum(isinstance(e, (TextMessage, JsonMessage))
                                           for _, e in items) >= count)
    return app_messages(seen)


def wait_stopped(page: Page, server, seen: Seen) -> None:
    """After 'refused': the client is closed, has nothing scheduled, and the
    server sees no request of it after a roundtrip of another request."""
    assert page.evaluate("client.state") == "closed"
    assert page.evaluate("client._link === null && Object.keys(client._timers).length === 0")
    before = seen.request_count()
    assert page.evaluate("fetch('/ping').then(r => r.text())") == "pong"
    assert seen.request_count() == before + 1  # the ping, nothing else
    assert page.evaluate("client.state") == "closed"


# -- 1. acknowledgement mode: no padding filter, whitespace heartbeats ------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_x_and_empty_messages_arrive_and_heartbeats_do_not(live, open_page, transport):
    server, atmosphere, seen, page, uuid = connect(
        live, open_page, transport, ATMOSPHERE_HEARTBEAT_INTERVAL=0.2,
        client_options={"inactivityTimeout": 700})
    # Every request named how many messages it got; the handshake named no padding.
    first = seen.connection_requests("0")[0]
    assert first["args"]["X-Atmosphere-Offset"] == "0"
    assert page.evaluate("client._padding") == ""

    atmosphere.broadcast("/live", "X")
    atmosphere.broadcast("/live", "")
    atmosphere.broadcast("/live", {"ordinary": True})
    got = wait_messages(page, 3)
    assert got[:2] == ["X", ""] and json.loads(got[2]) == {"ordinary": True}

    # Heartbeats come every 0.2 s as whitespace: at least six of them, and
    # the inactivity timeout of 0.7 s never fires (they count as activity).
    wait(page, "() => raw.filter(text => text.trim() === '').length >= 6")
    atmosphere.broadcast("/live", "after")
    got = wait_messages(page, 4)
    assert got[:2] == ["X", ""] and got[3:] == ["after"]
    assert page.evaluate("client.offset") == 4
    assert events(page, "close") == [] and events(page, "error") == []
    assert page.evaluate("client.uuid") == uuid and page.evaluate("client.state") == "open"


# -- 2. the count: what a drop loses comes again, once, in order ----------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_messages_broadcast_across_a_server_side_cut_arrive_once_in_order(
        live, open_page, transport):
    server, atmosphere, seen, page, uuid = connect(live, open_page, transport)
    for n in range(3):
        atmosphere.broadcast("/live", f"m{n}")
    assert wait_messages(page, 3) == ["m0", "m1", "m2"]
    connection = server.call(atmosphere.registry.get, uuid)
    server.wait_until(lambda: connection.carrier is not None)  # a poll is held
    cut_at = time.monotonic()

    def cut():
        connection.abort()  # no goodbye: the socket is cut
        for n in range(3, 6):
            atmosphere.broadcast("/live", f"m{n}")

    server.call(cut)
    for n in range(6, 10):
        atmosphere.broadcast("/live", f"m{n}")
    wait_messages(page, 10)
    wait(page, "() => client.state === 'open'")
    atmosphere.broadcast("/live", "end")  # anything sent twice would come before it
    wait(page, "() => messages.includes('end')")
    assert messages(page) == [f"m{n}" for n in range(10)] + ["end"]
    assert page.evaluate("client.uuid") == uuid
    # (A long-poll cut before its answer began may be sent again by the
    # browser itself, on a new socket: the client need not see the cut.)
    assert len(events(page, "close")) == (1 if transport != "long-polling" else
                                          len(events(page, "open")) - 1)
    # The client came back with its tracking id and said it had three.
    back = [r for r in seen.connection_requests(uuid) if r["time"] > cut_at]
    assert back and back[0]["args"]["X-Atmosphere-Offset"] == "3"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_what_never_reached_the_page_is_sent_again_after_a_reconnect(
        live, open_page, transport):
    server, atmosphere, seen, page, uuid = connect(live, open_page, transport)
    for n in range(2):
        atmosphere.broadcast("/live", f"m{n}")
    assert wait_messages(page, 2) == ["m0", "m1"]

    # The server sends three messages that the page loses (as if the network
    # ate them), then the page's connection drops.
    page.evaluate("swallow = true")
    lost_at = time.monotonic()
    for n in range(2, 5):
        atmosphere.broadcast("/live", f"m{n}")
    wait(page, "() => swallowed.join('').includes('m4')")
    page.evaluate("swallow = false; client._link.failed('cut by the test')")

    # It comes back saying it got two; the server sends the other three again.
    wait_messages(page, 5)
    atmosphere.broadcast("/live", "end")
    wait(page, "() => messages.includes('end')")
    assert messages(page) == [f"m{n}" for n in range(5)] + ["end"]
    assert page.evaluate("client.uuid") == uuid and page.evaluate("client.offset") == 6
    back = [r for r in seen.connection_requests(uuid) if r["time"] > lost_at]
    assert back and back[0]["args"]["X-Atmosphere-Offset"] == "2"


# -- 3. a refusal stops the client for good ---------------------------------------------

def go_away() -> None:
    raise Refused(403, "go away")


@pytest.mark.parametrize("transport,plain", [(name, False) for name in TRANSPORTS]
                         + [("websocket", True)],
                         ids=TRANSPORTS + ["websocket-upgraded-first"])
def test_a_refusal_stops_the_client(live, open_page, transport, plain):
    # plain: a server that upgrades WebSockets before asking the app (as under
    # gunicorn): the socket opens, then closes with 1008 before any handshake.
    app, atmosphere, seen = make_app()
    seen.gate = go_away
    server = live(app, plain=plain)
    page = open_page(server)
    start(page, transport)
    wait(page, "() => events('refused').length > 0")
    assert events(page, "refused") == [[{"status": 403, "reason": "go away",
                                         "transport": transport}]]
    errors = [args[0] for args in events(page, "error")]
    assert errors and errors[-1]["status"] == 403 and errors[-1]["reason"] == "go away"
    assert events(page, "open") == [] and events(page, "transportFailure") == []
    wait_stopped(page, server, seen)
    if transport in ("websocket", "sse"):  # the browser hid the status: a probe learned it
        assert any(entry["probe"] for entry in seen.admissions)


# -- 4. try later: 503 with Retry-After -------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_busy_server_is_left_alone_for_retry_after(live, open_page, transport):
    app, atmosphere, seen = make_app()
    busy_until: list[float] = []

    def busy():
        # Busy for the first half second: the first request, and the probe
        # that follows a failed WebSocket or EventSource at once.
        now = time.monotonic()
        if not busy_until:
            busy_until.append(now + 0.5)
        if now < busy_until[0]:
            raise Refused(503, "busy", retry_after=1)

    seen.gate = busy
    server = live(app)
    page = open_page(server)
    start(page, transport)
    wait_open(page)
    assert page.evaluate("client.transport") == transport

    refused = [i for i, entry in enumerate(seen.admissions) if entry["refused"]]
    assert refused, seen.admissions
    last = refused[-1]
    assert len(seen.admissions) > last + 1
    gap = seen.admissions[last + 1]["time"] - seen.admissions[last]["time"]
    assert gap >= 0.9, f"the client came back after {gap:.3f} s"
    reconnects = [args[0] for args in events(page, "reconnect")]
    assert reconnects[0]["delay"] >= 1000
    assert (reconnects[0]["status"], reconnects[0]["reason"]) == (503, "busy")
    assert events(page, "refused") == [] and events(page, "transportFailure") == []

    atmosphere.broadcast("/live", "welcome")
    assert wait_messages(page, 1) == ["welcome"]


# -- 5. the app closes the client: it stays closed --------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_the_app_closed_is_refused_when_it_comes_back(live, open_page, transport):
    server, atmosphere, seen, page, uuid = connect(live, open_page, transport)
    server.call(lambda: atmosphere.registry.get(uuid).client.close(4001, "banned"))
    wait(page, "() => events('refused').length > 0")
    assert events(page, "refused") == [[{"status": 410, "reason": "banned",
                                         "transport": transport}]]
    closes = [args[0] for args in events(page, "close")]
    assert closes, "the open connection ended first"
    if transport == "websocket":  # the app's code and reason, in the close frame
        assert closes[0] == "WebSocket closed (4001 banned)"
    # It came back with its tracking id (and was told 410).
    assert len(seen.connection_requests(uuid)) >= 1
    wait_stopped(page, server, seen)


def test_a_client_closing_itself_through_the_app_is_refused_on_websocket(live, open_page):
    # The app closes the client from its message handler.
    server, atmosphere, seen, page, uuid = connect(live, open_page, "websocket")
    page.evaluate("client.send({cmd: 'close', code: 4001, reason: 'banned'})")
    wait(page, "() => events('refused').length > 0")
    assert events(page, "refused")[0][0]["status"] == 410
    wait_stopped(page, server, seen)


# -- 6. messages upstream -----------------------------------------------------------------

@pytest.mark.parametrize("transport", POST_TRANSPORTS)
def test_posts_complete_and_none_is_cancelled(live, open_page, transport):
    server, atmosphere, seen, page, uuid = connect(live, open_page, transport)
    record_sends(page)
    failed: list[str] = []
    finished: list[str] = []
    page.on("requestfailed", lambda req: failed.append(f"{req.method} {req.url} {req.failure}"))
    page.on("requestfinished", lambda req: finished.append(req.method))
    # POSTs go one after another: once the last has finished, all have.
    with page.expect_request_finished(
            lambda req: req.method == "POST" and req.post_data == '{"n":4}', timeout=WAIT_MS):
        page.evaluate("for (let n = 0; n < 5; n++) client.send({n: n})")
    seen.events.wait_for(lambda items: sum(isinstance(e, JsonMessage) for _, e in items) == 5)
    got = [e.json for _, e in seen.events.items if isinstance(e, JsonMessage)]
    assert got == [{"n": n} for n in range(5)]
    assert finished.count("POST") == 5
    # Each one was 'sent' (its POST answered), in order.
    wait(page, "() => events('sent').length === 5")
    assert events(page, "sent") == [[{"n": n}] for n in range(5)]
    assert events(page, "unsent") == []
    assert failed == []
    assert events(page, "error") == []
    assert page.evaluate("client.state") == "open"


def test_a_post_the_server_refuses_is_an_error_with_its_status(live, open_page):
    server, atmosphere, seen, page, uuid = connect(live, open_page, "long-polling")
    record_sends(page)
    seen.gate = go_away  # from now on, the app refuses this client's requests
    page.evaluate("client.send('hello')")
    wait(page, "() => events('error').length > 0")
    error = events(page, "error")[0][0]
    assert (error["status"], error["reason"]) == (403, "go away")
    # The message is 'unsent', with the reason.
    wait(page, "() => events('unsent').length > 0")
    assert events(page, "unsent") == [["hello", "POST failed: HTTP 403 go away"]]
    assert events(page, "sent") == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_heartbeats_are_empty_messages(live, open_page, transport):
    server, atmosphere, seen, page, uuid = connect(
        live, open_page, transport, ATMOSPHERE_CLIENT_HEARTBEAT_INTERVAL=0.2)
    wait(page, "() => writes.filter(text => text === '').length >= 3")
    page.evaluate("client.send('hello')")
    seen.events.wait_for(lambda items: any(e == TextMessage("hello") for _, e in items))
    # The server took the empty messages for heartbeats: the app saw none.
    assert [e for _, e in seen.events.items if not isinstance(e, Connected)] \
        == [TextMessage("hello")]
    if transport != "websocket":
        empty_posts = [r for r in seen.requests if r["method"] == "POST" and not r["length"]]
        assert len(empty_posts) >= 3
    assert events(page, "error") == []


# -- negotiation still falls back on 501 --------------------------------------------------

def test_a_transport_the_server_does_not_offer_makes_way_for_the_next(live, open_page):
    app, atmosphere, seen = make_app(ATMOSPHERE_TRANSPORTS=["streaming", "long-polling"])
    server = live(app)
    page = open_page(server)
    page.evaluate("start({reconnectInterval: 50})")
    wait_open(page)
    assert page.evaluate("client.transport") == "streaming"
    assert [args[1] for args in events(page, "transportFailure")] == ["websocket", "sse"]
    assert events(page, "refused") == []


def test_no_transport_left_is_a_refusal(live, open_page):
    app, atmosphere, seen = make_app(ATMOSPHERE_TRANSPORTS=["long-polling"])
    server = live(app)
    page = open_page(server)
    start(page, "streaming")
    wait(page, "() => events('refused').length > 0")
    refused = events(page, "refused")[0][0]
    assert (refused["status"], refused["transport"]) == (501, "streaming")
    wait_stopped(page, server, seen)


# -- 7. messages sent while the server is down ------------------------------------------

def connect_through_an_outage_proxy(live, open_page, transport: str, **client_options: Any):
    """The test app behind an OutageProxy, and a page whose client is open
    through it on ``transport``: (server, atmosphere, seen, proxy, page, uuid)."""
    app, atmosphere, seen = make_app()
    server = live(app)
    proxy = OutageProxy(server.port)
    page = open_page(proxy)  # the page and its client go through the proxy
    start(page, transport, **client_options)
    uuid = wait_open(page)
    assert page.evaluate("client.transport") == transport
    record_sends(page)
    return server, atmosphere, seen, proxy, page, uuid


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_messages_sent_while_the_server_is_down_go_out_once_in_order_when_it_is_back(
        live, open_page, transport):
    server, atmosphere, seen, proxy, page, uuid = connect_through_an_outage_proxy(
        live, open_page, transport, maxQueued=3)
    try:
        assert page.evaluate("client.send('m0')") is True
        assert wait_app_messages(seen, 1) == ["m0"]
        wait(page, "() => events('sent').length === 1")

        proxy.down()
        wait(page, "() => client.state === 'reconnecting'")
        # They wait, as many as maxQueued; one more is 'unsent' at once.
        taken = page.evaluate("['m1', 'm2', {n: 3}, 'm4'].map(m => client.send(m))")
        assert taken == [False, False, False, False]
        assert page.evaluate("client.queued") == 3
        assert events(page, "unsent") == [["m4", "the queue is full (3 messages)"]]
        proxy.wait_refused(2)  # reconnect attempts meet the outage; nothing is lost
        assert page.evaluate("client.queued") == 3
        assert events(page, "sent") == [["m0"]]

        proxy.up()
        wait(page, "() => client.state === 'open' && client.queued === 0")
        assert page.evaluate("client.uuid") == uuid
        wait_app_messages(seen, 4)
        assert page.evaluate("client.send('end')") is True
        # Anything sent twice would come before 'end'.
        seen.events.wait_for(lambda items: any(e == TextMessage("end") for _, e in items))
        assert app_messages(seen) == ["m0", "m1", "m2", {"n": 3}, "end"]
        wait(page, "() => events('sent').length === 5")
        assert events(page, "sent") == [["m0"], ["m1"], ["m2"], [{"n": 3}], ["end"]]
        assert events(page, "unsent") == [["m4", "the queue is full (3 messages)"]]
    finally:
        proxy.stop()


@pytest.mark.parametrize("transport", ["websocket", "long-polling"])
def test_what_waits_when_the_client_closes_or_gives_up_is_unsent(live, open_page, transport):
    server, atmosphere, seen, proxy, page, uuid = connect_through_an_outage_proxy(
        live, open_page, transport, maxReconnectAttempts=3)
    try:
        proxy.down()
        wait(page, "() => client.state === 'reconnecting'")
        page.evaluate("client.send('a'); client.send({b: 1})")
        assert page.evaluate("client.queued") == 2
        page.evaluate("client.close()")
        assert events(page, "unsent") == [["a", "closed by the client"],
                                          [{"b": 1}, "closed by the client"]]
        assert page.evaluate("client.queued") == 0

        # Again, until the client gives up reconnecting.
        page.evaluate("log.length = 0; client.connect()")
        wait(page, "() => client.state === 'closed'")  # no transport could connect
        page.evaluate("client.connect(); client.send('c')")
        wait(page, "() => events('unsent').length > 0")
        assert events(page, "unsent") == [["c", "gave up reconnecting after 3 attempts"]]
        assert page.evaluate("client.state") == "closed"
        proxy.up()
        assert app_messages(seen) == []
    finally:
        proxy.stop()


def test_a_message_sent_as_the_websocket_closes_waits_for_the_next_one(live, open_page):
    # Once its socket is closing, a WebSocket drops what it is given without
    # a word: the client keeps the message and sends it on the next socket.
    server, atmosphere, seen, page, uuid = connect(live, open_page, "websocket")
    record_sends(page)
    assert page.evaluate("client._link.ws.close(); client.send('as it closes')") is False
    assert page.evaluate("client.queued") == 1
    wait(page, "() => events('sent').length === 1")
    assert wait_app_messages(seen, 1) == ["as it closes"]
    assert page.evaluate("client.send('end')") is True
    seen.events.wait_for(lambda items: any(e == TextMessage("end") for _, e in items))
    assert app_messages(seen) == ["as it closes", "end"]
    assert events(page, "unsent") == []
