"""``AtmosphereClient``: the app's object for one connection."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from .filters import SkipSelf

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection

__all__ = ["AtmosphereClient", "ConnectRequest"]


@dataclass(frozen=True)
class ConnectRequest:
    """The HTTP request that opened a connection, as it was at connect time.

    Attributes:
        path: the request path, which is the client's broadcaster (``/rooms/blue``).
        view_args: the route variables (``{"room": "blue"}``).
        args: the query parameters, without the Atmosphere protocol's own
            (``X-Atmosphere-*``, ``X-atmo-protocol``, ``_``, …).
        headers: the request headers.
        remote_addr: the peer's address, as Flask's ``request.remote_addr``.
        transport: the transport in use (``"websocket"``, …).
    """
    path: str
    view_args: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    remote_addr: str | None = None
    transport: str = "websocket"


class AtmosphereClient:
    """One instance per connection; subclass it and bind it to a route with
    ``@atmosphere.route(rule)``.

    Attributes, set before ``Connected`` is delivered:
        uuid (str): the connection's unique id (the Atmosphere tracking id).
        request (ConnectRequest): the request that opened the connection.
        session (Mapping): a read-only copy of the Flask session at connect time.
    """

    uuid: str
    request: ConnectRequest
    session: Mapping[str, Any]
    _connection: "Connection"

    def receive(self, event) -> None:
        """Called with each event (``Connected``, ``TextMessage``, ``JsonMessage``,
        ``Error``, ``Disconnected``), one at a time and in order, inside the
        app context. An exception raised here becomes an ``Error`` event and a
        call of the app's error handlers; the connection stays up."""

    def send(self, message: Any) -> None:
        """Send ``message`` to this client only. A ``str`` goes out as text;
        anything else is rendered by the route's wire format (JSON by default).
        Safe from any greenlet or thread.

        Raises:
            TypeError: the route's wire format cannot render ``message``.
        """
        self._connection.send(message)

    def broadcast(self, message: Any, to: Any = SkipSelf) -> None:
        """Send ``message`` to the clients of this client's broadcaster (its
        concrete path) that the client filter ``to`` allows: by default every
        one but this client. ``to`` is a ``ClientFilter`` or a callable
        ``(client) -> bool``. Safe from any greenlet or thread."""
        self._connection.broadcast(message, to)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End this connection from the server side once what is queued is
        delivered. A WebSocket closes with exactly ``code`` and ``reason``
        (RFC 6455 §7.4). ``Disconnected(ServerDisconnected())`` follows.

        Raises:
            ValueError: ``code`` may not be sent (RFC 6455 §7.4.1: 1000-1003,
                1007-1014 and 3000-4999 may; 1005, 1006 and 1015 never), or
                ``reason`` is longer than 123 bytes of UTF-8.
        """
        if not (code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999):
            raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        self._connection.close(code, reason)

    @property
    def path(self) -> str:
        """The broadcaster this client belongs to (its request path)."""
        return self._connection.path

    def __repr__(self) -> str:
        uuid = getattr(self, "uuid", "?")
        return f"<{type(self).__name__} {uuid}>"


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))
