"""``AtmosphereHandler`` (server.py) on its own: a response goes out in as
few sends as its shape allows, byte for byte as pywsgi writes it."""
from __future__ import annotations

import gc
import logging
import re
import weakref

import gevent
import pytest
from flask import Flask
from gevent import socket
from gevent.pywsgi import WSGIHandler

from conftest import TIMEOUT

from flask_atmosphere import Atmosphere, AtmosphereClient
from flask_atmosphere.server import AtmosphereHandler, AtmosphereServer, access_log

class RecordingSocket(socket.socket):
    """A gevent socket that records what each ``sendall`` sends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[bytes] = []

    def sendall(self, data, flags=0):
        self.sent.append(bytes(data))
        return super().sendall(data, flags)


@pytest.fixture
def handled():
    """``(server, atmosphere, start)``: ``start(handler_class)`` serves one
    connection of a socketpair with ``handler_class`` on this thread's hub
    and returns ``(client socket, server-side RecordingSocket)``."""
    app = Flask(__name__)
    atmosphere = Atmosphere(app)

    @atmosphere.route("/poll")
    class Quiet(AtmosphereClient):
        def receive(self, event):
            pass

    @app.route("/plain")
    def plain():
        return "hello"

    server = AtmosphereServer(app, "127.0.0.1", 0)
    server.start()
    greenlets = []

    def start(handler_class=AtmosphereHandler):
        ours, theirs = socket.socketpair()
        recording = RecordingSocket(ours.family, ours.type, 0, ours.detach())
        handler = handler_class(recording, ("127.0.0.1", 4242), server.wsgi)
        greenlets.append(gevent.spawn(handler.handle))
        return theirs, recording
    yield server, atmosphere, start
    for greenlet in greenlets:
        greenlet.kill()
    server.stop(1)


def read_response(sock, buffer: bytearray) -> bytes:
    """One whole response (Content-Length or chunked) from ``sock``."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end]).lower()
            if b"content-length: " in head:
                length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(buffer) >= end + 4 + length:
                    response = bytes(buffer[:end + 4 + length])
                    del buffer[:end + 4 + length]
                    return response
            else:
                last = buffer.find(b"\r\n0\r\n\r\n", end)
                if last >= 0:
                    response = bytes(buffer[:last + 7])
                    del buffer[:last + 7]
                    return response
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        buffer += data


QUERY = ("/poll?X-Atmosphere-Transport=long-polling&X-Atmosphere-Framework=5.0.7"
         "&X-atmo-protocol=true&X-Atmosphere-TrackMessageSize=true")


def get(path: str, cookie: str | None = None) -> bytes:
    header = f"Cookie: {cookie}\r\n" if cookie else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n".encode()


def without_date(response: bytes) -> bytes:
    return b"\r\n".join(line for line in response.split(b"\r\n") if not line.startswith(b"Date: "))


def test_a_small_answer_is_one_send_with_the_bytes_of_pywsgi(handled):
    server, atmosphere, start = handled
    answers = []
    for handler_class in (AtmosphereHandler, WebSocketHandlerOnly):
        client, recording = start(handler_class)
        client.sendall(get("/plain"))
        answers.append(read_response(client, bytearray()))
        if handler_class is AtmosphereHandler:
            assert recording.sent == [answers[0]]
        else:
            assert len(recording.sent) == 2  # pywsgi's own: headers, then body
    assert without_date(answers[0]) == without_date(answers[1])
    assert answers[0].endswith(b"\r\n\r\nhello")


class WebSocketHandlerOnly(AtmosphereHandler):
    """``AtmosphereHandler`` with pywsgi's own writes and header parse."""
    _write_with_headers = WSGIHandler._write_with_headers
    MessageClass = WSGIHandler.MessageClass
    _headers = WSGIHandler._headers

    def get_environ(self):
        environ = super().get_environ()
        del environ["flask_atmosphere.write_final"]
        return environ


def poll_client(start, handler_class=AtmosphereHandler):
    client, recording = start(handler_class)
    buffer = bytearray()
    client.sendall(get(QUERY + "&X-Atmosphere-tracking-id=0"))
    head, body = read_response(client, buffer).split(b"\r\n\r\n", 1)
    uuid = body.decode().split("|")[1]
    cookie = re.search(rb"Set-Cookie: ([^;]+);", head).group(1).decode()  # the resume key
    return client, recording, buffer, get(QUERY + "&X-Atmosphere-tracking-id=" + uuid, cookie)


@pytest.mark.parametrize("rounds", [3])  # the first poll goes through Flask, the next lean
def test_a_queued_answer_is_one_send(handled, rounds):
    server, atmosphere, start = handled
    client, recording, buffer, poll = poll_client(start)
    for i in range(rounds):
        atmosphere.broadcast("/poll", f"m{i}")
        gevent.sleep(0)  # the hub fans the broadcast out
        del recording.sent[:]
        client.sendall(poll)
        answer = read_response(client, buffer)
        assert answer.endswith(b"\r\n\r\n%d|m%d" % (len(f"m{i}"), i))
        assert recording.sent == [answer]


