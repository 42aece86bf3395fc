"""The lean path for WebSocket handshakes (lean/websocket.py): a new client
opened in front of Flask answers exactly as the full path would, and every
handshake the endpoint must judge still goes through Flask."""
from __future__ import annotations

import json
import socket

import pytest
import requests
import websocket
from flask import g, request, session, url_for
from werkzeug.routing import BaseConverter

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from test_lean_polls import Counted
from test_websocket import connect, make_app
from flask_atmosphere import AtmosphereClient, Connected, JsonMessage
from flask_atmosphere.lean import LeanPath


@pytest.fixture
def served(live, recorder):
    """(server, atmosphere, app, Counted) for the recording test app, after
    ``prepare(app, atmosphere)`` if given."""
    def start(prepare=None, **config):
        app, atmosphere = make_app(recorder, **config)
        if prepare is not None:
            prepare(app, atmosphere)
        assert isinstance(app.wsgi_app, LeanPath)
        counted = Counted(app)
        return live(app), atmosphere, app, counted
    return start


def handshake(server, target: str, *headers: str) -> tuple[str, dict[str, str], socket.socket]:
    """A raw WebSocket handshake: (status line, response headers, the open socket)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13", *headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:])
    return head[0], fields, sock


def test_new_websockets_after_the_first_do_not_reach_flask(served, recorder):
    server, atmosphere, app, flask = served()
    first, hello = connect(server, "/rooms/blue", colour="red")
    assert flask.count == 1 and hello["room"] == "blue"  # the first goes the full way
    clients = [connect(server, "/rooms/blue", colour="red") for _ in range(3)]
    assert flask.count == 1
    # The lean clients are whole clients: Connected ran, with the request's
    # route variables; they get broadcasts and speak.
    assert [h["room"] for _, h in clients] == ["blue"] * 3
    assert len({c.uuid for c, _ in clients} | {first.uuid}) == 4
    atmosphere.broadcast("/rooms/blue", "to all")
    assert [c.recv() for c, _ in [(first, hello), *clients]] == ["to all"] * 4
    client = clients[0][0]
    client.send(json.dumps({"cmd": "whoami"}))
    assert client.recv_json() == {"args": {"colour": "red"}, "session": {},
                                  "path": "/rooms/blue", "remote": "127.0.0.1"}
    # Another path of the same rule is another route key: the full way first.
    connect(server, "/rooms/green")
    assert flask.count == 2
    connect(server, "/rooms/green")
    assert flask.count == 2


def test_a_lean_handshake_answers_as_the_full_path(served):
    server, atmosphere, app, flask = served()
    target = "/quiet?" + "&".join(f"{k}={v}" for k, v in ATMOSPHERE_PARAMS.items())
    answers = []
    for through_flask in (1, 1):
        status, headers, sock = handshake(server, target)
        assert flask.count == through_flask
        sock.close()
        answers.append((status, headers))
    (full_status, full), (lean_status, lean) = answers
    assert full_status == lean_status == "HTTP/1.1 101 Switching Protocols"
    # The same headers; the resume key (a new one each time) in the same cookie.
    full_cookie, lean_cookie = full.pop("Set-Cookie"), lean.pop("Set-Cookie")
    full.pop("Date", None), lean.pop("Date", None)
    assert full == lean
    assert full_cookie.split(";", 1)[1] == lean_cookie.split(";", 1)[1]
    assert full_cookie.split("=", 1)[0] == lean_cookie.split("=", 1)[0] == "atmosphere_resume"


def test_the_request_context_of_a_lean_clients_events(served, recorder):
    seen = []

    def prepare(app, atmosphere):
        @atmosphere.route("/ctx/<int:n>")
        class Context(AtmosphereClient):
            def receive(self, event):
                g.hits = getattr(g, "hits", 0) + 1
                seen.append((type(event).__name__, request.path, dict(request.view_args),
                             request.args.get("q"), request.headers.get("X-Page"),
                             dict(session), url_for("rooms", room="r"), g.hits))
                if isinstance(event, JsonMessage):
                    self.send("ok")

    server, atmosphere, app, flask = served(prepare)
    WSClient(server.url("/ctx/7", q="one"), header=["X-Page: a"]).close()
    client = WSClient(server.url("/ctx/7", q="two"), header=["X-Page: b"])
    assert flask.count == 1
    client.send("{}")
    assert client.recv() == "ok"
    lean = [s for s in seen if s[3] == "two"]
    expected = ("/ctx/7", {"n": 7}, "two", "b", {}, "/rooms/r", 1)
    assert lean == [("Connected", *expected), ("JsonMessage", *expected)]
    assert seen[0] == ("Connected", "/ctx/7", {"n": 7}, "one", "a", {}, "/rooms/r", 1)


def hook(app, atmosphere):
    app.before_request(lambda: None)


def teardown(app, atmosphere):
    app.teardown_request(lambda exc: None)


def before_connect(app, atmosphere):
    atmosphere.before_connect(lambda: None)


class Upper(BaseConverter):
    def to_python(self, value):
        return value.upper()


def custom_converter(app, atmosphere):
    app.url_map.converters["upper"] = Upper
    atmosphere.route("/shout/<upper:word>", endpoint="shout")(
        type("Shout", (AtmosphereClient,), {"receive": lambda self, event: None}))


@pytest.mark.parametrize("prepare, path", [(hook, "/quiet"), (teardown, "/quiet"),
                                           (before_connect, "/quiet"),
                                           (custom_converter, "/shout/hey")])
def test_handshakes_go_through_flask_when_the_app_does_its_own(served, prepare, path):
    server, atmosphere, app, flask = served(prepare)
    for count in (1, 2):
        WSClient(server.url(path)).close()
        assert flask.count == count


def test_handshakes_the_endpoint_must_judge_go_through_flask(served, recorder):
    server, atmosphere, app, flask = served(ATMOSPHERE_ALLOWED_ORIGINS="https://ok.example",
                                            ATMOSPHERE_MAX_CONNECTIONS=4)
    WSClient(server.url("/chat"), suppress_origin=True)  # not from a page
    assert flask.count == 1
    # A foreign page: refused with 403 the full way.
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(server.url("/chat"), origin="https://evil.example")
    assert info.value.status_code == 403 and flask.count == 2
    # An allowed page: lean.
    WSClient(server.url("/chat"), origin="https://ok.example")
    assert flask.count == 2
    # A session cookie: Flask opens the session (the login is a request too).
    login = requests.get(server.url("/login", scheme="http"), timeout=TIMEOUT)
    cookie = login.headers["Set-Cookie"].split(";", 1)[0]
    client = WSClient(server.url("/chat"), cookie=cookie, suppress_origin=True)
    assert flask.count == 4 and client.recv_json()["hello"]
    client.send(json.dumps({"cmd": "whoami"}))
    assert json.loads(client.recv())["session"] == {"user": "ada"}
    # A parameter as a real header (§1.3).
    WSClient(server.url("/chat"), header=["X-Atmosphere-Framework: 5.0.7"],
             suppress_origin=True)
    assert flask.count == 5
    server.wait_until(lambda: len(atmosphere.registry) == 4)
    # At the limit: 503 the full way, where the endpoint logs and counts it.
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(server.url("/chat"), suppress_origin=True)
    assert info.value.status_code == 503 and flask.count == 6


def test_a_returning_client_goes_through_flask(served, recorder):
    server, atmosphere, app, flask = served()
    first = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    assert flask.count == 1
    # Its tracking id, held here: the endpoint decides (takeover, resume key).
    params = dict(ATMOSPHERE_PARAMS, **{"X-Atmosphere-tracking-id": first.uuid})
    again = WSClient(server.url("/quiet", **params), track=True, protocol=True,
                     cookie=first.cookie)
    assert flask.count == 2 and again.uuid == first.uuid
    # A valid id that no client here holds is adopted on the lean path.
    params["X-Atmosphere-tracking-id"] = "5d7b6e7c-36b5-4bd1-9d0f-2a1c4f6e8b90"
    adopted = WSClient(server.url("/quiet", **params), track=True, protocol=True)
    assert flask.count == 2 and adopted.uuid == params["X-Atmosphere-tracking-id"]
    recorder.wait_for(lambda items: (adopted.uuid, Connected()) in items)
