"""The WebSocket transport (§4.1): one text frame per write, both ways.

The endpoint hands this module an upgraded socket: upgraded by the view
itself on ``atmosphere.run``'s server (``environ.UPGRADE_KEY``), or by
gevent-websocket's handler before the app ran (gunicorn's worker). From then
on the socket is this module's: :class:`WebSocketPeer` reads with the sans-IO
parser of :mod:`.wsframes` and writes frames itself.

An idle connection costs no greenlet when the socket is the peer's alone
(*parked*, on ``atmosphere.run``'s server): the request's greenlet ends after
``Connected``, a libev io watcher calls back when the peer sends something,
a timer sends the heartbeats, broadcasts write from the hub (``direct``),
and a greenlet is spawned only while there is work for one: running the
app's ``receive`` for inbound messages, or writing what the socket did not
take at once. Under gevent-websocket's handler the request's greenlet stays
and reads; everything else is the same.

Upstream internals used here, checked against gevent 26.9.0 and
gevent-websocket 0.10.1: a gevent socket's ``_sock`` (the real socket, for
non-blocking sends from the hub); the buffered reader of a pywsgi request,
``rfile.raw._sock`` (:func:`read_buffered`); and, on gevent-websocket's
handler, its ``WebSocket``'s ``closed``, ``handler.socket`` and
``handler.rfile``.
"""
from __future__ import annotations

import enum
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
from gevent import Timeout
from gevent.event import Event
from gevent.lock import Semaphore
from ..connection import Carrier
from ..mailbox import WRITE_BATCH, CloseRequest
from ..protocol import handshake_due, heartbeat_text
from .wsframes import (FRAMING, Close, FrameRefused, InboundFrames, Message, Ping, close_frame,
                       echo_close_code, encode_frame, ping_frame, pong_frame)

if TYPE_CHECKING:  # pragma: no cover
    from ..connection import Connection

__all__ = ["serve", "refuse", "read_buffered", "WebSocketPeer", "PeerState"]

log = logging.getLogger("flask_atmosphere")

#: Inbound messages waiting for the app before the peer is read no further.
INBOUND_BACKLOG = 64

#: Bytes read from the socket at a time.
READ_SIZE = 65536

_DONTWAIT = socket.MSG_DONTWAIT

#: A ping frame (RFC 6455 §5.5.2), without payload.
_PING = ping_frame()


def serve(connection: "Connection", new: bool, sock: Any, buffered: bytes, parked: bool) -> None:
    """Serve ``connection`` over the upgraded socket ``sock``.

    Returns when the connection ends, or at once after the start if the
    socket is ``parked`` (the peer's alone: read from an io watcher).

    Args:
        connection: the client's connection, ``Connected`` delivered already.
        new: whether the connection was opened by this request (else the
            client came back with its tracking id).
        sock: the upgraded gevent socket.
        buffered: bytes the peer sent right behind the upgrade request.
        parked: whether nobody else reads the socket (and closes it).
    """
    WebSocketPeer(connection, sock, parked).start(buffered)


def refuse(ws: Any, code: int, reason: str) -> None:
    """Close a WebSocket that gevent-websocket upgraded before the app could
    refuse it, with ``code`` (RFC 6455 §7.4.1) and ``reason``."""
    if not ws.closed:
        ws.closed = True
        try:
            ws.handler.socket.sendall(close_frame(code, reason))
        except OSError:
            pass


def read_buffered(rfile: Any) -> bytes:
    """What the request's buffered reader already holds beyond the upgrade
    request (a peer that sent frames right behind it), without waiting."""
    sock = rfile.raw._sock
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return rfile.read1(READ_SIZE) or b""
    except OSError:
        return b""
    finally:
        sock.settimeout(timeout)


class PeerState(enum.Enum):
    """Where a :class:`WebSocketPeer` is in the closing handshake (RFC 6455 §7)."""
    #: Frames flow both ways.
    OPEN = "open"
    #: The server's close frame went out (or is going): nothing may follow
    #: it; the peer's close frame is awaited.
    CLOSING = "closing"
    #: The peer is gone, said goodbye, or was refused: nothing more is read,
    #: and the socket is shut down as soon as no write is going out.
    ENDED = "ended"
    #: The close frame went out and the peer is gone.
    CLOSED = "closed"


