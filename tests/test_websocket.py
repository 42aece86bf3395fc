"""End to end over real WebSockets: the API and the lifecycle rules."""
from __future__ import annotations

import json
import threading

import pytest
import websocket
from flask import Blueprint, Flask, session

from conftest import ATMOSPHERE_PARAMS, WSClient
from flask_atmosphere import (Atmosphere, AtmosphereClient, ClientDisconnected, Connected,
                              Disconnected, Error, Everyone, JsonMessage, MessagesLost,
                              OnlySelf, Predicate,
                              ServerDisconnected, SkipSelf, TextMessage, TextWireFormat, Uuids,
                              client_filter)
from flask_atmosphere.broadcaster import Broadcast
from flask_atmosphere.mailbox import Outbound


@pytest.fixture(params=["atmosphere.run", "gevent-websocket"])
def live(request, live):
    """Every test here runs under both kinds of server: ``atmosphere.run``,
    where an idle WebSocket has no greenlet, and a plain gevent-websocket
    server (as under gunicorn), where the request's greenlet reads."""
    plain = request.param == "gevent-websocket"
    return lambda app: live(app, plain=plain)


def make_app(recorder, **config):
    """An app whose clients record every event and obey simple commands."""
    app = Flask(__name__)
    app.secret_key = "test"
    app.config.update(config)
    atmosphere = Atmosphere(app)

    class Recording(AtmosphereClient):
        def receive(self, event):
            recorder.add((self.uuid, event))
            match event:
                case Connected(takeover=takeover):
                    hello = {"hello": self.uuid, "room": self.request.view_args.get("room")}
                    self.send(hello | {"takeover": True} if takeover else hello)
                case JsonMessage({"cmd": "broadcast", "to": to, "msg": msg}):
                    if isinstance(to, dict):  # {"uuids": [...]}
                        target = Uuids(*to["uuids"])
                    else:
                        target = {"everyone": Everyone, "skipself": SkipSelf,
                                  "onlyself": OnlySelf,
                                  "other-admins": SkipSelf & Predicate(is_admin),
                                  "other-admins-by-name": SkipSelf & admins(role="admin")}[to]
                    self.broadcast(msg, to=target)
                case MessagesLost(count, _, reason):
                    self.send({"lost": count, "reason": reason})
                case JsonMessage({"cmd": "raise"}):
                    raise RuntimeError("boom")
                case JsonMessage({"cmd": "close", "code": code, "reason": reason}):
                    self.close(code, reason)
                case JsonMessage({"cmd": "whoami"}):
                    self.send({"args": dict(self.request.args), "session": dict(self.session),
                               "path": self.request.path, "remote": self.request.remote_addr})
                case JsonMessage(json):
                    self.send({"json": json})
                case TextMessage(text):
                    self.send(text)

    class Quiet(AtmosphereClient):
        """Records what it gets and answers nothing."""
        def receive(self, event):
            recorder.add((self.uuid, event))

    atmosphere.route("/quiet")(Quiet)
    atmosphere.route("/chat")(Recording)
    atmosphere.route("/chatroom", endpoint="chatroom")(Recording)
    atmosphere.route("/rooms/<room>", endpoint="rooms")(Recording)

    bp = Blueprint("buzz", __name__)
    atmosphere.route("/fizz", bp=bp, endpoint="fizz")(Recording)
    atmosphere.route("/bang", bp=bp, endpoint="bang")(Recording)
    app.register_blueprint(bp, url_prefix="/real-time-buzz")

    @app.route("/login")
    def login():
        session["user"] = "ada"
        return "ok"

    return app, atmosphere


def connect(server, path, **params):
    """A plain WebSocket client that read its greeting."""
    client = WSClient(server.url(path, **params))
    hello = json.loads(client.recv())
    client.uuid = hello["hello"]
    return client, hello


def events_of(recorder, uuid):
    return [event for who, event in recorder.items if who == uuid]


