"""The WebSocket transport (§4.1): one text frame per write, both ways.

gevent-websocket's handler does the HTTP upgrade; from then on the socket is
this module's: :class:`WebSocketPeer` reads with the sans-IO parser of
:mod:`.wsframes` and writes frames itself.

An idle connection costs no greenlet when the server can hand its socket
over (``atmosphere.run``, see ``server.AtmosphereServer``): the request's
greenlet ends after ``Connected``, a libev io watcher calls back when the
peer sends something, a timer sends the heartbeats, broadcasts write from
the hub (``direct``), and a greenlet is spawned only while there is work
for one: running the app's ``receive`` for inbound messages, or writing what
the socket did not take at once. Under another server (gunicorn's
gevent-websocket worker) the request's greenlet stays and reads; everything
else is the same.
"""
from __future__ import annotations

import logging
import socket
from collections import deque

import gevent
from gevent import Timeout
from gevent.event import Event
from gevent.lock import Semaphore

from ..connection import Carrier, Connection
from ..mailbox import WRITE_BATCH, CloseRequest
from ..protocol import HEARTBEAT_PADDING, frame, handshake_due
from .wsframes import (FRAMING, PING, PONG, Close, FrameRefused, InboundFrames, Message, Ping,
                       close_frame, encode_frame)

__all__ = ["serve", "refuse", "read_buffered", "PARK_KEY", "WebSocketPeer"]

log = logging.getLogger("flask_atmosphere")

#: The WSGI environ key under which a server that can take a WebSocket's
#: socket back from its request greenlet offers ``park(): (socket, buffered)``.
PARK_KEY = "flask_atmosphere.park"

#: Inbound messages waiting for the app before the peer is read no further.
INBOUND_BACKLOG = 64

#: Bytes read from the socket at a time.
READ_SIZE = 65536

_DONTWAIT = socket.MSG_DONTWAIT

#: A ping frame (RFC 6455 §5.5.2), without payload.
_PING = encode_frame(b"", PING)


def serve(connection: Connection, new: bool, ws, environ: dict) -> None:
    """Serve ``connection`` over the upgraded WebSocket ``ws``.

    Returns when the connection ends, or at once after ``Connected`` if the
    server took the socket back (``environ[PARK_KEY]``).

    Args:
        connection: the client's connection.
        new: whether the connection is new (it gets ``Connected``) or a
            client reconnecting with its tracking id.
        ws: gevent-websocket's ``WebSocket`` from ``environ["wsgi.websocket"]``.
        environ: the request's WSGI environ.
    """
    ws.closed = True  # gevent-websocket writes nothing more: the socket is ours
    park = environ.get(PARK_KEY)
    if park is not None:
        sock, buffered = park()
    else:
        sock, buffered = ws.handler.socket, read_buffered(ws.handler.rfile)
    peer = WebSocketPeer(connection, sock, parked=park is not None)
    peer.start(new, buffered)


def refuse(ws, code: int, reason: str) -> None:
    """Close an upgraded WebSocket that will not be served, with ``code``
    (e.g. 1008, RFC 6455 §7.4.1) and ``reason``."""
    if not ws.closed:
        ws.closed = True
        try:
            ws.handler.socket.sendall(close_frame(code, reason))
        except OSError:
            pass


def read_buffered(rfile) -> bytes:
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


