"""What the app's code sees and what it may do: the request, the session and
``url_for`` inside ``receive`` alike on every transport and event; whatever it
raises is contained; paths as ``url_for`` writes them; a lone surrogate in a
client's JSON costs nobody anything."""
from __future__ import annotations

import json

import gevent
import pytest
import requests
from flask import Flask, g, request, session, url_for

from conftest import ATMOSPHERE_PARAMS, WSClient
from http_clients import PollClient, StreamClient
from test_websocket import connect, events_of, live, make_app  # noqa: F401 (live: both servers)
from flask_atmosphere import (Atmosphere, AtmosphereClient, Connected, Disconnected, Error,
                              JsonMessage, ServerDisconnected, TextMessage)


def context_app(recorder):
    """Each client tells what ``flask.request``, ``flask.session`` and
    ``url_for`` say inside ``receive``, on ``Connected`` and on each message."""
    app = Flask(__name__)
    app.secret_key = "test"
    atmosphere = Atmosphere(app)

    @atmosphere.route("/rooms/<room>", endpoint="room")
    class Context(AtmosphereClient):
        def receive(self, event):
            recorder.add((self.uuid, event))
            match event:
                case Connected() | TextMessage("what"):
                    self.send({"path": request.path, "x": request.args.get("x"),
                               "user": session.get("user"), "room": request.view_args["room"],
                               "url": url_for("room", room="b c", _external=True)})
                case TextMessage("write"):
                    session["user"] = "mallory"

    @app.route("/login")
    def login():
        session["user"] = "ada"
        return "ok"

    return app, atmosphere


def expected(server):
    return {"path": "/rooms/a", "x": "1", "user": "ada", "room": "a",
            "url": f"http://127.0.0.1:{server.port}/rooms/b%20c"}


@pytest.mark.parametrize("transport", ["websocket", "long-polling", "streaming", "sse"])
def test_request_session_and_url_for_inside_receive_on_every_transport(live, recorder, transport):
    app, atmosphere = context_app(recorder)
    server = live(app)
    base = f"http://127.0.0.1:{server.port}"
    http = requests.Session()
    http.get(base + "/login", timeout=5)
    if transport == "websocket":
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        client = WSClient(server.url("/rooms/a", x="1", **ATMOSPHERE_PARAMS), track=True,
                          protocol=True, cookie=cookie)
        on_connect = json.loads(client.recv())
        client.send("what")
        on_message = json.loads(client.recv())
        client.send("write")
    elif transport == "long-polling":
        client = PollClient(base, "/rooms/a?x=1", http=http)
        on_connect = json.loads(client.poll()[0])
        client.post("what")  # the POST's own request is another: receive still sees the first
        on_message = json.loads(client.poll()[0])
        client.post("write")
    else:
        client = StreamClient(base, "/rooms/a", transport, http=http, extra={"x": "1"})
        on_connect = json.loads(client.next())
        client.post("what")
        on_message = json.loads(client.next())
        client.post("write")
    assert on_connect == on_message == expected(server)
    # The session is read-only there: a write is an error for the app to see.
    recorder.wait_for(lambda items: any(isinstance(e, Error) for _, e in items))
    [error] = [e for _, e in recorder.items if isinstance(e, Error)]
    assert isinstance(error.error, TypeError) and "read-only" in str(error.error)


@pytest.mark.parametrize("transport", ["websocket", "long-polling", "sse"])
def test_connected_runs_in_the_opening_request_with_the_session_read_only(live, recorder,
                                                                          transport):
    """``Connected`` runs while the opening request is served, in its own
    context: what ``before_connect`` put in ``flask.g`` is there, and the
    session is as read-only as for any event (and stays the request's own
    after it)."""
    app = Flask(__name__)
    app.secret_key = "test"
    atmosphere = Atmosphere(app)

    @atmosphere.before_connect
    def who():
        g.user = request.args.get("user")

    @atmosphere.route("/hello")
    class Hello(AtmosphereClient):
        def receive(self, event):
            if isinstance(event, Connected):
                try:
                    session["user"] = "mallory"
                    wrote = "wrote"
                except TypeError:
                    wrote = "read-only"
                self.send({"user": g.get("user"), "session": wrote})

    server = live(app)
    base = f"http://127.0.0.1:{server.port}"
    if transport == "websocket":
        client = WSClient(server.url("/hello", user="ada", **ATMOSPHERE_PARAMS), track=True,
                          protocol=True)
        said = json.loads(client.recv())
    elif transport == "long-polling":
        said = json.loads(PollClient(base, "/hello?user=ada").poll()[0])
    else:
        said = json.loads(StreamClient(base, "/hello", transport, extra={"user": "ada"}).next())
    assert said == {"user": "ada", "session": "read-only"}


def raising_app(recorder):
    app = Flask(__name__)
    atmosphere = Atmosphere(app)

    @atmosphere.route("/raise")
    class Raising(AtmosphereClient):
        def receive(self, event):
            recorder.add((self.uuid, event))
            match event:
                case TextMessage("timeout"):
                    with gevent.Timeout(0.01):
                        gevent.sleep(1)
                case TextMessage("exit"):
                    raise SystemExit(3)
                case TextMessage(text):
                    self.send(text)

    return app, atmosphere


@pytest.mark.parametrize("what, error", [("timeout", gevent.Timeout), ("exit", SystemExit)])
def test_a_base_exception_in_receive_closes_its_client_cleanly_and_nothing_else(
        live, recorder, what, error):
    app, atmosphere = raising_app(recorder)
    server = live(app)
    reported = []
    atmosphere.error_handler(lambda client, exc: reported.append(exc))
    bad = WSClient(server.url("/raise", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    bad.send(what)
    assert bad.recv_close() == (1011, "internal error")
    recorder.wait_for(lambda items: any(isinstance(e, Disconnected) for _, e in items))
    [*_, last] = events_of(recorder, bad.uuid)
    assert last == Disconnected(ServerDisconnected(), last.error) and isinstance(last.error, error)
    assert [type(e) for e in reported] == [error]
    assert server.call(lambda: atmosphere.registry.get(bad.uuid)) is None  # no zombie
    # The server and the other clients go on.
    good = WSClient(server.url("/raise", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    good.send("still here")
    assert good.recv() == "still here"


def test_broadcasting_to_what_url_for_writes_reaches_the_room(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    client, hello = connect(server, "/rooms/a%20b")
    assert hello["room"] == "a b"
    with app.test_request_context():
        path = url_for("rooms", room="a b")
    assert path == "/rooms/a%20b"
    atmosphere.broadcast(path, "to the room")
    assert client.recv() == "to the room"
    atmosphere.broadcast("/rooms/a b", "as request.path says it")
    assert client.recv() == "as request.path says it"


def test_a_lone_surrogate_in_a_clients_json_costs_nobody_their_messages(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    sender, _ = connect(server, "/chat")
    other, _ = connect(server, "/chat")
    sender.send('{"cmd": "broadcast", "to": "everyone", "msg": {"t": "\\ud83d!"}}')
    assert json.loads(other.recv()) == {"t": "\ufffd!"}
    assert json.loads(sender.recv()) == {"t": "\ufffd!"}
    sender.send('{"echo": "\\ud83d"}')  # its send() does not raise either
    assert json.loads(sender.recv()) == {"json": {"echo": "\ufffd"}}
    assert JsonMessage({"echo": "\ufffd"}) in events_of(recorder, sender.uuid)
