"""The life of one client, whatever its transport and however many requests
carry it.

A client is known by its uuid (the Atmosphere tracking id). Each request that
serves it (a WebSocket, a stream, one long-poll) *attaches* to its
:class:`Connection`, writes what the mailbox gives, and *detaches* when it
ends. Between two requests (a long-poll between polls, a client reconnecting)
the connection stays registered and its mailbox keeps filling; if no request
comes back within the grace period, the client is gone.

This module owns the rules: ``Connected`` after registration and only once,
one event at a time and in order, ``Disconnected`` exactly once and last,
errors in ``receive`` contained.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from .broadcaster import Broadcast
from .events import ClientDisconnected, Connected, Disconnected, Error, ServerDisconnected
from .filters import as_filter
from .mailbox import CloseRequest, Mailbox, Outbound
from .protocol import (AtmosphereParams, frame, handshake, heartbeat_interval, is_heartbeat,
                       valid_tracking_id)

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .client import AtmosphereClient, ConnectRequest
    from .extension import Atmosphere, Route

__all__ = ["Connection", "Carrier"]

log = logging.getLogger("flask_atmosphere")

#: Seconds a slow consumer's writer has to close the connection once its
#: mailbox overflowed, before its socket is cut.
STUCK_WRITER_GRACE = 1.0


class Carrier:
    """One request serving a connection.

    Attributes:
        abort: cuts the request at once (set by the transport when it can,
            e.g. by shutting its socket down).
        lost: the peer went away (seen by the transport); it serves no more.
        ended: set once it serves no more (lost, or superseded by a newer
            request), for a transport that waits on something else.
        direct: where the transport can write from the hub without blocking,
            an object whose ``write_now(data: bytes) -> bool`` writes ``data``
            (whole messages framed by ``framing``) at once if nothing else is
            queued or being written, and says whether it took them; else
            ``None``. An object, not a bound method: the broadcaster calls it
            for every client of every broadcast, and a bound method is one
            more object per client to bring into the cache.
        framing: with ``direct``, what frames messages for it: an object
            with ``encode(outbounds: list[Outbound]) -> bytes``, shared by
            every connection framed alike (the broadcaster frames a message
            once per ``framing``).
        wake: for a transport that does not wait on the mailbox, called
            when the mailbox got a message, closed, or another request took
            the client over; else ``None``.
    """
    __slots__ = ("abort", "lost", "ended", "direct", "framing", "wake")

    def __init__(self, abort: Callable[[], None] | None = None,
                 direct: Any = None, framing: Any = None,
                 wake: Callable[[], None] | None = None):
        self.abort = abort or (lambda: None)
        self.lost = False
        self.ended = Event()
        self.direct = direct
        self.framing = framing
        self.wake = wake


class Connection:
    """One client.

    Args:
        atmosphere: the extension.
        app: the Flask app that serves it (``receive`` runs in its app context).
        route: the atmosphere route it was opened on.
        uuid: the client's uuid (its tracking id).
        params: the Atmosphere parameters of the opening request.
        request: the opening request, as the client sees it.
        session: the Flask session at connect time.
    """
    __slots__ = ("atmosphere", "app", "uuid", "path", "params", "wire_format", "grace_period",
                 "mailbox", "carrier", "direct", "framing", "poll_answered", "client", "_lock",
                 "_opened", "_finished", "_grace_timer", "__weakref__")

    def __init__(self, atmosphere: "Atmosphere", app: "Flask", route: "Route", uuid: str,
                 params: AtmosphereParams, request: "ConnectRequest", session: Any):
        from .client import _frozen
        settings = atmosphere.settings(app)
        self.atmosphere = atmosphere
        self.app = app
        self.uuid = uuid
        self.path = request.path
        self.params = params
        self.wire_format = route.wire_format
        self.grace_period = settings.grace_period
        self.mailbox = Mailbox(settings.mailbox_max_messages, settings.mailbox_max_bytes,
                               settings.mailbox_overflow)
        self.carrier: Carrier | None = None
        #: The serving carrier's ``direct`` and ``framing`` while it can take
        #: writes from the hub (read by the broadcaster for every broadcast).
        self.direct: Any = None
        self.framing: Any = None
        self._lock = Semaphore()
        self._opened = False     # Connected was delivered
        self._finished = False   # Disconnected is decided (delivered or on its way)
        self._grace_timer = None
        #: Long-polling: the client's last poll was answered, so its open
        #: fired already and its next poll need not send headers early.
        self.poll_answered = False
        client: "AtmosphereClient" = route.client_class()
        client.uuid = uuid
        client.request = request
        client.session = _frozen(session)
        client._connection = self
        self.client = client

    def __repr__(self) -> str:
        return f"<Connection {self.uuid} {self.path}>"

    @property
    def track(self) -> bool:
        """Whether every write is length-framed (``X-Atmosphere-TrackMessageSize``)."""
        return self.params.track_message_size

    @property
    def resumable(self) -> bool:
        """Whether the client can come back with its tracking id: it asked for
        the handshake (``X-atmo-protocol``), which gives it one, or brought a
        valid one. With neither (a plain WebSocket client, an Atmosphere
        client stuck at tracking id ``0``) it cannot."""
        params = self.params
        return params.protocol or valid_tracking_id(params.tracking_id)

    @property
    def finished(self) -> bool:
        return self._finished

    def handshake(self) -> str:
        """This client's protocol handshake (§2.2), framed like its writes."""
        client_heartbeat = self.atmosphere.settings(self.app).client_heartbeat_interval
        return frame(handshake(self.uuid, int(client_heartbeat * 1000)), self.track)

    def heartbeat_interval(self) -> float | None:
        """Seconds between server heartbeats for this client, or ``None``."""
        return heartbeat_interval(self.atmosphere.settings(self.app).heartbeat_interval,
                                  self.params.heartbeat_server)

    # -- outbound, from any greenlet or thread --------------------------------

    def send(self, message: Any) -> None:
        """Queue ``message`` for this client (see ``AtmosphereClient.send``)."""
        outbound = Outbound(self.wire_format.render(message))
        self.atmosphere.broadcaster.call(self.push, outbound)

    def broadcast(self, message: Any, to: Any) -> None:
        """Broadcast to this client's broadcaster (see ``AtmosphereClient.broadcast``)."""
        self.atmosphere.broadcaster.publish(
            Broadcast(self.path, message, as_filter(to), sender=self.uuid, exact=True))

    def close(self, code: int = 1000, reason: str = "", error: BaseException | None = None,
              drain: bool = True) -> None:
        """End the connection from the server side (from any greenlet or thread)."""
        self.atmosphere.broadcaster.call(self.close_now, CloseRequest(code, reason, drain, error))

    def close_now(self, request: CloseRequest) -> None:
        """``close`` on the hub thread: close the mailbox as ``request``
        says and tell the request serving the client, which says goodbye."""
        if self.close_mailbox(request):
            if self.carrier is None:
                gevent.spawn(self.finish)  # no request to tell: done now
            else:
                self._wake()

    def close_mailbox(self, request: CloseRequest) -> bool:
        """Close the mailbox as ``request`` says (only the first call counts:
        returns whether it did). From then on nothing is written from the
        hub: what is queued drains (if ``request`` says so) through the
        transport's writer, and nothing new is queued."""
        if not self.mailbox.close(request):
            return False
        self.direct = None
        return True

    def _wake(self) -> None:
        carrier = self.carrier
        if carrier is not None and carrier.wake is not None:
            carrier.wake()

    def push(self, outbound: Outbound) -> None:
        """Write ``outbound`` at once if the transport can, else queue it
        (hub thread only)."""
        direct = self.direct
        if direct is None or not direct.write_now(self.framing.encode([outbound])):
            self.enqueue(outbound)

    def requeue(self, batch: list) -> None:
        """Put ``batch`` (``(seq, Outbound)`` pairs taken from the mailbox but
        not written) back at its front, and wake the request that serves
        the client now (perhaps a newer one than the request that took
        them), so that it writes them, in order (hub thread only)."""
        self.mailbox.requeue(batch)
        if batch:
            self._wake()

    def enqueue(self, outbound: Outbound) -> None:
        """Append to the mailbox (hub thread only); a full mailbox disconnects
        this client and logs why, once."""
        mailbox = self.mailbox
        if mailbox.closed:
            return
        dropped = mailbox.dropped
        if not mailbox.put(outbound):  # it closed itself
            self.direct = None
            log.warning("disconnecting client %s on %s: %s", self.uuid, self.path,
                        mailbox.close_request.error)
            if self.carrier is None:
                gevent.spawn(self.finish)
            else:  # its writer says goodbye, unless a stalled write holds it
                gevent.spawn_later(STUCK_WRITER_GRACE, self._cut_if_stuck, self.carrier)
        elif mailbox.dropped != dropped and _power_of_ten(mailbox.dropped):
            log.warning("client %s on %s is slow: %d messages dropped so far", self.uuid,
                        self.path, mailbox.dropped)
        self._wake()

    # -- requests coming and going ---------------------------------------------

    def attach(self, carrier: Carrier) -> None:
        """``carrier`` serves the client from now on; a request still serving
        it is superseded (its pending wait on the mailbox ends)."""
        if self._grace_timer is not None:
            self._grace_timer.stop()  # kept for the next detach (a long-poll's every poll)
        previous = self.carrier
        if previous is not None:
            previous.ended.set()
        self.carrier = carrier
        self.direct, self.framing = carrier.direct, carrier.framing
        self.mailbox.interrupt()
        if previous is not None and previous.wake is not None:
            previous.wake()  # it says goodbye

    def serves(self, carrier: Carrier) -> bool:
        """Whether ``carrier`` is still the request serving the client."""
        return self.carrier is carrier and not carrier.lost and not self._finished

    def lost(self, carrier: Carrier) -> None:
        """The peer of ``carrier`` went away: it stops waiting for messages
        (which stay queued for the client's next request)."""
        carrier.lost = True
        carrier.ended.set()
        if self.carrier is carrier:
            self.direct = None
            self.mailbox.interrupt()

    def detach(self, carrier: Carrier, gone: bool = False, error: BaseException | None = None) -> None:
        """``carrier`` has ended. The client is gone now if it said so
        (``gone``: a close frame, a close request), if it cannot come back,
        or if the server closed it; else it has ``grace_period`` seconds to
        come back with its tracking id."""
        if self.carrier is not carrier:
            return  # superseded: the newer request carries on
        self.carrier = None
        self.direct = None
        if self._finished:
            return
        if gone or not self.resumable or self.mailbox.closed or self.grace_period <= 0:
            self.finish(error)
            return
        timer = self._grace_timer
        if timer is None:
            timer = self._grace_timer = gevent.get_hub().loop.timer(self.grace_period)
        timer.start(self._grace_expired)  # one timer per connection, restarted

    def _grace_expired(self) -> None:
        self._grace_timer = None
        if self.carrier is None and not self._finished:
            log.info("client %s on %s did not come back within %ss", self.uuid, self.path,
                     self.grace_period)
            gevent.spawn(self.finish)

    # -- events ---------------------------------------------------------------

    def open(self) -> None:
        """Register the client, then deliver ``Connected``."""
        self.atmosphere.registry.add(self)
        self._opened = True
        self.dispatch(Connected())

    def inbound(self, text: str) -> None:
        """Deliver one inbound message; an Atmosphere client's heartbeat (§5.2)
        is swallowed."""
        if self.params.is_atmosphere and is_heartbeat(text):
            return
        self.dispatch(self.wire_format.parse(text))

    def dispatch(self, event: Any) -> None:
        """Run the client's ``receive`` for ``event``, one event at a time.
        Nothing is delivered after ``Disconnected``."""
        with self._lock:
            if self._finished and not isinstance(event, Disconnected):
                return
            self._receive(event)

    def _receive(self, event: Any) -> None:
        with self.app.app_context():
            try:
                self.client.receive(event)
            except Exception as exc:
                self.atmosphere.report_error(self.client, exc)
                if isinstance(event, (Disconnected, Error)):
                    return
                try:
                    self.client.receive(Error(exc))
                except Exception as again:
                    self.atmosphere.report_error(self.client, again)

    def finish(self, error: BaseException | None = None) -> None:
        """Deliver ``Disconnected`` (exactly once) and unregister the client.

        It is ``ServerDisconnected`` if the server asked to close (``close``,
        a full mailbox, shutdown), else ``ClientDisconnected``; ``error`` is
        what ended the connection, if anything did. A client that never got
        ``Connected`` gets no ``Disconnected`` either.
        """
        if self._finished:
            return
        self._finished = True
        if not self._opened:
            self.close_mailbox(CloseRequest(1000, "", drain=False, error=error))
            return
        if self._grace_timer is not None:
            self._grace_timer.close()
            self._grace_timer = None
        request = self.mailbox.close_request
        if request is None:
            self.close_mailbox(CloseRequest(1000, "", drain=False, error=error))
            by = ClientDisconnected()
        else:  # what a read saw after the server closed is no news
            by = ServerDisconnected()
            error = request.error
        try:
            self.dispatch(Disconnected(by, error))
        finally:
            self.atmosphere.registry.remove(self)

    def _cut_if_stuck(self, carrier: Carrier) -> None:
        if self.carrier is carrier:
            carrier.abort()

    def abort(self) -> None:
        """Cut the request serving the client, if any, without a goodbye."""
        if self.carrier is not None:
            self.carrier.abort()


def _power_of_ten(n: int) -> bool:
    while n % 10 == 0 and n > 1:
        n //= 10
    return n == 1
