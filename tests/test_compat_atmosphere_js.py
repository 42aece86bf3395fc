"""Compatibility with the official Atmosphere JavaScript clients, unchanged,
in headless Chromium (Debian's, /usr/bin/chromium), against our server.

The clients come from npm, pinned in tests/js/package.json (run ``npm ci`` in
tests/js first; without them every test here fails, it never skips):

* **5.x**: ``atmosphere.js`` 5.0.45 (the newest), its plain-browser build
  ``dist/atmosphere.global.js``: an IIFE that sets ``window.atmosphere``.
* **2.3.8** and **3.1.3**: the legacy line, the newest 2.x and 3.x releases of
  ``atmosphere.js`` on npm (aliases ``atmosphere.js-2`` and ``atmosphere.js-3``);
  their ``lib/atmosphere.js`` is the UMD file that sets a global ``atmosphere``
  in a browser (protocol document §0.1, §9).

The test app (``make_app`` of test_websocket.py) serves them, and a page
(tests/compat/page.html) that collects what the client reports in
``window.events``; the tests read that array and the requests the page made.

Each cell of the matrix connects to ``/chat``; gets the handshake (with the
protocol on: the handshake never reaches the app, and the client uses the
server's uuid as its tracking id from then on); sends a text message and
gets it echoed; sends a broadcast command and gets it back; receives a
server-side broadcast; then the server cuts its connection, and the client
reconnects: a broadcast sent while it is away and one sent afterwards both
arrive, exactly once, and it is still the same client (same uuid, no new
greeting). Messages carry non-ASCII text and ``|``, so the length framing
(§3) is exercised too.

* 5.x: ``enableProtocol`` on/off × ``trackMessageLength`` on/off ×
  websocket, long-polling, streaming, sse, with ``reconnect: true`` (the 5.x
  client does not reconnect without it, §7.3).
* 2.3.8 and 3.1.3: ``trackMessageLength`` on/off × websocket, long-polling,
  streaming, sse, jsonp; ``enableProtocol`` at its default (on).

Then the WebSocket fallback: a second app leaves "websocket" out of
``ATMOSPHERE_TRANSPORTS``, so the upgrade is refused (501, §8.1); the client
asks for websocket with a ``fallbackTransport`` and must then connect, chat
and get broadcasts over the fallback transport: 5.x in each protocol/tracking
configuration (to long-polling, or sse without the protocol), and to
streaming and sse with both on; each legacy release to long-polling,
streaming, sse and jsonp.

Not in the matrix, by the clients' design:

* 5.x has no jsonp (nor polling): its ``createTransport`` throws (§4.5, §4.8).
* 5.x without ``enableProtocol`` never learns a uuid: it sends tracking id
  ``0`` on every request (§2.6, Appendix C). So in those cells the server
  cannot tell who POSTed (no echo over HTTP transports: the broadcast command
  stands in for it), a reconnect is a new client (checked: a second greeting,
  and the broadcast sent after it), and a broadcast sent while it is away is
  nobody's to keep. Long-polling is left out entirely: every poll is a new
  client, so whatever is broadcast between two polls is lost, and an app that
  greets in ``Connected`` answers every poll at once (a busy loop of new
  clients), on any server.
* The legacy clients with ``enableProtocol`` off (they then make up a
  tracking id from a timestamp, §2.6): not a configuration of this issue.
* 5.x webtransport and legacy ``polling``: not transports of this server
  (§4.8, §4.9).

Client bugs worked around (see ``WORKAROUNDS``): 2.3.8 falls back twice when
the upgrade is refused, the second time to transport "none", unless
``maxWebsocketErrorRetries`` is 0.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import gevent
import pytest
from flask import Response, abort, send_file
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from conftest import LiveServer, Recorder
from test_browser_demo import browser  # noqa: F401  (the module's one Chromium)
from test_websocket import make_app

HERE = Path(__file__).parent
JS_DIR = HERE / "js"
PAGE = HERE / "compat" / "page.html"
WAIT_MS = 5_000  # the longest any single wait in the page may take

#: client name -> (its file under tests/js/node_modules, the page's start function)
CLIENTS = {
    "5.x": ("atmosphere.js/dist/atmosphere.global.js", "start5"),
    "2.3.8": ("atmosphere.js-2/lib/atmosphere.js", "startLegacy"),
    "3.1.3": ("atmosphere.js-3/lib/atmosphere.js", "startLegacy"),
}
LEGACY = ("2.3.8", "3.1.3")
CHAT = "/chat"


def client_file(client: str) -> Path:
    return JS_DIR / "node_modules" / CLIENTS[client][0]


def require_clients() -> None:
    """Fail (never skip) when the npm clients are not installed."""
    missing = [str(client_file(c).relative_to(HERE)) for c in CLIENTS if not client_file(c).is_file()]
    if missing:
        pytest.fail(f"the official atmosphere.js clients are not installed ({', '.join(missing)} "
                    f"missing): run `npm ci` in tests/js", pytrace=False)


# -- the app, the servers, the browser -----------------------------------------

def compat_app(**config):
    """The echo app of test_websocket.py, plus the page and the clients' files."""
    app, atmosphere = make_app(Recorder(), **config)

    @app.route("/compat/<client>")
    def compat_page(client):
        if client not in CLIENTS:
            abort(404)
        html = PAGE.read_text(encoding="utf-8")
        html = html.replace("{{client_script}}", f"/compat/js/{client}.js")
        html = html.replace("{{client_name}}", client)
        return Response(html, mimetype="text/html")

    @app.route("/compat/js/<client>.js")
    def compat_client(client):
        if client not in CLIENTS or not client_file(client).is_file():
            abort(404)
        return send_file(client_file(client), mimetype="text/javascript", max_age=0)

    return app, atmosphere


