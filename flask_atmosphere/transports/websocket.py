"""The WebSocket transport (§4.1): one text frame per write, both ways.

The request greenlet reads frames and feeds them to the connection; a writer
greenlet waits on the mailbox and is the only one that writes messages,
heartbeats and the final close frame.
"""
from __future__ import annotations

import logging
import socket
from time import monotonic

import gevent
from gevent import Timeout
from gevent.event import Event
from geventwebsocket.exceptions import ProtocolError, WebSocketError

from ..connection import Carrier, Connection
from ..mailbox import WRITE_BATCH, CloseRequest
from ..protocol import HEARTBEAT_PADDING, frame, handshake_due
from .geventws import MessageTooBig, abort, adopt, encode_frame

__all__ = ["serve"]

log = logging.getLogger("flask_atmosphere")

TEXT = 0x01
PING = 0x09


def serve(connection: Connection, new: bool, ws) -> None:
    """Serve ``connection`` over the upgraded WebSocket ``ws`` until it ends.

    Args:
        connection: the client's connection.
        new: whether the connection is new (it gets ``Connected``) or a
            client reconnecting with its tracking id.
        ws: gevent-websocket's ``WebSocket`` from ``environ["wsgi.websocket"]``.
    """
    settings = connection.atmosphere.settings(connection.app)
    ws = adopt(ws, settings.max_message_size)
    params = connection.params
    carrier = Carrier(lambda: abort(ws), _direct_writer(connection, ws, settings.write_timeout),
                      FRAMING[connection.track])
    connection.attach(carrier)
    if handshake_due(params):
        try:
            ws.send_frame(connection.handshake(), TEXT)
        except WebSocketError as exc:
            connection.detach(carrier, error=exc)  # gone before it started
            return
    reader_done = Event()
    writer = gevent.spawn(_write, connection, carrier, ws, reader_done, settings.close_timeout,
                          connection.heartbeat_interval(), settings.write_timeout)
    gone, error = False, None
    try:
        if new:
            connection.open()
        gone, error = _read(connection, ws)
    finally:
        reader_done.set()
        superseded = connection.carrier is not carrier
        connection.detach(carrier, gone=gone, error=error)
        if not superseded:
            connection.mailbox.interrupt()  # a writer still waiting: stop
        writer.join(settings.close_timeout + 1)
        writer.kill()


def _read(connection: Connection, ws) -> tuple[bool, BaseException | None]:
    """Feed inbound messages to ``connection`` until the WebSocket ends.

    Returns:
        ``(gone, error)``: ``gone`` if the peer closed deliberately (a close
        frame), ``error`` what ended it otherwise.
    """
    while True:
        try:
            message = ws.read_message()
        except MessageTooBig as exc:
            return True, _refuse(connection, 1009, "message too big", exc)
        except UnicodeError as exc:
            return True, _refuse(connection, 1007, "invalid UTF-8", exc)
        except ProtocolError as exc:
            return True, _refuse(connection, 1002, "protocol error", exc)
        except OSError as exc:  # WebSocketError too: the connection is lost
            return False, exc
        if message is None:  # a close frame
            return True, None
        if not isinstance(message, str):
            try:
                message = bytes(message).decode("utf-8")
            except UnicodeError as exc:
                return True, _refuse(connection, 1007, "binary message is not UTF-8 text", exc)
        connection.inbound(message)


def _refuse(connection: Connection, code: int, reason: str, error: BaseException) -> BaseException:
    log.warning("closing client %s on %s with %d: %s (%s)", connection.uuid, connection.path,
                code, reason, error)
    connection.mailbox.close(CloseRequest(code, reason, drain=False, error=error))
    return error