def test_event_order_and_send_in_connected(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    client, hello = connect(server, "/chat")
    # The send inside Connected reached the client: it was registered already.
    assert hello["hello"] == client.uuid
    client.send('{"n": 1}')
    client.send("two")
    assert client.recv_json() == {"json": {"n": 1}}
    assert client.recv() == "two"
    client.close()
    recorder.wait_for(lambda items: any(isinstance(e, Disconnected) for _, e in items))
    events = events_of(recorder, client.uuid)
    assert events == [Connected(), JsonMessage({"n": 1}), TextMessage("two"),
                      Disconnected(ClientDisconnected())]
    assert server.call(lambda: len(atmosphere.registry)) == 0


def test_two_connections_are_two_clients_even_with_one_session(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    a, _ = connect(server, "/chat")
    b, _ = connect(server, "/chat")
    assert a.uuid != b.uuid
    a.send(json.dumps({"cmd": "broadcast", "to": "skipself", "msg": "to b"}))
    assert b.recv() == "to b"


def test_client_filters(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    a, _ = connect(server, "/chat")
    b, _ = connect(server, "/chat")
    a.send(json.dumps({"cmd": "broadcast", "to": "everyone", "msg": "all"}))
    assert a.recv() == "all" and b.recv() == "all"
    a.send(json.dumps({"cmd": "broadcast", "to": "onlyself", "msg": "me"}))
    assert a.recv() == "me"
    a.send(json.dumps({"cmd": "broadcast", "to": "skipself", "msg": "others"}))
    assert b.recv() == "others"
    # b got neither "me" nor a's copy of "others"; a got no "others": the next
    # message each one reads is this marker.
    a.send("marker-a")
    assert a.recv() == "marker-a"
    b.send("marker-b")
    assert b.recv() == "marker-b"


def is_admin(client):
    return client.request.args.get("role") == "admin"


@client_filter("test-role")
def admins(client, role):
    """A filter by name: it crosses processes as data."""
    return client.request.args.get("role") == role


def test_app_defined_filters_compose(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    a, _ = connect(server, "/chat", role="admin")
    b, _ = connect(server, "/chat", role="admin")
    c, _ = connect(server, "/chat", role="guest")
    atmosphere.broadcast("/chat", "admins", to=is_admin)            # a bare predicate
    atmosphere.broadcast("/chat", "guests", to=~Predicate(is_admin))
    assert [a.recv(), b.recv(), c.recv()] == ["admins", "admins", "guests"]
    # From a client: the other admins only.
    a.send(json.dumps({"cmd": "broadcast", "to": "other-admins", "msg": "psst"}))
    assert b.recv() == "psst"
    for ws in (a, c):
        ws.send("marker")
        assert ws.recv() == "marker"


def test_server_broadcast_reaches_prefixes_by_whole_segments(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    chat, _ = connect(server, "/chat")
    chatroom, _ = connect(server, "/chatroom")
    blue, hello = connect(server, "/rooms/blue")
    assert hello["room"] == "blue"
    red, _ = connect(server, "/rooms/red")

    atmosphere.broadcast("/chat", "for /chat")          # not /chatroom
    atmosphere.broadcast("/rooms", "for every room")
    atmosphere.broadcast("/rooms/blue", "for blue")
    atmosphere.broadcast_all("for all")
    assert [chat.recv(), chat.recv()] == ["for /chat", "for all"]
    assert chatroom.recv() == "for all"
    assert [blue.recv(), blue.recv(), blue.recv()] == ["for every room", "for blue", "for all"]
    assert [red.recv(), red.recv()] == ["for every room", "for all"]


def test_route_variables_make_one_broadcaster_per_value(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    blue1, _ = connect(server, "/rooms/blue")
    blue2, _ = connect(server, "/rooms/blue")
    red, _ = connect(server, "/rooms/red")
    blue1.send(json.dumps({"cmd": "broadcast", "to": "skipself", "msg": "blue only"}))
    assert blue2.recv() == "blue only"
    red.send("marker")
    assert red.recv() == "marker"


def test_blueprint_prefix_reaches_all_its_routes(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    fizz, _ = connect(server, "/real-time-buzz/fizz")
    bang, _ = connect(server, "/real-time-buzz/bang")
    chat, _ = connect(server, "/chat")
    atmosphere.broadcast("/real-time-buzz/fizz", "fizz only")
    atmosphere.broadcast("/real-time-buzz", "the blueprint")
    assert [fizz.recv(), fizz.recv()] == ["fizz only", "the blueprint"]
    assert bang.recv() == "the blueprint"
    chat.send("marker")
    assert chat.recv() == "marker"


def test_broadcast_from_another_thread(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    client, _ = connect(server, "/chat")
    thread = threading.Thread(target=atmosphere.broadcast, args=("/chat", {"from": "thread"}))
    thread.start()
    thread.join()
    assert client.recv_json() == {"from": "thread"}


def test_json_and_text_detection(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    client, _ = connect(server, "/chat")
    for text in ['{"a": 1}', "[1, 2]", '"a json string"', "42", "{not json", "plain"]:
        client.send(text)
        client.recv()
    client.close()
    recorder.wait_for(lambda items: any(isinstance(e, Disconnected) for _, e in items))
    received = [e for e in events_of(recorder, client.uuid) if isinstance(e, (JsonMessage, TextMessage))]
    assert received == [JsonMessage({"a": 1}), JsonMessage([1, 2]), TextMessage('"a json string"'),
                        TextMessage("42"), TextMessage("{not json"), TextMessage("plain")]


@pytest.mark.parametrize("track", [False, True])
def test_unicode_round_trip(live, recorder, track):
    app, _ = make_app(recorder)
    server = live(app)
    params = dict(ATMOSPHERE_PARAMS, **{"X-Atmosphere-TrackMessageSize": str(track).lower()})
    client = WSClient(server.url("/chat", **params), track=track, protocol=True)
    client.recv()  # the greeting
    text = "emoji 😀👍🏽, CJK 漢字かな, line separator \u2028 and \u2029, é€"
    client.send(text)
    assert client.recv() == text
    client.send(json.dumps({"t": text}))
    assert client.recv_json() == {"json": {"t": text}}


def test_an_error_in_receive_becomes_an_error_event_and_the_connection_stays(live, recorder):
    app, atmosphere = make_app(recorder)
    handled = []
    atmosphere.error_handler(lambda client, exc: handled.append((client.uuid, str(exc))))
    server = live(app)
    client, _ = connect(server, "/chat")
    other, _ = connect(server, "/chat")
    client.send('{"cmd": "raise"}')
    client.send("still here")
    assert client.recv() == "still here"
    errors = [e for e in events_of(recorder, client.uuid) if isinstance(e, Error)]
    assert len(errors) == 1 and str(errors[0].error) == "boom"
    assert handled == [(client.uuid, "boom")]
    other.send("unaffected")
    assert other.recv() == "unaffected"


def test_request_and_session_as_of_connect(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    http = app.test_client()
    http.get("/login")
    cookie = http.get_cookie("session").value
    client = WSClient(server.url("/chat", topic="news", **ATMOSPHERE_PARAMS), track=True,
                      protocol=True, cookie=f"session={cookie}")
    client.recv()  # greeting
    client.send('{"cmd": "whoami"}')
    info = client.recv_json()
    assert info["args"] == {"topic": "news"}  # the protocol's own parameters are not the app's
    assert info["session"] == {"user": "ada"}
    assert info["path"] == "/chat" and info["remote"] == "127.0.0.1"


def test_close_from_the_server_with_code_and_reason(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    client, _ = connect(server, "/chat")
    client.send(json.dumps({"cmd": "close", "code": 4001, "reason": "bye now"}))
    assert client.recv_close() == (4001, "bye now")
    recorder.wait_for(lambda items: (client.uuid, Disconnected(ServerDisconnected())) in items)


def test_atmosphere_handshake_framing_and_heartbeats(live, recorder):
    app, _ = make_app(recorder, ATMOSPHERE_HEARTBEAT_INTERVAL=1)
    server = live(app)
    client = WSClient(server.url("/chat", **ATMOSPHERE_PARAMS), track=True)
    opcode, data = client.ws.recv_data()
    uuid = data.decode().split("|")[1]
    assert data.decode() == f"41|{uuid}|0|X|"
    assert json.loads(client.recv())["hello"] == uuid
    assert client.recv(skip_heartbeats=False) == "X"  # a framed heartbeat, "1|X"


def test_a_plain_client_gets_pings_not_heartbeat_text(live, recorder):
    app, _ = make_app(recorder, ATMOSPHERE_HEARTBEAT_INTERVAL=1)
    server = live(app)
    client, _ = connect(server, "/chat")
    frame = client.ws.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_PING


def test_reconnect_with_a_tracking_id_keeps_the_uuid(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    first = WSClient(server.url("/chat", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    first.close()
    recorder.wait_for(lambda items: (first.uuid, Disconnected(ClientDisconnected())) in items)
    params = dict(ATMOSPHERE_PARAMS, **{"X-Atmosphere-tracking-id": first.uuid})
    again = WSClient(server.url("/chat", **params), track=True, protocol=True)  # 5.x: handshake again
    assert again.uuid == first.uuid


def test_an_unknown_tracking_id_is_adopted_not_refused(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    params = dict(ATMOSPHERE_PARAMS, **{"X-Atmosphere-tracking-id": "never-seen-1"})
    client = WSClient(server.url("/chat", **params), track=True, protocol=True)
    assert client.uuid == "never-seen-1"


def test_text_wire_format_refuses_to_send_json(live, recorder):
    app = Flask(__name__)
    atmosphere = Atmosphere(app)
    sent = []

    @atmosphere.route("/text", wire_format=TextWireFormat())
    class Texty(AtmosphereClient):
        def receive(self, event):
            recorder.add(event)
            if isinstance(event, TextMessage):
                try:
                    self.send({"a": 1})
                except TypeError as exc:
                    sent.append(str(exc))
                self.send(event.text.upper())

    server = live(app)
    client = WSClient(server.url("/text"))
    client.send('{"a": 1}')
    assert client.recv() == '{"A": 1}'
    assert recorder.items[1] == TextMessage('{"a": 1}')  # no JSON on a text route
    assert "only str" in sent[0]


def test_a_full_mailbox_disconnects_only_the_slow_client(live, recorder):
    app, atmosphere = make_app(recorder, ATMOSPHERE_MAILBOX_MAX_MESSAGES=5)
    server = live(app)
    client, _ = connect(server, "/chat")
    other, _ = connect(server, "/rooms/other")
    uuid = client.uuid

    def flood():
        connection = atmosphere.registry.get(uuid)
        # As if its writer were stuck in a write: everything queues. With no
        # switch to the writer in between, 5 fit and the 6th overflows.
        connection.mailbox.in_flight = True
        connection.direct = None
        for i in range(10):
            atmosphere.broadcaster.deliver(Broadcast("/chat", f"m{i}", Everyone))
        atmosphere.broadcaster.flush()
        return connection.mailbox.close_request

    request = server.call(flood)
    assert request.code == 1008
    assert client.recv_close() == (1008, "slow consumer")
    atmosphere.broadcast("/rooms/other", "unaffected")
    assert other.recv() == "unaffected"
    recorder.wait_for(lambda items: any(who == uuid and isinstance(e, Disconnected) for who, e in items))
    disconnected = [e for e in events_of(recorder, uuid) if isinstance(e, Disconnected)]
    assert disconnected[0].by == ServerDisconnected() and "mailbox full" in str(disconnected[0].error)


def test_a_finished_client_gets_nothing_more_written_to_its_socket(live, recorder):
    # atmosphere.js's close request (X-Atmosphere-Transport=close) finishes a
    # client whose WebSocket may still be open for a moment: what is pushed to
    # it after that is dropped, not written.
    app, atmosphere = make_app(recorder)
    server = live(app)
    client, _ = connect(server, "/chat")

    def finish_then_push():
        connection = atmosphere.registry.get(client.uuid)
        connection.finish()
        connection.push(Outbound("late"))
        connection.carrier.abort()  # the client sees the end next

    server.call(finish_then_push)
    with pytest.raises((ConnectionError, websocket.WebSocketException, OSError)):
        client.recv()


def test_shutdown_tells_every_client_and_closes_with_1001(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    a, _ = connect(server, "/chat")
    b, _ = connect(server, "/rooms/x")
    result = []
    stopper = threading.Thread(target=lambda: result.append(server.call(atmosphere.shutdown, 5)))
    stopper.start()
    assert a.recv_close()[0] == 1001 and b.recv_close()[0] == 1001
    stopper.join()
    assert result == [True]
    for uuid in (a.uuid, b.uuid):
        assert events_of(recorder, uuid)[-1] == Disconnected(ServerDisconnected())
    assert server.call(lambda: len(atmosphere.registry)) == 0


def test_shutdown_does_not_wait_forever_for_a_peer_that_never_answers(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    silent, _ = connect(server, "/chat")  # never reads again
    assert server.call(atmosphere.shutdown, 0.2) is True
    assert events_of(recorder, silent.uuid)[-1] == Disconnected(ServerDisconnected())


@pytest.mark.parametrize("code", [1005, 1006, 1015, 999, 5000])
def test_codes_that_must_not_be_sent_are_refused(live, recorder, code):
    app, _ = make_app(recorder)
    server = live(app)
    client, _ = connect(server, "/chat")
    client.send(json.dumps({"cmd": "close", "code": code, "reason": ""}))
    client.send("still open")
    assert client.recv() == "still open"
    [error] = [e for e in events_of(recorder, client.uuid) if isinstance(e, Error)]
    assert isinstance(error.error, ValueError)