@dataclass
class Server:
    live: LiveServer
    atmosphere: object


@pytest.fixture(scope="module")
def server():
    """One server for the whole module: every transport offered (JSONP too)."""
    app, atmosphere = compat_app(
        ATMOSPHERE_TRANSPORTS=["websocket", "long-polling", "streaming", "sse", "jsonp"])
    live = LiveServer(app)
    yield Server(live, atmosphere)
    live.stop()


@pytest.fixture(scope="module")
def server_without_websocket():
    """A server whose app leaves WebSocket out of ATMOSPHERE_TRANSPORTS."""
    app, atmosphere = compat_app(ATMOSPHERE_TRANSPORTS=["long-polling", "streaming", "sse", "jsonp"])
    live = LiveServer(app)
    yield Server(live, atmosphere)
    live.stop()


@dataclass
class ClientPage:
    """One page running one official client, and the requests it made."""
    page: Page
    client: str
    requests: list = field(default_factory=list)  # (method, url), WebSockets as "WS"

    def start(self, **options) -> None:
        self.page.evaluate(f"options => {CLIENTS[self.client][1]}(options)", options)

    def events(self) -> list[dict]:
        return self.page.evaluate("window.events")

    def messages(self) -> list[str]:
        return [e["body"] for e in self.events() if e["type"] == "message"]

    def push(self, message: str) -> None:
        self.page.evaluate("m => push(m)", message)

    def wait(self, predicate: str, arg=None, what: str = "") -> object:
        """Wait until the JS ``predicate(events, arg)`` is truthy; return its value."""
        try:
            handle = self.page.wait_for_function(f"arg => ({predicate})(window.events, arg)",
                                                 arg=arg, timeout=WAIT_MS)
        except PlaywrightTimeout:
            pytest.fail(f"timed out waiting for {what or predicate}\n"
                        f"events: {json.dumps(self.events(), ensure_ascii=False, indent=1)}\n"
                        f"requests: {self.chat_requests()}", pytrace=False)
        return handle.json_value()

    def wait_message(self, body: str) -> dict:
        return self.wait("(events, body) => events.find(e => e.type === 'message' && e.body === body)",
                         body, f"the message {body!r}")

    def wait_greeting(self, count: int = 1) -> dict:
        """The ``count``-th greeting ``{"hello": uuid}`` of the app (sent in Connected)."""
        body = self.wait("(events, n) => events.filter(e => e.type === 'message' "
                         "&& e.body.startsWith('{\"hello\"'))[n - 1]", count,
                         f"greeting number {count}")["body"]
        return json.loads(body)

    def chat_requests(self) -> list[tuple[str, dict]]:
        """``(method, query)`` of each request to /chat, in order."""
        out = []
        for method, url in self.requests:
            parts = urlsplit(url)
            if parts.path == CHAT:
                out.append((method, {k: v[0] for k, v in parse_qs(parts.query).items()}))
        return out

    def tracking_ids(self) -> list[str]:
        return [query.get("X-Atmosphere-tracking-id") for _, query in self.chat_requests()]