def _write(connection: Connection, carrier: Carrier, ws, reader_done: Event, close_timeout: float,
           heartbeat: float | None, write_timeout: float) -> None:
    """Write what the mailbox gives, and a close frame once the mailbox
    closes or another request takes the client over.

    Every ``heartbeat`` seconds it pings the peer (browsers answer by
    themselves), and an Atmosphere client that got nothing for that long
    also gets the heartbeat ``X`` (§5.1). A peer that did not answer the
    previous ping by the next one (so at most two heartbeats after it was
    last heard from), or a write that takes longer than ``write_timeout``
    seconds (the peer stopped reading), is cut off.
    """
    mailbox = connection.mailbox
    track = connection.track
    framing = FRAMING[track]
    beat = frame(HEARTBEAT_PADDING, track) if connection.params.is_atmosphere else None
    handler = ws.handler
    next_beat = last_write = monotonic()
    last_ping = None
    if heartbeat is not None:
        next_beat += heartbeat
    try:
        while True:
            wait = None if heartbeat is None else max(0.0, next_beat - monotonic())
            batch = mailbox.take(wait, limit=WRITE_BATCH)
            if batch is None:
                request = mailbox.close_request
                with Timeout(write_timeout, WebSocketError("close frame write timed out")):
                    ws.close(request.code, request.reason)
                break
            if not connection.serves(carrier):
                if batch:
                    mailbox.requeue(batch)  # for the request that took over
                if reader_done.is_set():
                    return
                ws.close(1000, "superseded")
                break
            if batch:
                # A batch goes out in one write.
                data = framing.encode([outbound for _, outbound in batch])
                try:
                    with Timeout(write_timeout, WebSocketError("write timed out")):
                        ws.send_frames(data)
                except WebSocketError:
                    mailbox.requeue(batch)  # for the client's next request
                    raise
                mailbox.written()
                last_write = monotonic()
            now = monotonic()
            if heartbeat is not None and now >= next_beat:
                if last_ping is not None and handler.atmosphere_last_seen < last_ping:
                    raise WebSocketError(f"no answer to a ping in {now - last_ping:.1f}s")
                with Timeout(write_timeout, WebSocketError("heartbeat write timed out")):
                    if beat is not None and now - last_write >= heartbeat:
                        ws.send_frame(beat, TEXT)
                    ws.send_frame(b"", PING)
                last_ping = now
                next_beat = now + heartbeat
    except WebSocketError as exc:
        if not ws.closed:
            log.info("client %s on %s is unreachable: %s", connection.uuid, connection.path, exc)
            abort(ws)  # a dead peer: wake the reader
        return
    if not reader_done.wait(close_timeout):
        abort(ws)


class WebSocketFraming:
    """Frames messages as WebSocket text frames (RFC 6455 §5.6), one per
    message, each length-framed (§3 of the protocol) if ``track``.

    A broadcast frames a message once per framing and writes the same bytes
    to every client framed alike (see ``Carrier.framing``).
    """
    __slots__ = ("track", "key")

    def __init__(self, track: bool):
        self.track = track
        self.key = ("websocket", track)

    def frame(self, outbound) -> bytes:
        """The frame of one message (an ``Outbound``), made once and kept on it."""
        return outbound.cached(self.key, self._make)

    def _make(self, outbound) -> bytes:
        return encode_frame(outbound.encoded(self.track))

    def encode(self, outbounds) -> bytes:
        """The frames of ``outbounds`` (a list of ``Outbound``), one after another."""
        if len(outbounds) == 1:
            return self.frame(outbounds[0])
        return b"".join([self.frame(outbound) for outbound in outbounds])


#: The two framings, by ``X-Atmosphere-TrackMessageSize``.
FRAMING = {False: WebSocketFraming(False), True: WebSocketFraming(True)}


def _direct_writer(connection: Connection, ws, write_timeout: float):
    """``direct(data)`` for the carrier: when nothing is queued or being
    written, a broadcast puts its frames on the socket at once (a
    non-blocking send, safe on the hub), sparing the writer greenlet a
    wake-up per message. What the socket does not take at once is finished
    by a short-lived greenlet that holds the write lock, so nothing overtakes
    it; a socket that takes nothing leaves the messages to the queue."""
    handler = ws.handler
    mailbox = connection.mailbox
    lock = handler.atmosphere_write_lock
    sock = getattr(handler.socket, "_sock", None)
    if sock is None:
        return None
    send = sock.send
    dontwait = socket.MSG_DONTWAIT

    def direct(data: bytes) -> bool:
        if not mailbox.idle or ws.closed or not lock.acquire(blocking=False):
            return False
        try:
            sent = send(data, dontwait)
        except OSError:  # full, or broken: the writer takes it from here
            lock.release()
            return False
        if sent == len(data):
            lock.release()
        else:
            gevent.spawn(_finish_write, ws, memoryview(data)[sent:], lock, write_timeout)
        return True

    return direct


def _finish_write(ws, rest: memoryview, lock, write_timeout: float) -> None:
    try:
        with Timeout(write_timeout, WebSocketError("write timed out")):
            ws.handler.socket.sendall(rest)
    except (OSError, WebSocketError):
        abort(ws)  # half a frame is on the wire: the connection is spoiled
    finally:
        lock.release()