def test_a_held_answer_goes_with_its_last_chunk_in_one_send(handled):
    server, atmosphere, start = handled
    answers = []
    for handler_class in (AtmosphereHandler, WebSocketHandlerOnly):
        client, recording, buffer, poll = poll_client(start, handler_class)
        # The first poll after the handshake: its headers at once (the
        # client's open fires on them), the answer later.
        del recording.sent[:]
        client.sendall(poll)
        while not recording.sent:  # the headers, at once
            gevent.sleep(0.001)
        atmosphere.broadcast("/poll", "late")
        answer = read_response(client, buffer)
        assert b"Transfer-Encoding: chunked" in answer
        assert answer.endswith(b"\r\n\r\n6\r\n4|late\r\n0\r\n\r\n")
        if handler_class is AtmosphereHandler:
            assert recording.sent == [answer[:len(recording.sent[0])],
                                      b"6\r\n4|late\r\n0\r\n\r\n"]
        else:
            assert len(recording.sent) == 3
        answers.append(without_date(answer))
    assert answers[0] == answers[1]


def test_a_later_held_poll_is_answered_in_one_send(handled):
    server, atmosphere, start = handled
    client, recording, buffer, poll = poll_client(start)
    connection = next(iter(atmosphere.registry.at("/poll")))
    carrier = None
    for i in range(3):
        client.sendall(poll)
        while connection.carrier in (None, carrier):  # this poll is held
            gevent.sleep(0.001)
        carrier = connection.carrier
        del recording.sent[:]
        atmosphere.broadcast("/poll", f"m{i}")
        answer = read_response(client, buffer)
        if i > 0:  # the client's open fired on the headers of its first poll
            assert answer.endswith(b"Content-Length: 4\r\n\r\n2|m%d" % i)
            assert recording.sent == [answer]


def test_the_access_log_is_formatted_only_when_it_is_logged(handled, monkeypatch, caplog):
    server, atmosphere, start = handled
    formatted = []
    monkeypatch.setattr(AtmosphereHandler, "format_request",
                        lambda self: formatted.append(self) or "the line")
    handler = AtmosphereHandler(socket.socket(), ("127.0.0.1", 4242), server.wsgi)
    handler.status = b"200 OK"
    with caplog.at_level(logging.INFO, logger=access_log.name):  # access lines are DEBUG
        handler.log_request()
    assert formatted == []
    with caplog.at_level(logging.DEBUG, logger=access_log.name):
        handler.log_request()
    assert formatted == [handler]
    assert [r.getMessage() for r in caplog.records if r.name == access_log.name] == ["the line"]


def test_the_access_log_shows_no_tracking_id(handled):
    server, atmosphere, start = handled
    handler = AtmosphereHandler(socket.socket(), ("127.0.0.1", 4242), server.wsgi)
    handler.status, handler._orig_status = b"200 OK", "200 OK"
    handler.time_finish = 0
    handler.requestline = ("GET /chat?X-Atmosphere-Transport=long-polling&"
                           "X-Atmosphere-tracking-id=c0ffee00-1111&x=1 HTTP/1.1")
    line = handler.format_request()
    assert "c0ffee00" not in line
    assert "X-Atmosphere-tracking-id=[redacted]&x=1" in line


@pytest.mark.parametrize("path", ["/plain", QUERY + "&X-Atmosphere-tracking-id=0"])
def test_a_request_that_asks_to_close_is_answered_close_and_closed(handled, path):
    """RFC 9112 §9.6: the answer says ``Connection: close``, so that a
    client that pools connections does not send its next request on it."""
    _, _, start = handled
    client, _ = start()
    client.sendall(get(path).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    buffer = bytearray()
    head = read_response(client, buffer).split(b"\r\n\r\n")[0]
    assert b"\r\nConnection: close" in head
    assert client.recv(1) == b""  # and it closes
    client, _ = start()
    client.sendall(get(path))  # a request that does not ask: kept alive, nothing said
    assert b"Connection:" not in read_response(client, bytearray())


@pytest.mark.parametrize("request_bytes", [
    get("/plain"),
    get(QUERY),
    ("GET /poll HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode(),
], ids=["plain", "long-poll", "websocket"])
def test_a_served_request_leaves_nothing_to_the_cyclic_collector(handled, request_bytes):
    # The handler and what it read are freed by reference counting as soon as
    # it is done: a connect storm of parked WebSockets leaves the garbage
    # collector nothing to find.
    server, atmosphere, _ = handled
    ours, theirs = socket.socketpair()
    handler = AtmosphereHandler(ours, ("127.0.0.1", 4242), server.wsgi)
    freed = weakref.ref(handler)
    gc.disable()
    try:
        greenlet = gevent.spawn(handler.handle)
        del handler
        theirs.sendall(request_bytes)
        assert theirs.recv(65536).startswith(b"HTTP/1.1 ")
        theirs.shutdown(socket.SHUT_WR)  # no further request on this connection
        greenlet.join(TIMEOUT)
        assert greenlet.dead
        del greenlet
        assert freed() is None
    finally:
        gc.enable()
        theirs.close()