class WebSocketPeer:
    """One WebSocket client's socket, read and written by this transport.

    Args:
        connection: the client's connection: its mailbox, parameters and
            settings (``write_timeout``, ``close_timeout``, ``max_message_size``).
        sock: the upgraded socket (a gevent socket).
        parked: whether the socket is this object's alone (no request
            greenlet behind it), so that it reads from an io watcher and
            closes the socket itself.
        raw: the real socket under ``sock``, for non-blocking writes from the
            hub (by default ``sock._sock``).

    ``ready`` is read for every client of every broadcast, so it is a plain
    attribute, kept up to date by :meth:`_set_ready`, its only writer: true
    when nothing is queued or being written and the connection is open.
    """
    __slots__ = ("connection", "mailbox", "carrier", "sock", "raw", "ready", "inbound_frames",
                 "lock", "parked", "state", "heard", "pinged", "wrote", "watcher", "timer",
                 "writer", "dispatcher", "inbound", "_closed_event", "write_timeout",
                 "close_timeout", "beat")

    def __init__(self, connection: "Connection", sock: Any, parked: bool, raw: Any = None):
        settings = connection.settings
        self.connection = connection
        self.mailbox = connection.mailbox
        self.sock = sock
        self.raw = sock._sock if raw is None else raw
        self.ready = False
        self.inbound_frames = InboundFrames(settings.max_message_size)
        self.lock = Semaphore()  # writers take turns: frames never interleave
        self.parked = parked
        self.state = PeerState.OPEN
        self.heard = True        # the peer sent something since the last ping
        self.pinged = False      # a ping is out
        self.wrote = False       # something was written since the last heartbeat
        self.watcher: Any = None
        self.timer: Any = None
        self.writer: gevent.Greenlet[[], None] | None = None
        self.dispatcher: gevent.Greenlet[[], None] | None = None
        self.inbound: deque[Any] | None = None
        self._closed_event: Event | None = None
        self.write_timeout = settings.write_timeout
        self.close_timeout = settings.close_timeout
        params = connection.params
        self.beat = (encode_frame(heartbeat_text(params).encode("utf-8"))
                     if params.is_atmosphere else None)  # its whole frame
        self.carrier = Carrier(self.abort, self, FRAMING[connection.track], self.wake,
                               "websocket")

    @property
    def close_sent(self) -> bool:
        """The server's close frame went out (or is going): nothing may follow."""
        return self.state is PeerState.CLOSING or self.state is PeerState.CLOSED

    @property
    def ended(self) -> bool:
        """Nothing more is read: the peer is gone, said goodbye, or was refused."""
        return self.state is PeerState.ENDED or self.state is PeerState.CLOSED

    def _set_ready(self, ready: bool | None = None) -> None:
        """The one place ``ready`` changes. ``False`` when a write starts
        (``wake``, the lock taken, the close frame); else (``None``)
        recomputed when a write ends: the mailbox is idle, no write holds the
        lock, and no close frame went out. A closed mailbox also clears
        ``Connection.direct``, so nothing asks any more."""
        if ready is None:
            ready = self.mailbox.idle and self.state is PeerState.OPEN and not self.lock.locked()
        self.ready = ready

    # -- the life of the connection --------------------------------------------

    def start(self, buffered: bytes) -> None:
        """Send the handshake (if due), attach, and read: from a watcher if
        parked, else here until the end."""
        connection = self.connection
        if handshake_due(connection.params):
            try:
                self.sock.sendall(encode_frame(connection.handshake().encode("utf-8")))
            except OSError as exc:
                self.state = PeerState.ENDED
                self._close_socket()
                connection.attach(self.carrier)
                connection.detach(self.carrier, error=exc)  # gone before it started
                return
        connection.attach(self.carrier)
        self._set_ready()  # an earlier request's write may still be going out
        if len(connection.mailbox) or connection.mailbox.closed:
            self.wake()  # what was queued for the client meanwhile
        heartbeat = connection.heartbeat_interval()
        loop = gevent.get_hub().loop
        if heartbeat is not None:
            self.timer = loop.timer(heartbeat, heartbeat)
            self.timer.start(self._heartbeat)
        if buffered:
            self._received(buffered)
        if self.parked:
            if not self.ended:
                self.watcher = loop.io(self.raw.fileno(), 1)
                self.watcher.start(self._readable)
            return
        while not self.ended:
            try:
                data = self.sock.recv(READ_SIZE)
            except OSError as exc:
                self._end(False, exc)
                break
            if not data:
                self._end(False, None)
                break
            self._received(data)
        writer = self.writer
        if writer is not None:  # a goodbye still going out
            writer.join(self.close_timeout + 1)
            writer.kill()

    def _readable(self) -> None:
        """The io watcher's callback, on the hub: read what is there."""
        try:
            data = self.raw.recv(READ_SIZE, _DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            self._stop_reading()
            self._inbound(("end", False, exc))
            return
        if not data:
            self._stop_reading()
            self._inbound(("end", False, None))
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        self.heard = True
        try:
            events = self.inbound_frames.receive(data)
        except FrameRefused as exc:
            self._stop_reading()
            log.warning("closing client %s on %s with %d: %s", self.connection.uuid,
                        self.connection.path, exc.code, exc.reason)
            self.connection.close_now(CloseRequest(exc.code, exc.reason, drain=False, error=exc))
            self.wake()  # the close frame, also if a newer request serves the client
            self._inbound(("end", True, exc))
            return
        for event in events:
            if type(event) is Message:
                self._inbound(event.text)
            elif type(event) is Ping:
                self._control(pong_frame(event.payload))
            elif type(event) is Close:
                self._stop_reading()
                if not self.close_sent:  # echo the code (§5.5.1)
                    self._control(close_frame(echo_close_code(event.code)))
                    self.state = PeerState.CLOSING
                    self._set_ready(False)
                self._inbound(("end", True, None))

    def _inbound(self, item: Any) -> None:
        """Hand an inbound message (or the end) to the app, in order: at once
        in a request greenlet, else through a dispatcher greenlet."""
        if not self.parked:
            self._handle(item)
            return
        if self.inbound is None:
            self.inbound = deque()
        self.inbound.append(item)
        if len(self.inbound) >= INBOUND_BACKLOG and self.watcher is not None:
            self.watcher.stop()  # the app is behind: read no further for now
        if self.dispatcher is None:
            self.dispatcher = gevent.spawn(self._dispatch)

    def _dispatch(self) -> None:
        inbound = self.inbound
        try:
            while inbound:
                self._handle(inbound.popleft())
                if len(inbound) < INBOUND_BACKLOG // 2 and self.watcher is not None \
                        and not self.watcher.active and not self.ended:
                    self.watcher.start(self._readable)
        except BaseException as exc:  # noqa: B036 -- killed: end cleanly, never half-alive
            self.abort()
            self._end(False, exc)
        finally:
            self.dispatcher = None
            self.inbound = None

    def _handle(self, item: Any) -> None:
        if type(item) is str:
            if not self.ended:
                self.connection.inbound(item)
        else:
            _, gone, error = item
            self._end(gone, error)

    def _end(self, gone: bool, error: BaseException | None) -> None:
        """The peer is gone, said goodbye, or was refused: stop, and let the
        connection decide whether the client is gone."""
        if self.ended:
            return
        self.state = PeerState.CLOSED if self.close_sent else PeerState.ENDED
        self._set_ready(False)
        self._stop_reading()
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        if self._closed_event is not None:
            self._closed_event.set()
        connection = self.connection
        superseded = connection.carrier is not self.carrier
        connection.detach(self.carrier, gone=gone, error=error)
        if not superseded:
            connection.mailbox.interrupt()
        if self.writer is None and not self.lock.locked():
            self._close_socket()  # else the last write closes it when done

    def _stop_reading(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def _close_socket(self) -> None:
        """Shut the socket down: the server closes the TCP connection first
        once the closing handshake is done (RFC 6455 §7.1.1), so the peer
        sees the FIN at once, not when the garbage collector gets to the
        socket; then close it if it is ours alone."""
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.parked:
            try:
                self.sock.close()
            except OSError:
                pass

    def abort(self) -> None:
        """Cut the connection at once: shut the socket down both ways, which
        wakes whatever reads or writes it."""
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.parked and self.watcher is None and not self.ended:
            self._inbound(("end", False, None))  # nobody reads to notice

    # -- writing -----------------------------------------------------------------

    def write_now(self, data: bytes) -> bool:
        """``Carrier.direct.write_now``: when nothing is queued or being written
        (``ready``), put ``data`` on the socket at once (a non-blocking
        send, safe on the hub). What the socket does not take at once is
        finished by a short-lived greenlet that holds the write lock, so
        nothing overtakes it; a socket that takes nothing leaves the
        messages to the queue.

        It runs for every client of every broadcast: it reads nothing but
        this object and its socket."""
        if not self.ready:
            return False
        try:
            sent = self.raw.send(data, _DONTWAIT)
        except OSError:  # full, or broken: the writer takes it from here
            return False
        self.wrote = True
        if sent != len(data):
            self.lock.acquire()  # free (ready): nothing may write until the rest is out
            self._set_ready(False)
            gevent.spawn(self._finish_write, memoryview(data)[sent:])
        return True

    def _control(self, data: bytes) -> None:
        """Send a control frame (pong, close echo), unless the close frame
        went out already."""
        if not self.close_sent:
            self._send_soon(data)

    def _send_soon(self, data: bytes) -> None:
        """Send ``data`` from the hub if the socket is free and takes it,
        else from a greenlet behind the current writer."""
        if not (self.lock.acquire(blocking=False) and self._send_locked(data)):
            gevent.spawn(self._send_later, data)

    def _send_locked(self, data: bytes) -> bool:
        """Send ``data`` without blocking, holding the lock; releases it when
        all is sent. Returns ``False`` (lock released) if nothing could be sent."""
        try:
            sent = self.raw.send(data, _DONTWAIT)
        except OSError:  # full, or broken: the writer takes it from here
            self.lock.release()
            return False
        if sent == len(data):
            self._released()
        else:
            self._set_ready(False)
            gevent.spawn(self._finish_write, memoryview(data)[sent:])
        return True

    def _released(self) -> None:
        """A write ended: let the next one go, and shut the socket down if
        the connection ended meanwhile."""
        self.lock.release()
        self._set_ready()
        if self.ended and self.writer is None:
            self._close_socket()

    def _finish_write(self, rest: memoryview) -> None:
        try:
            with Timeout(self.write_timeout, OSError("write timed out")):
                self.sock.sendall(rest)
        except OSError:
            self.abort()  # half a frame is on the wire: the connection is spoiled
        finally:
            self._released()

    def _send_later(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError:
            self.abort()

    def _send(self, data: bytes) -> None:
        """Send ``data`` from a greenlet, in turn, within the write timeout.

        Raises:
            OSError: the socket broke, or the write took longer than
                ``ATMOSPHERE_WRITE_TIMEOUT`` (the peer stopped reading).
        """
        self.lock.acquire()
        self._set_ready(False)
        try:
            with Timeout(self.write_timeout, OSError("write timed out")):
                self.sock.sendall(data)
        finally:
            self._released()

    def wake(self) -> None:
        """``Carrier.wake``: the mailbox got something, closed, or another
        request took the client over; a writer greenlet sees to it."""
        self._set_ready(False)  # until the writer is done
        if self.writer is None and not self.ended:
            self.writer = gevent.spawn(self._write)

    def _write(self) -> None:
        """Write what the mailbox holds, then end; or say goodbye with a
        close frame once the mailbox closes or another request took over."""
        connection, mailbox = self.connection, self.connection.mailbox
        framing = self.carrier.framing
        try:
            while True:
                if not connection.serves(self.carrier) and not mailbox.closed:
                    self._say_goodbye(1000, "superseded")
                    return
                if not len(mailbox) and not mailbox.closed:
                    return  # nothing left: done until the next wake
                batch = mailbox.take(None, limit=WRITE_BATCH)
                if batch is None:
                    request = mailbox.close_request
                    assert request is not None
                    self._say_goodbye(request.code, request.reason)
                    return
                if not batch:
                    return
                if not connection.serves(self.carrier):
                    connection.requeue(batch)  # for the request that took over
                    continue
                try:
                    self._send(framing.encode([outbound for _, outbound in batch]))
                    self.wrote = True
                except BaseException:  # broken, timed out, or killed
                    connection.requeue(batch)  # for the client's next request
                    raise
                mailbox.written()
        except OSError as exc:
            if not self.ended:
                log.info("client %s on %s is unreachable: %s", connection.uuid, connection.path,
                         exc)
            self.abort()
        finally:
            self.writer = None
            self._set_ready()
            if self.ended and not self.lock.locked():
                self._close_socket()

    def _say_goodbye(self, code: int, reason: str) -> None:
        """Send a close frame, wait for the peer's (up to
        ``ATMOSPHERE_CLOSE_TIMEOUT``), then cut the socket."""
        if not self.close_sent:
            ended = self.ended
            self.state = PeerState.CLOSED if ended else PeerState.CLOSING
            self._set_ready(False)  # before the send: nothing may follow the frame
            self._send(close_frame(code, reason))
        if not self.ended:
            self._closed_event = Event()
            if not self._closed_event.wait(self.close_timeout):
                self.abort()

    def _heartbeat(self) -> None:
        """The heartbeat timer (``ATMOSPHERE_HEARTBEAT_INTERVAL``), on the
        hub: cut a peer that did not answer the last ping; else ping it
        (browsers answer by themselves), and send an Atmosphere client that
        got nothing since the last heartbeat a heartbeat (§5.1)."""
        if self.state is not PeerState.OPEN:
            return
        if self.pinged and not self.heard:
            connection = self.connection
            log.info("client %s on %s is unreachable: no answer to a ping", connection.uuid,
                     connection.path)
            self.abort()
            return
        data = _PING
        if self.beat is not None and not self.wrote:
            data = self.beat + _PING
        self.heard = self.wrote = False
        self.pinged = True
        self._send_soon(data)