@pytest.fixture
def open_client(browser):
    """``open_client(server, client)``: a fresh browser context and page with
    the client's page loaded; closed after the test."""
    contexts = []

    def open_(server: Server, client: str) -> ClientPage:
        require_clients()
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        cp = ClientPage(page, client)
        page.on("request", lambda r: cp.requests.append((r.method, r.url)))
        page.on("websocket", lambda ws: cp.requests.append(("WS", ws.url)))
        page.goto(server.live.url(f"/compat/{client}", scheme="http"))
        return cp

    yield open_
    for context in contexts:
        context.close()


# -- the matrix ------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    client: str
    transport: str
    protocol: bool
    track: bool

    @property
    def id(self) -> str:
        return "-".join([self.client, self.transport, "proto" if self.protocol else "noproto",
                         "track" if self.track else "notrack"])

    @property
    def legacy(self) -> bool:
        return self.client in LEGACY

    @property
    def attributable(self) -> bool:
        """Whether the server can tell which client sent a message: over the
        client's own WebSocket, or with the tracking id the protocol gave it
        (a 5.x client without the protocol POSTs with tracking id 0, §2.6)."""
        return self.protocol or self.transport == "websocket"

    def options(self, **extra) -> dict:
        options = {"transport": self.transport, "trackMessageLength": self.track}
        if self.legacy:
            assert self.protocol, "the legacy clients are tested with their default enableProtocol"
        else:
            options.update(enableProtocol=self.protocol, reconnect=True, reconnectInterval=100)
        options.update(extra)
        return options


TRANSPORTS_5X = ["websocket", "long-polling", "streaming", "sse"]
TRANSPORTS_LEGACY = TRANSPORTS_5X + ["jsonp"]

CELLS = [Cell("5.x", t, p, k) for p in (True, False) for k in (True, False) for t in TRANSPORTS_5X
         if p or t != "long-polling"] \
    + [Cell(c, t, True, k) for c in LEGACY for k in (True, False) for t in TRANSPORTS_LEGACY]

FALLBACKS = [Cell("5.x", "long-polling" if p else "sse", p, k) for p in (True, False) for k in (True, False)] \
    + [Cell("5.x", t, True, True) for t in ("streaming", "sse")] \
    + [Cell(c, t, True, True) for c in LEGACY for t in ("long-polling", "streaming", "sse", "jsonp")]

#: Client options that work around a client's own bug, by client.
WORKAROUNDS = {
    # 2.3.8 falls back twice when an upgrade is refused: from websocket.onerror
    # (while maxWebsocketErrorRetries allows a retry) and again from onclose,
    # the second time to fallbackTransport "none" (X-Atmosphere-Transport=none),
    # so it never connects, whatever the server answers. 3.x only falls back
    # from onclose. With maxWebsocketErrorRetries 0, 2.3.8 falls back once.
    "2.3.8": {"maxWebsocketErrorRetries": 0},
}

HANDSHAKE = re.compile(r"(\d+\|)?[A-Za-z0-9_-]+\|\d+\|X\|")


def connect_and_chat(cp: ClientPage, server: Server, cell: Cell, tag: str) -> str:
    """Connected: the handshake, the greeting, messages both ways over
    ``cell.transport``. Returns the uuid the server gave the client."""
    hello = cp.wait_greeting()["hello"]
    if cell.protocol:
        # The handshake went to the client, not to the app (§2.4) ...
        assert not [m for m in cp.messages() if HANDSHAKE.fullmatch(m)], cp.events()
        # ... and the client learned the uuid of the server's client.
        if cell.legacy:
            assert cp.page.evaluate("clientUuid()") == hello

    # Unicode on the way both ways: the length framing counts UTF-16 units (§3.1).
    if cell.attributable:
        echo = f"echo {tag} ✓ 😀 | pipes|and 7|digits"
        cp.push(echo)
        cp.wait_message(echo)
    relayed = f"relayed {tag} ✓ 😀"
    cp.push(json.dumps({"cmd": "broadcast", "to": "everyone", "msg": relayed}))
    cp.wait_message(relayed)
    news = f"broadcast {tag} ü€😀"
    server.live.call(server.atmosphere.broadcast, CHAT, news)
    cp.wait_message(news)

    transports = {e["transport"] for e in cp.events() if e["type"] == "message"}
    assert transports == {cell.transport}, cp.events()
    return hello


#: The transports whose client polls: one held GET after another.
POLLING = ("long-polling", "jsonp")


