"""The life of one connection, whatever its transport.

A transport creates a :class:`Connection`, writes the handshake, calls
:meth:`Connection.open`, feeds inbound text to :meth:`Connection.inbound`,
writes what :attr:`Connection.mailbox` gives it, and calls
:meth:`Connection.finish` exactly once at the end. This module owns the rules:
``Connected`` after registration, one event at a time and in order,
``Disconnected`` exactly once and last, errors in ``receive`` contained.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gevent.lock import Semaphore

from .broadcaster import Broadcast
from .events import Connected, Disconnected, Error, ClientDisconnected, ServerDisconnected
from .filters import as_filter
from .mailbox import CloseRequest, Mailbox, Outbound
from .protocol import AtmosphereParams, is_heartbeat

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .client import AtmosphereClient, ConnectRequest
    from .extension import Atmosphere, Route

__all__ = ["Connection"]

log = logging.getLogger("flask_atmosphere")


class Connection:
    """One client's connection.

    Args:
        atmosphere: the extension.
        app: the Flask app that serves it (``receive`` runs in its app context).
        route: the atmosphere route it was opened on.
        uuid: the client's uuid (its tracking id).
        params: the Atmosphere parameters of the opening request.
        request: the opening request, as the client sees it.
        session: the Flask session at connect time.
    """

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
        self.mailbox = Mailbox(settings.mailbox_max_messages, settings.mailbox_max_bytes)
        self._lock = Semaphore()
        self._finished = False
        client: "AtmosphereClient" = route.client_class()
        client.uuid = uuid
        client.request = request
        client.session = _frozen(session)
        client._connection = self
        self.client = client

    @property
    def track(self) -> bool:
        """Whether every write is length-framed (``X-Atmosphere-TrackMessageSize``)."""
        return self.params.track_message_size

    # -- outbound, from any greenlet or thread --------------------------------

    def send(self, message: Any) -> None:
        """Queue ``message`` for this client (see ``AtmosphereClient.send``)."""
        outbound = Outbound(self.wire_format.render(message))
        self.atmosphere.broadcaster.call(self.enqueue, outbound)

    def broadcast(self, message: Any, to: Any) -> None:
        """Broadcast to this client's broadcaster (see ``AtmosphereClient.broadcast``)."""
        self.atmosphere.broadcaster.publish(
            Broadcast(self.path, message, as_filter(to), sender=self.uuid, exact=True))

    def close(self, code: int = 1000, reason: str = "", error: BaseException | None = None,
              drain: bool = True) -> None:
        """Ask the transport to end the connection (server side)."""
        self.atmosphere.broadcaster.call(
            self.mailbox.close, CloseRequest(code, reason, drain=drain, error=error))

    def enqueue(self, outbound: Outbound) -> None:
        """Append to the mailbox (hub thread only); a full mailbox disconnects
        this client and logs why, once."""
        mailbox = self.mailbox
        if mailbox.closed:
            return
        if not mailbox.put(outbound):
            log.warning("disconnecting client %s on %s: %s", self.uuid, self.path,
                        mailbox.close_request.error)

    # -- events ---------------------------------------------------------------

    def open(self) -> None:
        """Register the client, then deliver ``Connected``."""
        self.atmosphere.registry.add(self)
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
            if self._finished:
                return
            if isinstance(event, Disconnected):
                self._finished = True
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
        """Deliver ``Disconnected`` (once) and unregister the client.

        It is ``ServerDisconnected`` if the server asked to close (``close``,
        a full mailbox, shutdown), else ``ClientDisconnected``; ``error`` is
        what ended the connection, if anything did.
        """
        request = self.mailbox.close_request
        if request is None:
            self.mailbox.close(CloseRequest(1000, "", drain=False, error=error))
            by = ClientDisconnected()
        else:
            by = ServerDisconnected()
            error = request.error or error
        try:
            self.dispatch(Disconnected(by, error))
        finally:
            self.atmosphere.registry.remove(self)
