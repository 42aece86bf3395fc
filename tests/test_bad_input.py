"""Bad input is answered per the protocol, logged once, and hurts nobody else."""
import logging
import socket

import pytest
import requests
from websocket import ABNF

from conftest import TIMEOUT, WSClient
from http_clients import PollClient
from test_websocket import connect, events_of, live, make_app  # noqa: F401 (live: both servers)
from flask_atmosphere import Disconnected, ServerDisconnected, TextMessage


def send_raw(client: WSClient, payload: bytes, opcode=ABNF.OPCODE_TEXT, rsv1=0):
    frame = ABNF(fin=1, rsv1=rsv1, opcode=opcode, data=payload)
    client.ws.sock.sendall(frame.format())




@pytest.mark.parametrize("payload, rsv1, code, reason", [
    (b"caf\xc3", 0, 1007, "invalid UTF-8"),
    (b"\xff\xfe", 0, 1007, "invalid UTF-8"),
    (b"hello", 1, 1002, "protocol error"),   # a reserved bit without an extension
])
def test_a_bad_frame_closes_only_its_connection(live, recorder, caplog, payload, rsv1, code, reason):
    app, _ = make_app(recorder)
    server = live(app)
    bad, _ = connect(server, "/chat")
    good, _ = connect(server, "/chat")
    with caplog.at_level(logging.WARNING, logger="flask_atmosphere"):
        send_raw(bad, payload, rsv1=rsv1)
        assert bad.recv_close() == (code, reason)
        recorder.wait_for(lambda items: any(w == bad.uuid and isinstance(e, Disconnected) for w, e in items))
    [disconnected] = [e for e in events_of(recorder, bad.uuid) if isinstance(e, Disconnected)]
    assert disconnected.by == ServerDisconnected() and disconnected.error is not None
    assert len([r for r in caplog.records if bad.uuid in r.getMessage()]) == 1  # logged once
    good.send("still fine")
    assert good.recv() == "still fine"


def test_an_oversize_message_closes_with_1009_and_the_limit_is_configurable(live, recorder):
    app, _ = make_app(recorder, ATMOSPHERE_MAX_MESSAGE_SIZE=1000)
    server = live(app)
    client, _ = connect(server, "/chat")
    other, _ = connect(server, "/chat")
    client.send("x" * 1000)  # at the limit: fine
    assert client.recv() == "x" * 1000
    client.send("x" * 1001)
    assert client.recv_close() == (1009, "message too big")
    other.send("unaffected")
    assert other.recv() == "unaffected"


def test_an_oversize_fragmented_message_is_refused_too(live, recorder):
    app, _ = make_app(recorder, ATMOSPHERE_MAX_MESSAGE_SIZE=1000)
    server = live(app)
    client, _ = connect(server, "/chat")
    for i in range(3):  # three fragments of 400 bytes: each fits, together they do not
        opcode = ABNF.OPCODE_TEXT if i == 0 else ABNF.OPCODE_CONT
        frame = ABNF(fin=int(i == 2), opcode=opcode, data="y" * 400)
        client.ws.sock.sendall(frame.format())
    assert client.recv_close() == (1009, "message too big")


def test_a_peer_close_code_is_echoed(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    client, _ = connect(server, "/chat")
    client.ws.send_close(4321, b"going")
    frame = client.ws.recv_frame()
    assert frame.opcode == ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 4321


def test_a_post_that_says_connection_upgrade_is_read_to_its_length_only(live, recorder):
    # nginx's usual WebSocket recipe sends "Connection: upgrade" on every request.
    app, _ = make_app(recorder)
    server = live(app)
    client = PollClient(f"http://127.0.0.1:{server.port}", "/chat")
    client.poll()  # its greeting
    query = requests.compat.urlencode(client.query())
    cookie = "; ".join(f"{k}={v}" for k, v in client.http.cookies.items())
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.sendall(f"POST /chat?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: upgrade\r\n"
                 f"Cookie: {cookie}\r\nContent-Length: 2\r\n\r\nhi".encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")  # at once, not when a proxy gives up
    assert client.poll() == ["hi"]  # delivered once
    assert [e for e in events_of(recorder, client.uuid) if isinstance(e, TextMessage)] == \
        [TextMessage("hi")]
