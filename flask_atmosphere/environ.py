"""The contract between a server and the transports: the WSGI environ keys
through which ``server.AtmosphereHandler`` offers more than PEP 3333 does.

Every key is optional. Under a server that offers none of them (gunicorn's
gevent-websocket worker, say) the transports still work: a WebSocket arrives
already upgraded by gevent-websocket (``environ["wsgi.websocket"]``), a held
response notices a vanished peer only at its next write, and a write is
bounded by a ``gevent.Timeout`` instead of the socket's own timeout.
"""
from __future__ import annotations

__all__ = ["SOCKET_KEY", "FINAL_WRITE_KEY", "UPGRADE_KEY", "GEVENT_WEBSOCKET_KEY"]

#: The request's gevent socket: a transport watches it for the peer leaving
#: while a response is held, bounds its writes with its timeout, and shuts
#: it down to cut a peer that stopped reading.
SOCKET_KEY = "flask_atmosphere.socket"

#: A ``write(data: bytes) -> None`` for the *last* piece of a response's
#: body: on a chunked response it sends the piece and the last chunk in one
#: syscall (pywsgi would send the last chunk on its own once the app returns).
FINAL_WRITE_KEY = "flask_atmosphere.write_final"

#: On a request that asks for a WebSocket upgrade (RFC 6455 §4.1), a
#: ``upgrade(headers: list[tuple[str, str]]) -> tuple[socket, bytes]`` that
#: sends the ``101 Switching Protocols`` answer with ``headers`` added (a
#: ``Set-Cookie``, say) and hands the socket over for good, with the bytes
#: its reader already holds beyond the request. The server neither reads nor
#: closes that socket afterwards. Raises ``OSError`` if the peer is gone.
#: The view calls it only once it has admitted the client: a refusal is an
#: ordinary HTTP answer, sent instead.
UPGRADE_KEY = "flask_atmosphere.upgrade"

#: Where gevent-websocket's handler puts the WebSocket it upgraded before
#: calling the app (its ``WebSocket`` object, whose ``handler.socket`` is the
#: request's socket).
GEVENT_WEBSOCKET_KEY = "wsgi.websocket"
