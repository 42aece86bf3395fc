"""The life of one client, whatever its transport and however many requests
carry it.

A client is known by its uuid (the Atmosphere tracking id). Each request that
serves it (a WebSocket, a stream, one long-poll) *attaches* to its
:class:`Connection`, writes what the mailbox gives, and *detaches* when it
ends. Between two requests (a long-poll between polls, a client reconnecting)
the connection stays registered and its mailbox keeps filling; if no request
comes back within the grace period, the client is gone.

This module owns the rules: ``Connected`` after registration and only once,
nothing written to the client before ``Connected`` returns, one event at a
time and in order, ``Disconnected`` exactly once and last, errors in
``receive`` contained, whatever they are.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from greenlet import GreenletExit

from . import handover
from .broadcast import Broadcast
from .decisions import Refusal
from .events import (ClientDisconnected, Connected, Disconnected, Error, MessagesLost,
                     ServerDisconnected)
from .filters import as_filter
from .mailbox import CloseRequest, Mailbox, Outbound
from .protocol import (AtmosphereParams, frame, handshake, heartbeat_interval, is_heartbeat,
                       padding, valid_tracking_id)
from .stats import disconnect_reason

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .client import AtmosphereClient, ConnectRequest
    from .config import Settings
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
        transport: the transport's name (``websocket``, ``sse``, ...), for the stats.
    """
    __slots__ = ("abort", "lost", "ended", "direct", "framing", "wake", "transport")

    def __init__(self, abort: Callable[[], None] | None = None,
                 direct: Any = None, framing: Any = None,
                 wake: Callable[[], None] | None = None, transport: str = ""):
        self.transport = transport
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
        app: the Flask app that serves it (``receive`` runs in its context).
        settings: the app's settings.
        route: the atmosphere route it was opened on.
        uuid: the client's uuid (its tracking id).
        params: the Atmosphere parameters of the opening request.
        request: the opening request, as the client object sees it.
        session: the Flask session at connect time (a read-only mapping).
        environ: the opening request's WSGI environ without its body or
            server objects: ``receive`` runs in a request context made from it.
        binding: the resume key the client is bound to, or ``None``.
    """
    __slots__ = ("atmosphere", "app", "settings", "uuid", "path", "route", "transport", "params",
                 "wire_format", "takeover", "checkpointed",
                 "mailbox", "keeps", "carrier", "direct", "framing", "poll_answered", "client",
                 "environ", "session", "binding", "_lost_reported", "_lock", "_opened", "_opening",
                 "_kicked",
                 "_finished", "_grace_timer", "__weakref__")

    def __init__(self, atmosphere: "Atmosphere", app: "Flask", settings: "Settings",
                 route: "Route", uuid: str, params: AtmosphereParams, request: "ConnectRequest",
                 session: Any, environ: dict[str, Any], binding: str | None):
        self.atmosphere = atmosphere
        self.app = app
        self.settings = settings
        self.uuid = uuid
        self.path = request.path
        self.route = route.rule
        self.transport = request.transport  # the latest request's, for the stats
        #: It takes the place of a client whose process died (``Connected.takeover``).
        self.takeover = False
        #: What its last checkpoint was taken from (``handover.checkpoint_all``).
        self.checkpointed: Any = None
        self.params = params
        self.wire_format = route.wire_format
        self.mailbox = Mailbox(settings.mailbox_max_messages, settings.mailbox_max_bytes,
                               settings.mailbox_overflow, settings.history_max_messages,
                               settings.history_max_bytes)
        #: The mailbox keeps what is sent (read for every direct write).
        self.keeps = False
        self.carrier: Carrier | None = None
        #: The serving carrier's ``direct`` and ``framing`` while it can take
        #: writes from the hub (read by the broadcaster for every broadcast).
        self.direct: Any = None
        self.framing: Any = None
        self.environ = environ
        self.session = session
        self.binding = binding
        self._lost_reported = 0  # drops by the drop-oldest policy told to the app
        self._lock = Semaphore()
        self._opened = False     # Connected was delivered
        self._opening = False    # Connected is being delivered
        self._kicked: CloseRequest | None = None  # closed while Connected ran
        self._finished = False   # Disconnected is decided (delivered or on its way)
        self._grace_timer: Any = None
        #: Long-polling: the client's last poll was answered, so its open
        #: fired already and its next poll need not send headers early.
        self.poll_answered = False
        client: "AtmosphereClient" = route.client_class()
        client.uuid = uuid
        client.request = request
        client.session = session
        client._connection = self
        self.client = client
        if params.acks:
            self.keep_history()

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

    @property
    def padding(self) -> str:
        """The heartbeat padding of this client (see ``protocol.padding``)."""
        return padding(self.params)

    def handshake(self) -> str:
        """This client's protocol handshake (§2.2), framed like its writes."""
        client_heartbeat_ms = int(self.settings.client_heartbeat_interval * 1000)
        return frame(handshake(self.uuid, client_heartbeat_ms, self.padding), self.track)

    def heartbeat_interval(self) -> float | None:
        """Seconds between server heartbeats for this client, or ``None``."""
        return heartbeat_interval(self.settings.heartbeat_interval, self.params.heartbeat_server)

    def keep_history(self) -> None:
        """From now on, keep what is sent to the client: it can say how far
        it got (an acknowledging client, an EventSource)."""
        self.mailbox.keep = self.keeps = True

    def resume(self, params: AtmosphereParams, offset: int | None,
               restored: bool = False) -> None:
        """A request of the client came back with ``params``: they are the
        client's from now on (a reconnect may bring another transport). If
        it says how far the client got (``offset``), what was sent after it
        is queued again, and what is gone for good is told to the app; so
        too for a mailbox just ``restored`` from a handover or checkpoint
        (``handover.py``), which may hold what the client got already."""
        self.params = params
        if params.acks:
            self.keep_history()
        if offset is not None and (self.keeps or restored):
            lost = self.mailbox.resume(offset)
            if lost:
                self.messages_lost(lost, "history")

    def messages_lost(self, count: int | None, reason: str, logged: bool = True) -> None:
        """``count`` messages meant for the client are gone for good: log it
        (if ``logged``), count it, and tell the client object (``MessagesLost``)."""
        if logged:
            log.warning("client %s on %s lost %d messages (%s)", self.uuid, self.path, count,
                        reason)
        if count is not None:
            self.atmosphere.counters.add("messages_lost", count)
        gevent.spawn(self.dispatch, MessagesLost(count, self.path, reason))

    def _report_drops(self) -> None:
        """Tell the app what the drop-oldest policy dropped in the last burst;
        log it at 1, 10, 100, … drops in all (a slow client must not flood
        the log)."""
        dropped = self.mailbox.dropped
        count, self._lost_reported = dropped - self._lost_reported, dropped
        if count:
            power = 10 ** (len(str(dropped)) - 1)  # the largest power of ten <= dropped
            self.messages_lost(count, "overflow", logged=power > dropped - count)

    # -- outbound, from any greenlet or thread --------------------------------

    def send(self, message: Any) -> None:
        """Queue ``message`` for this client (see ``AtmosphereClient.send``)."""
        outbound = Outbound(self.wire_format.render(message))
        self.atmosphere.counters.add("sends")
        broadcaster = self.atmosphere.broadcaster
        broadcaster.call(self.push, outbound)
        if broadcaster.pressing:
            broadcaster.relieve()

    def broadcast(self, message: Any, to: Any) -> None:
        """Broadcast to this client's broadcaster (see ``AtmosphereClient.broadcast``)."""
        self.atmosphere.broadcaster.publish(
            Broadcast(self.path, message, as_filter(to), sender=self.uuid, exact=True))

    def close(self, code: int = 1000, reason: str = "", error: BaseException | None = None,
              drain: bool = True, final: bool = False) -> None:
        """End the connection from the server side (from any greenlet or
        thread). Called while ``Connected`` runs, it is a refusal: nothing
        is delivered, and the client gets only the close."""
        request = CloseRequest(code, reason, drain, error, final)
        if self._opening and self.atmosphere.broadcaster.on_hub_thread():
            self._kicked = self._kicked or request
            return
        self.atmosphere.broadcaster.call(self.close_now, request)

    def close_now(self, request: CloseRequest) -> None:
        """``close`` on the hub thread: close the mailbox as ``request``
        says and tell the request serving the client, which says goodbye."""
        if self._opening:  # from elsewhere while Connected runs: a refusal too
            self._kicked = self._kicked or request
            return
        if request.final:
            self.atmosphere.registry.tombstone(self.uuid, self._refusal(request),
                                               self.settings.grace_period)
        if self.close_mailbox(request):
            if self.carrier is None:
                gevent.spawn(self.finish)  # no request to tell: done now
            else:
                self._wake()

    @staticmethod
    def _refusal(request: CloseRequest) -> Refusal:
        """What the return of a client closed with ``request`` gets."""
        return Refusal(410, request.reason or "closed by the server", close_code=request.code)

    def close_mailbox(self, request: CloseRequest) -> bool:
        """Close the mailbox as ``request`` says (only the first call counts:
        returns whether it did). From then on nothing is written from the
        hub: what is queued drains (if ``request`` says so) through the
        transport's writer, and nothing new is queued."""
        if not self.mailbox.close(request):
            return False
        self._stop_direct()
        return True

    def _stop_direct(self) -> None:
        """The one place ``direct`` is cleared. The hub writes to a client
        at once (``direct``) only while a request that can take such writes
        serves it, that request's peer is there, and the mailbox is open:
        so it is cleared when the mailbox closes (or overflows), when the
        peer of the serving request is lost, and when that request ends;
        ``attach`` sets it for the new request."""
        self.direct = None

    def _wake(self) -> None:
        carrier = self.carrier
        if carrier is not None and carrier.wake is not None:
            carrier.wake()

    def push(self, outbound: Outbound) -> None:
        """Write ``outbound`` at once if the transport can, else queue it
        (hub thread only)."""
        direct = self.direct
        self.atmosphere.counters.add("deliveries")
        if direct is not None and direct.write_now(self.framing.encode([outbound])):
            self.mailbox.sent_now(outbound)
        else:
            self.enqueue(outbound)

    def requeue(self, batch: list[tuple[int, Outbound]]) -> None:
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
            self._stop_direct()
            log.warning("disconnecting client %s on %s: %s", self.uuid, self.path,
                        mailbox.close_request.error if mailbox.close_request else None)
            self.atmosphere.counters.add("slow_consumers")
            if self.carrier is None:
                gevent.spawn(self.finish)
            else:  # its writer says goodbye, unless a stalled write holds it
                gevent.spawn_later(STUCK_WRITER_GRACE, self._cut_if_stuck, self.carrier)
        elif mailbox.dropped != dropped:
            self.atmosphere.counters.add("messages_dropped", mailbox.dropped - dropped)
            if self._lost_reported == dropped:
                gevent.spawn(self._report_drops)  # once per burst, after it
        if mailbox.pressed:
            self.atmosphere.broadcaster.pressed(self)
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
        self.transport = carrier.transport
        self.direct, self.framing = carrier.direct, carrier.framing
        self.mailbox.interrupt()
        if previous is not None:
            if self.params.acks:
                previous.abort()  # the client said what it has: the old request is of no use
            elif previous.wake is not None:
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
            self._stop_direct()
            self.mailbox.interrupt()

    def detach(self, carrier: Carrier | None, gone: bool = False,
               error: BaseException | None = None) -> None:
        """``carrier`` has ended (``None``: the client was opened without a
        request that stays, e.g. by a long-poll's handshake). The client is
        gone now if it said so (``gone``: a close frame, a close request),
        if it cannot come back, or if the server closed it; else it has
        ``ATMOSPHERE_GRACE_PERIOD`` seconds to come back with its tracking id."""
        if self.carrier is not carrier:
            return  # superseded: the newer request carries on
        self.carrier = None
        self._stop_direct()
        if self._finished:
            return
        grace = self.settings.grace_period
        if gone or not self.resumable or self.mailbox.closed or grace <= 0:
            self.finish(error)
            return
        timer = self._grace_timer
        if timer is None:
            timer = self._grace_timer = gevent.get_hub().loop.timer(grace, grace)
        # One timer per connection, restarted for the whole grace period:
        # ``again`` (libev's ev_timer_again), not ``start``, which would go
        # on from what was left when ``attach`` stopped it, so that the gaps
        # between a long-poll's polls would add up to the grace period.
        timer.again(self._grace_expired)

    def _grace_expired(self) -> None:
        timer, self._grace_timer = self._grace_timer, None
        if timer is not None:
            timer.close()  # (it repeats: ``again`` needs a repeat interval)
        if self.carrier is None and not self._finished:
            log.info("client %s on %s did not come back within %ss", self.uuid, self.path,
                     self.settings.grace_period)
            gevent.spawn(self.finish, None, True)

    # -- events ---------------------------------------------------------------

    def open(self) -> Refusal | None:
        """Register the client, then deliver ``Connected``. Nothing is
        written to the client meanwhile (no request is attached yet): what
        is sent or broadcast to it waits in its mailbox.

        With the Redis backplane, the client's directory entry is in Redis
        when it returns (``Remote.await_claim``): the request's answer goes
        after it, so that the client's next request, on any process, finds
        the client here instead of opening it a second time.

        Returns:
            ``None``, or, if ``Connected`` closed the client (a refusal),
            what its request is answered with; the client is finished then,
            and got nothing.
        """
        self.atmosphere.registry.add(self)
        self.atmosphere.counters.add("connects")
        remote = self.atmosphere.remote
        claimed = None
        if remote is not None and self.resumable:  # its requests may land on other processes
            claimed = Event()
            remote.forwarding.claim(self.uuid, self.path, self.binding, self.settings.grace_period,
                                    claimed.set)
        self._opened = self._opening = True
        try:
            self.dispatch(Connected(self.takeover))
        finally:
            self._opening = False
        kicked = self._kicked
        if kicked is None:
            if remote is not None and self.resumable:
                # Its first checkpoint, with what Connected sent it, between
                # two fan-outs: if this process dies before the next refresh,
                # a taker goes on from here, not from nothing.
                self.atmosphere.broadcaster.call(handover.checkpoint, remote, [self])
            if claimed is not None and remote is not None:
                remote.await_claim(claimed)
            return None
        self._kicked = None
        request = CloseRequest(kicked.code, kicked.reason, False, kicked.error, kicked.final)
        self.close_now(request)
        self.finish()
        return self._refusal(request)

    def inbound(self, text: str) -> None:
        """Deliver one inbound message; an Atmosphere client's heartbeat (§5.2)
        is swallowed."""
        if self.params.is_atmosphere and is_heartbeat(text, self.padding):
            return
        self.atmosphere.counters.add("messages_in")
        self.dispatch(self.wire_format.parse(text))

    def dispatch(self, event: Any) -> None:
        """Run the client's ``receive`` for ``event``, one event at a time.
        Nothing is delivered after ``Disconnected``."""
        with self._lock:
            if self._finished and not isinstance(event, Disconnected):
                return
            self._receive(event)

    def _receive(self, event: Any) -> None:
        """``receive(event)`` in a request context made from the opening
        request (``flask.request``, ``flask.session`` read-only, ``url_for``).

        An ``Exception`` becomes an ``Error`` event; the client stays. Any
        other ``BaseException`` the app raises (a ``gevent.Timeout`` it
        started, ``SystemExit``, ``KeyboardInterrupt``) is reported too, and
        the client is closed cleanly (1011): it never takes the server or
        the client's greenlets down. Only a ``GreenletExit`` (the greenlet
        being killed, e.g. at shutdown) goes on, after the close is asked."""
        with self.atmosphere.client_context(self, self._opening):
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
            except BaseException as exc:  # noqa: B036 -- nothing may escape receive
                self.atmosphere.report_error(self.client, exc)
                if not isinstance(event, Disconnected):
                    self.close(1011, "internal error", error=exc, drain=False)
                if isinstance(exc, GreenletExit):
                    raise

    def finish(self, error: BaseException | None = None, expired: bool = False) -> None:
        """Deliver ``Disconnected`` (exactly once) and unregister the client.

        It is ``ServerDisconnected`` if the server asked to close (``close``,
        a full mailbox, shutdown), else ``ClientDisconnected``; ``error`` is
        what ended the connection, if anything did; ``expired``: the grace
        period ran out. A client that never got ``Connected`` gets no
        ``Disconnected`` either.
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
        self.atmosphere.counters.disconnected(disconnect_reason(request, error, expired))
        if request is None:
            self.close_mailbox(CloseRequest(1000, "", drain=False, error=error))
            by: ClientDisconnected | ServerDisconnected = ClientDisconnected()
        else:  # what a read saw after the server closed is no news
            by = ServerDisconnected()
            error = request.error
        remote = self.atmosphere.remote
        if remote is not None:
            remote.forwarding.release(self.uuid)
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

