"""A client the app closes stays closed, and gets nothing it was not meant
to; a WebSocket's closing handshake ends with the server's FIN (RFC 6455
§7.1.1), whoever began it."""
from __future__ import annotations

import json
import socket

import pytest
import requests
import websocket
from flask import Flask

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from http_clients import PollClient, params
from test_websocket import events_of, live, make_app  # noqa: F401 (live: both servers)
from flask_atmosphere import (Atmosphere, AtmosphereClient, Connected, Disconnected,
                              JsonMessage, ServerDisconnected)


def kicking_app(recorder):
    """Its clients are refused in Connected, while broadcasts to them and a
    ``send`` are under way: none of that may reach them."""
    app = Flask(__name__)
    atmosphere = Atmosphere(app)

    @atmosphere.route("/kick")
    class Kicked(AtmosphereClient):
        def receive(self, event):
            recorder.add((self.uuid, event))
            if isinstance(event, Connected):
                for i in range(9):
                    atmosphere.broadcast("/kick", f"private {i}")
                self.send("welcome")
                self.close(4001, "banned")

    return app, atmosphere


def test_a_close_in_connected_refuses_the_websocket_with_nothing_delivered(live, recorder):
    app, atmosphere = kicking_app(recorder)
    server = live(app)
    if server.plain:  # gevent-websocket upgraded before the app ran
        client = WSClient(server.url("/kick", **ATMOSPHERE_PARAMS), track=True)
        frame = client.ws.recv_frame()  # the first frame: no handshake, no message
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
        assert (int.from_bytes(frame.data[:2], "big"), frame.data[2:]) == (4001, b"banned")
    else:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(server.url("/kick", **ATMOSPHERE_PARAMS), timeout=TIMEOUT)
        assert info.value.status_code == 410
    recorder.wait_for(lambda items: any(isinstance(e, Disconnected) for _, e in items))
    assert [e for _, e in recorder.items] == [Connected(), Disconnected(ServerDisconnected())]


@pytest.mark.parametrize("transport", ["long-polling", "streaming", "sse"])
def test_a_close_in_connected_refuses_an_http_client_with_410(live, recorder, transport):
    app, atmosphere = kicking_app(recorder)
    server = live(app)
    response = requests.get(f"http://127.0.0.1:{server.port}/kick", params=params(transport),
                            timeout=TIMEOUT)
    assert response.status_code == 410
    assert response.headers["X-Atmosphere-error"] == "banned"
    assert "private" not in response.text and "welcome" not in response.text
    assert server.call(lambda: len(atmosphere.registry)) == 0


def test_a_closed_websocket_client_stays_closed(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    client = WSClient(server.url("/chat", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    client.recv()  # its greeting
    client.send(json.dumps({"cmd": "close", "code": 4001, "reason": "banned"}))
    assert client.recv_close() == (4001, "banned")
    query = ATMOSPHERE_PARAMS | {"X-Atmosphere-tracking-id": client.uuid}
    if server.plain:
        again = WSClient(server.url("/chat", **query), track=True, cookie=client.cookie)
        assert again.recv_close() == (4001, "banned")
    else:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(server.url("/chat", **query), timeout=TIMEOUT,
                                        cookie=client.cookie)
        assert info.value.status_code == 410
    assert [e for e in events_of(recorder, client.uuid) if isinstance(e, Connected)] == [Connected()]


def test_a_closed_long_polling_client_is_told_and_stays_closed(live, recorder):
    app, atmosphere = make_app(recorder)
    server = live(app)
    client = PollClient(f"http://127.0.0.1:{server.port}", "/chat")
    client.poll()  # its greeting
    close = {"cmd": "close", "code": 4001, "reason": "banned"}
    client.post(json.dumps(close))
    for _ in range(3):  # a client that polls on, at once, as the bundled one did
        response = client.http.get(client.url, params=client.query(), timeout=TIMEOUT)
        assert response.status_code == 410 and response.headers["X-Atmosphere-error"] == "banned"
    assert events_of(recorder, client.uuid) == [Connected(), JsonMessage(close),
                                                Disconnected(ServerDisconnected())]


# -- the FIN ----------------------------------------------------------------------

def fin_arrives(client: WSClient) -> bool:
    """Whether the server closed the TCP connection (the FIN: recv gives b"")."""
    client.ws.sock.settimeout(TIMEOUT)
    try:
        return client.ws.sock.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return False


def test_the_server_closes_tcp_after_a_close_the_client_began(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    client = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    client.ws.send_close(1000)
    frame = client.ws.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert fin_arrives(client)


def test_the_server_closes_tcp_after_a_close_it_began(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    client = WSClient(server.url("/chat", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    client.recv()
    client.send(json.dumps({"cmd": "close", "code": 1000, "reason": "bye"}))
    assert client.recv_close() == (1000, "bye")  # answered as a browser does
    assert fin_arrives(client)
