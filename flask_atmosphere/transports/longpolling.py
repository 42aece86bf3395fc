"""Long-polling (§4.2) and its script-tag form, JSONP (§4.5).

Each GET is held until there is something to say, then completed: with
every queued message (each length-framed) when the client tracks message
sizes, else with just one, since an untracked client would read several as
one (Appendix C); with a heartbeat after a quiet period. Between two polls
the client's mailbox keeps filling; the next poll gets it all, in order.

The first request with tracking id ``0`` and ``X-atmo-protocol`` gets only the
handshake, as its whole body (§2.3); the client is registered (and gets
``Connected``) right then, so nothing broadcast before its next poll is lost.
"""
from __future__ import annotations

import re

import simplejson
from flask import Response  # not werkzeug's: Flask would recast it (force_type)

from ..connection import Carrier, Connection
from ..protocol import HEARTBEAT_PADDING, frame
from .http import NO_CACHE, LiveResponse, socket_abort, watch_eof

__all__ = ["serve"]

_NOT_A_NAME = re.compile(r"[^A-Za-z0-9]")


def serve(connection: Connection, new: bool, environ, jsonp_callback: str | None = None):
    """Serve one poll of ``connection``.

    Args:
        connection: the client; ``new`` if it gets ``Connected``.
        environ: the WSGI environ of the request.
        jsonp_callback: the ``jsonpTransport`` parameter for JSONP, else ``None``.
    """
    settings = connection.atmosphere.settings(connection.app)
    params = connection.params
    track = connection.track
    content_type = ("text/plain; charset=utf-8" if jsonp_callback is None
                    else "application/javascript; charset=utf-8")
    carrier = Carrier(socket_abort(environ))
    connection.attach(carrier)
    if new:
        connection.open()

    if params.protocol and params.tracking_id == "0":
        connection.detach(carrier)  # it polls again at once, with its uuid
        return Response(_encode(connection.handshake(), jsonp_callback), content_type=content_type,
                        headers=NO_CACHE)

    heartbeat = connection.heartbeat_interval()
    mailbox = connection.mailbox
    failure: list = []

    def body(write) -> None:
        stop_watching = watch_eof(environ, lambda: connection.lost(carrier))
        try:
            batch = mailbox.take(heartbeat, limit=None if track else 1)
        finally:
            stop_watching()
        if batch is None:
            return  # closed: an empty answer
        if not connection.serves(carrier):  # another poll took over, or the peer left
            if batch:
                mailbox.requeue(batch)
            return
        if not batch:
            data = _encode(frame(HEARTBEAT_PADDING, track), jsonp_callback)
        elif jsonp_callback is None:  # each message framed once for all its clients
            data = b"".join(outbound.encoded(track) for _, outbound in batch)
        else:
            data = _encode("".join(frame(o.text, track) for _, o in batch), jsonp_callback)
        try:
            write(data)
        except OSError as exc:
            if batch:
                mailbox.requeue(batch)
            failure.append(exc)
            raise
        mailbox.written()

    def done() -> None:
        connection.detach(carrier, error=failure[0] if failure else None)

    return LiveResponse(body, done, settings.write_timeout, content_type=content_type)


def _encode(text: str, jsonp_callback: str | None) -> bytes:
    if jsonp_callback is None:
        return text.encode("utf-8")
    # The Java server's JSONPAtmosphereInterceptor body; JSON string escaping
    # is valid JavaScript (U+2028 and U+2029 escaped too).
    name = _NOT_A_NAME.sub("", jsonp_callback)
    return f'{name}({{"message" : {simplejson.dumps(text)}}});'.encode("utf-8")
