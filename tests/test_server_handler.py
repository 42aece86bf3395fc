"""``AtmosphereHandler`` (server.py) on its own: the request header parse
that spares the ``email`` parser reads exactly what pywsgi's reads, and a
response goes out in as few sends as its shape allows, byte for byte as
pywsgi writes it."""
from __future__ import annotations

import http.client
import io
import logging

import gevent
import pytest
from flask import Flask
from gevent import socket
from gevent.pywsgi import WSGIHandler, headers_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_atmosphere import Atmosphere, AtmosphereClient
from flask_atmosphere.server import AtmosphereHandler, AtmosphereServer, parse_request_headers

TYPICAL = (b"Host: 127.0.0.1:8080\r\nUser-Agent: Python/3.11 aiohttp/3.14.5\r\nAccept: */*\r\n"
           b"Accept-Encoding: gzip, deflate\r\nContent-Type: application/json\r\n\r\n")

BLOCKS = [
    TYPICAL,
    b"\r\n",
    b"\n",
    b"",                                                  # EOF at once
    b"Host: a\r\n",                                       # EOF before the empty line
    b"Host: a\nAccept: b\n\n",                            # bare LF
    b"Host: a\r\nAccept: b\n\r\n",
    b"Host:a\r\nX-Empty:\r\nX-Blank:   \r\nX-Tab:\t v \t\r\n\r\n",
    b"X-Long: a\r\n  continued\r\n\tagain\r\nHost: h\r\n\r\n",   # obsolete line folding
    b" leading: space\r\nHost: h\r\n\r\n",                # continuation first
    b"Host: a\rb\r\n\r\n",                                # a bare CR inside
    b"Host: a\r\r\n\r\n",
    b"Bad Name: x\r\nHost: h\r\n\r\n",                    # a space in the name: body starts
    b": no name\r\nHost: h\r\n\r\n",
    b"From someone\r\nHost: h\r\n\r\n",                   # unix-from
    b"Host: h\r\nFrom x\r\n\r\n",
    b"From: me@example.com\r\n\r\n",
    b"no colon at all\r\n\r\n",
    b"X_Under_Score: 1\r\nX-Dash: 2\r\n\r\n",
    b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n",
    b"content-type: Message/rfc822\r\n\r\n",
    b"Content-Type: text/plain\r\nContent-Type: multipart/mixed\r\n\r\n",
    b"Cookie: a=1\r\nCookie: b=2\r\nAccept: x\r\nAccept: y\r\n\r\n",
    b"X-Latin: caf\xe9 \xff\r\nX-Ctl: a\x00b\x0bc\x1cd\x85\r\n\r\n",
    b"X-Ends: value \r\n\r\n",
    b"Host: a\r\n\r\nGET /next HTTP/1.1\r\n",             # a pipelined request after
    b"Content-Length: 3\r\n\r\nabc",
    b"X-Big: " + b"v" * 70000 + b"\r\n\r\n",              # over http.client's line limit
    b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n",
]


def normalised(message) -> dict:
    state = dict(vars(message))
    state["defects"] = [(type(d), str(d)) for d in state["defects"]]
    if isinstance(state["_payload"], list):  # a multipart or message/* body
        state["_payload"] = [normalised(part) for part in state["_payload"]]
    return state


def same_parse(block: bytes) -> None:
    ours, theirs = io.BytesIO(block), io.BytesIO(block)
    try:
        expected = headers_factory(theirs)
    except http.client.HTTPException as exc:
        with pytest.raises(type(exc)):
            parse_request_headers(ours)
        return
    got = parse_request_headers(ours)
    assert normalised(got) == normalised(expected)
    assert ours.read() == theirs.read()  # the same lines consumed
    # The environ's HTTP_* items, as pywsgi makes them from the same message.
    handler = AtmosphereHandler.__new__(AtmosphereHandler)
    handler.headers = got
    plain = WSGIHandler.__new__(WSGIHandler)
    plain.headers = expected
    assert list(handler._headers()) == list(plain._headers())


@pytest.mark.parametrize("block", BLOCKS)
def test_headers_are_parsed_as_pywsgi_parses_them(block):
    same_parse(block)


def test_too_many_headers_are_refused_as_pywsgi_refuses_them():
    same_parse(b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n")


_LINE = st.one_of(
    st.sampled_from([b"Host: h", b"Content-Type: text/plain", b"Content-Type: multipart/x",
                     b" folded", b"\tfolded", b"From x", b": x", b"X_Y: 1", b"A B: c", b"",
                     b"Cookie: c=1"]),
    st.builds(lambda name, value: name + b":" + value,
              st.binary(min_size=0, max_size=6), st.binary(max_size=12)),
    st.binary(max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_LINE, st.sampled_from([b"\r\n", b"\n", b"\r", b""])), max_size=8),
       st.sampled_from([b"\r\n", b"\n", b""]))
def test_any_header_block_is_parsed_as_pywsgi_parses_it(lines, end):
    same_parse(b"".join(line + eol for line, eol in lines) + end)


# -- sends ---------------------------------------------------------------------------


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


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


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
    uuid = read_response(client, buffer).split(b"\r\n\r\n", 1)[1].decode().split("|")[1]
    return client, recording, buffer, get(QUERY + "&X-Atmosphere-tracking-id=" + uuid)


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
        for i in range(2):  # through Flask, then lean
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
    assert answers[:2] == answers[2:]


def test_the_access_log_is_formatted_only_when_it_is_logged(handled, monkeypatch, caplog):
    server, atmosphere, start = handled
    formatted = []
    monkeypatch.setattr(AtmosphereHandler, "format_request",
                        lambda self: formatted.append(self) or "the line")
    handler = AtmosphereHandler(socket.socket(), ("127.0.0.1", 4242), server.wsgi)
    handler.status = b"200 OK"
    logger = handler.logger  # gevent-websocket's access log
    with caplog.at_level(logging.WARNING, logger=logger.name):
        handler.log_request()
    assert formatted == []
    with caplog.at_level(logging.INFO, logger=logger.name):
        handler.log_request()
        handler.status = b"101 Switching Protocols"  # never logged
        handler.log_request()
    assert formatted == [handler]
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["the line"]