class WebSocketPeer:
    """One WebSocket client's socket, read and written by this transport.

    Args:
        connection: the client's connection.
        sock: the upgraded socket (a gevent socket).
        parked: whether the socket is this object's alone (no request
            greenlet behind it), so that it reads from an io watcher and
            closes the socket itself.
    """
    __slots__ = ("connection", "mailbox", "carrier", "sock", "raw", "ready", "inbound_frames",
                 "lock", "parked", "heard", "pinged", "wrote", "close_sent", "ended", "watcher",
                 "timer", "writer", "dispatcher", "inbound", "_ended_event", "write_timeout",
                 "close_timeout", "beat")

    def __init__(self, connection: Connection, sock, parked: bool):
        settings = connection.atmosphere.settings(connection.app)
        self.connection = connection
        self.mailbox = connection.mailbox
        self.sock = sock
        self.raw = sock._sock  # the real socket, for non-blocking writes from the hub
        #: ``write_now`` may write: the mailbox is idle, no write holds the lock,
        #: no close frame went out. Read for every client of every broadcast,
        #: so it is one attribute of this object, kept up to date: set false
        #: by ``wake`` (every change that makes the mailbox busy ends in one),
        #: by taking the lock and by the close frame; recomputed by
        #: ``_update_ready`` when a write ends. (A closed mailbox also clears
        #: ``Connection.direct``, so nothing asks any more.)
        self.ready = False
        self.inbound_frames = InboundFrames(settings.max_message_size)
        self.lock = Semaphore()  # writers take turns: frames never interleave
        self.parked = parked
        self.heard = True        # the peer sent something since the last ping
        self.pinged = False      # a ping is out
        self.wrote = False       # something was written since the last heartbeat
        self.close_sent = False
        self.ended = False
        self.watcher = self.timer = self.writer = self.dispatcher = None
        self.inbound: deque | None = None
        self._ended_event: Event | None = None
        self.write_timeout = settings.write_timeout
        self.close_timeout = settings.close_timeout
        self.beat = (encode_frame(frame(HEARTBEAT_PADDING, connection.track).encode("utf-8"))
                     if connection.params.is_atmosphere else None)  # its whole frame
        self.carrier = Carrier(self.abort, self, FRAMING[connection.track], self.wake)

    # -- the life of the connection --------------------------------------------

    def start(self, new: bool, buffered: bytes) -> None:
        """Send the handshake (if due), attach, deliver ``Connected`` if
        ``new``, and read: from a watcher if parked, else here until the end."""
        connection = self.connection
        if handshake_due(connection.params):
            try:
                self.sock.sendall(encode_frame(connection.handshake().encode("utf-8")))
            except OSError as exc:
                self._close_socket()
                connection.attach(self.carrier)
                connection.detach(self.carrier, error=exc)  # gone before it started
                return
        connection.attach(self.carrier)
        self._update_ready()  # an earlier request's write may still be going out
        if len(connection.mailbox) or connection.mailbox.closed:
            self.wake()  # what was queued for the client meanwhile
        heartbeat = connection.heartbeat_interval()
        loop = gevent.get_hub().loop
        if heartbeat is not None:
            self.timer = loop.timer(heartbeat, heartbeat)
            self.timer.start(self._heartbeat)
        if new:
            connection.open()
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
                self._control(encode_frame(event.payload, PONG))
            elif type(event) is Close:
                self._stop_reading()
                if not self.close_sent:  # echo the code (§5.5.1)
                    code = 1000 if event.code in (1005, 1006, 1015) else event.code
                    self._control(close_frame(code))
                    self.close_sent = True
                    self.ready = False
                self._inbound(("end", True, None))

    def _inbound(self, item) -> None:
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
        while inbound:
            self._handle(inbound.popleft())
            if len(inbound) < INBOUND_BACKLOG // 2 and self.watcher is not None \
                    and not self.watcher.active and not self.ended:
                self.watcher.start(self._readable)
        self.dispatcher = None
        self.inbound = None

    def _handle(self, item) -> None:
        if type(item) is str:
            if not self.ended:
                self.connection.inbound(item)
        else:
            _, gone, error = item
            self._end(gone, error)

    def _end(self, gone: bool, error: BaseException | None) -> None:
        """The peer is gone, said goodbye, or was refused: stop, and let the
        connection decide whether the client is gone (in a greenlet)."""
        if self.ended:
            return
        self.ended = True
        self._stop_reading()
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        if self._ended_event is not None:
            self._ended_event.set()
        connection = self.connection
        superseded = connection.carrier is not self.carrier
        connection.detach(self.carrier, gone=gone, error=error)
        if not superseded:
            connection.mailbox.interrupt()
        if self.writer is None:
            self._close_socket()  # else the writer closes it when done

    def _stop_reading(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def _close_socket(self) -> None:
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
            self.ready = False
            gevent.spawn(self._finish_write, memoryview(data)[sent:])
        return True

    def _update_ready(self) -> None:
        """Recompute ``ready`` from what it stands for (after a write, or on attaching)."""
        self.ready = self.mailbox.idle and not self.close_sent and not self.lock.locked()

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
            self.lock.release()
        else:
            self.ready = False
            gevent.spawn(self._finish_write, memoryview(data)[sent:])
        return True

    def _finish_write(self, rest: memoryview) -> None:
        try:
            with Timeout(self.write_timeout, OSError("write timed out")):
                self.sock.sendall(rest)
        except OSError:
            self.abort()  # half a frame is on the wire: the connection is spoiled
        finally:
            self.lock.release()
            self._update_ready()

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
        self.ready = False
        try:
            with Timeout(self.write_timeout, OSError("write timed out")):
                self.sock.sendall(data)
        finally:
            self.lock.release()
            self._update_ready()

    def wake(self) -> None:
        """``Carrier.wake``: the mailbox got something, closed, or another
        request took the client over; a writer greenlet sees to it."""
        self.ready = False  # until the writer is done
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
            self._update_ready()
            if self.ended:
                self._close_socket()

    def _say_goodbye(self, code: int, reason: str) -> None:
        """Send a close frame, wait for the peer's (up to
        ``ATMOSPHERE_CLOSE_TIMEOUT``), then cut the socket."""
        if not self.close_sent:
            self.close_sent = True  # before the send: nothing may follow the frame
            self._send(close_frame(code, reason))
        if not self.ended:
            self._ended_event = Event()
            if not self._ended_event.wait(self.close_timeout):
                self.abort()

    def _heartbeat(self) -> None:
        """The heartbeat timer (``ATMOSPHERE_HEARTBEAT_INTERVAL``), on the
        hub: cut a peer that did not answer the last ping; else ping it
        (browsers answer by themselves), and send an Atmosphere client that
        got nothing since the last heartbeat the heartbeat ``X`` (§5.1)."""
        if self.ended or self.close_sent:
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
