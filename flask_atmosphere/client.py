"""``AtmosphereClient``: the app's object for one connection."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import Headers

from .filters import SkipSelf
from .transports.wsframes import sendable_close_code

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection

__all__ = ["AtmosphereClient", "ConnectRequest", "ReadOnlySession"]


@dataclass(frozen=True)
class ConnectRequest:
    """The HTTP request that opened a connection, as it was at connect time.

    Attributes:
        path: the request path, which is the client's broadcaster
            (``/rooms/blue``), percent-decoded.
        view_args: the route variables (``{"room": "blue"}``).
        args: the query parameters, without the Atmosphere protocol's own
            (``X-Atmosphere-*``, ``X-atmo-protocol``, ``_``, …).
        headers: the request headers (Werkzeug's ``Headers``, read-only).
        remote_addr: the peer's address, as Flask's ``request.remote_addr``
            (behind ``ProxyFix``, the client's).
        transport: the transport in use (``"websocket"``, …).
    """
    path: str
    view_args: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, str] = field(default_factory=dict)
    headers: Headers = field(default_factory=Headers)
    remote_addr: str | None = None
    transport: str = "websocket"


class ReadOnlySession(Mapping[str, Any]):
    """A copy of the Flask session as it was when the client connected: what
    ``self.session`` and ``flask.session`` are inside ``receive``, on every
    transport. Changing it raises ``TypeError``: no response carries a
    session cookie back from there (on a WebSocket, none ever could).

    Args:
        data: the session's items.
        permanent: whether the session was permanent.
    """
    __slots__ = ("_data", "permanent", "accessed")
    new = False
    modified = False

    def __init__(self, data: Mapping[str, Any], permanent: bool = False):
        self._data = dict(data)
        self.permanent = permanent
        self.accessed = False  # Flask marks it

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ReadOnlySession({self._data!r})"

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("the session is read-only inside receive (it is the session of the "
                        "request that opened the connection); change it in an ordinary view")

    __setitem__ = __delitem__ = _read_only
    pop = popitem = clear = update = setdefault = _read_only


class AtmosphereClient:
    """One instance per connection; subclass it and bind it to a route with
    ``@atmosphere.route(rule)``.

    Attributes, set before ``Connected`` is delivered:
        uuid (str): the connection's unique id (the Atmosphere tracking id).
        request (ConnectRequest): the request that opened the connection.
        session (ReadOnlySession): the Flask session at connect time.

    Inside ``receive``, ``flask.request`` is that opening request too (its
    body aside), ``flask.session`` is ``self.session``, and ``url_for``
    builds URLs as it did there, whatever the transport and the event.
    """

    uuid: str
    request: ConnectRequest
    session: Mapping[str, Any]
    _connection: "Connection"

    def receive(self, event: Any) -> None:
        """Called with each event (``Connected``, ``TextMessage``, ``JsonMessage``,
        ``MessagesLost``, ``Error``, ``Disconnected``), one at a time and in
        order. An exception raised here becomes an ``Error`` event and a
        call of the app's error handlers; the connection stays up (any other
        ``BaseException`` closes it cleanly, with 1011)."""

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

        The client stays closed: a request that brings its tracking id
        within ``ATMOSPHERE_GRACE_PERIOD`` is refused (HTTP 410 with
        ``reason``; a WebSocket server that upgrades before asking closes
        with ``code``). Called while ``Connected`` runs, it refuses the
        client: nothing queued for it is delivered, and its request gets
        only the refusal.

        Raises:
            ValueError: ``code`` may not be sent (RFC 6455 §7.4.1: 1000-1003,
                1007-1014 and 3000-4999 may; 1005, 1006 and 1015 never), or
                ``reason`` is longer than 123 bytes of UTF-8.
        """
        if not sendable_close_code(code):
            raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        self._connection.close(code, reason, final=True)

    @property
    def path(self) -> str:
        """The broadcaster this client belongs to (its request path)."""
        return self._connection.path

    def __repr__(self) -> str:
        uuid = getattr(self, "uuid", "?")
        return f"<{type(self).__name__} {uuid}>"