def cut(server: Server, uuid: str) -> None:
    """Cut the request carrying the client ``uuid`` (waiting for one: a
    long-poll client may be between two polls)."""
    atmosphere = server.atmosphere

    def run():
        with gevent.Timeout(WAIT_MS / 1000, AssertionError(f"no request carries {uuid}")):
            while True:
                connection = atmosphere.registry.get(uuid)
                assert connection is not None, f"client {uuid} is gone"
                if connection.carrier is not None:
                    connection.abort()
                    return
                gevent.sleep(0.005)
    server.live.call(run)


def _with_marks(cell: Cell):
    """The legacy clients' XHR streaming, on a reconnect, opens and aborts
    requests within a millisecond or two; now and then (more often on a busy
    machine) the message sent while it was away goes to a request it then
    drops. A known client quirk (see ``LEGACY_SETTLE`` in
    transports/streaming.py): such a cell gets two more tries, and fails if
    all three fail."""
    if cell.legacy and cell.transport == "streaming":
        return pytest.param(cell, marks=pytest.mark.flaky(reruns=2))
    return cell


@pytest.mark.parametrize("cell", [_with_marks(cell) for cell in CELLS], ids=lambda c: c.id)
def test_official_client(server, open_client, cell: Cell):
    """Connect, handshake, echo, broadcast, and reconnect after a cut."""
    cp = open_client(server, cell.client)
    cp.start(**cell.options())
    tag = cell.id
    uuid = connect_and_chat(cp, server, cell, tag)
    before = len(cp.chat_requests())

    cut(server, uuid)
    if cell.protocol:
        # Away, then back with its tracking id within the grace period: the
        # same client, and what was broadcast meanwhile is delivered.
        away = f"while away {tag}"
        server.live.call(server.atmosphere.broadcast, CHAT, away)
        cp.wait_message(away)
        back = f"after reconnect {tag}"
        server.live.call(server.atmosphere.broadcast, CHAT, back)
        cp.wait_message(back)
        messages = cp.messages()
        assert messages.count(away) == 1 and messages.count(back) == 1, messages
        assert [m for m in messages if m.startswith('{"hello"')] == [messages[0]], \
            "the server made a new client instead of resuming the old one"
        assert not [m for m in messages if HANDSHAKE.fullmatch(m)], cp.events()
        ids = cp.tracking_ids()
        assert ids[0] == "0" and ids[1:] == [uuid] * (len(ids) - 1), cp.chat_requests()
        assert len(ids) > before, "no request after the cut"
        if cell.legacy:
            assert cp.page.evaluate("clientUuid()") == uuid
    else:
        # No uuid to come back with: a fresh client greets it again.
        second = cp.wait_greeting(2)["hello"]
        assert second != uuid
        back = f"after reconnect {tag}"
        server.live.call(server.atmosphere.broadcast, CHAT, back)
        cp.wait_message(back)
        assert cp.messages().count(back) == 1
        assert set(cp.tracking_ids()) == {"0"}, cp.chat_requests()
    events = cp.events()
    if cell.transport not in POLLING:
        assert [e for e in events if e["type"] in ("reconnect", "reopen")], events
    # else the cut poll sent no byte yet (its headers go with its answer, after
    # the first poll) and Chromium sent it again on a new connection by itself
    # (a retry of an idempotent request, RFC 9110 §9.2.2): the client saw no cut.
    # It came back over the same transport.
    assert {e["transport"] for e in events if e["type"] == "message"} == {cell.transport}, events


@pytest.mark.parametrize("cell", FALLBACKS, ids=lambda c: c.id)
def test_official_client_falls_back_when_websocket_is_refused(server_without_websocket,
                                                               open_client, cell: Cell):
    """The upgrade is refused (501): the client falls back to
    ``cell.transport``, and gets its handshake, echo and broadcast there."""
    server = server_without_websocket
    cp = open_client(server, cell.client)
    cp.start(**cell.options(transport="websocket", fallbackTransport=cell.transport,
                            **WORKAROUNDS.get(cell.client, {})))
    uuid = connect_and_chat(cp, server, cell, f"fallback {cell.id}")
    events = cp.events()
    assert any(e["type"] == "transportFailure" for e in events), events
    # It tried the WebSocket first. (5.x with reconnect: true may try it again
    # later: its abandoned WebSocket transport schedules reconnects from
    # onclose, §7.3; each one is refused again.)
    assert cp.chat_requests()[0][0] == "WS", cp.chat_requests()
    if cell.protocol:
        assert uuid in cp.tracking_ids()
