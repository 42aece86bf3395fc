"""Transports: picks the one a request asks for and hands the connection to it.

The choice follows the request: a WebSocket upgrade (made by gevent-websocket's
handler, found as ``environ["wsgi.websocket"]``), else ``X-Atmosphere-Transport``
from the query or a header (§1.4).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent
from flask import Response, current_app, request, session

from ..client import ConnectRequest
from ..connection import Connection
from ..protocol import (PROTOCOL_PARAMS, ProtocolError, VersionNotSupported, new_tracking_id,
                        parse_params, valid_tracking_id)
from . import websocket

if TYPE_CHECKING:  # pragma: no cover
    from ..extension import Atmosphere, Route

__all__ = ["serve"]

log = logging.getLogger("flask_atmosphere")


def serve(atmosphere: "Atmosphere", route: "Route") -> Response:
    """Serve the current Flask request on ``route``: the body of every
    atmosphere route's view."""
    ws = request.environ.get("wsgi.websocket")
    try:
        params = parse_params(request.args, request.headers)
    except VersionNotSupported as exc:
        return _error(501, str(exc))
    except ProtocolError as exc:
        log.info("refused %s %s: %s", request.method, request.path, exc)
        if ws is not None:
            ws.close(1008, str(exc)[:120])
            return Response()
        return _error(400, str(exc))

    if ws is None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            # A server without gevent-websocket's handler cannot upgrade.
            return _error(501, "Websocket protocol not supported")
        return _error(501, f"transport {params.transport or 'http'!r} is not supported yet")

    atmosphere.broadcaster.attach(gevent.get_hub())
    connection = Connection(
        atmosphere, current_app._get_current_object(), route, _uuid_for(atmosphere, params.tracking_id),
        params, _connect_request("websocket"), session)
    websocket.serve(connection, ws)
    return Response()


def _uuid_for(atmosphere: "Atmosphere", tracking_id: str) -> str:
    """The client's uuid: its tracking id when it brings a valid one that no
    live connection holds (a reconnect), else a fresh one; an unknown tracking
    id is never an error (§2.6, §8.1)."""
    if valid_tracking_id(tracking_id) and atmosphere.registry.get(tracking_id) is None:
        return tracking_id
    return new_tracking_id()


def _connect_request(transport: str) -> ConnectRequest:
    return ConnectRequest(
        path=request.path,
        view_args=dict(request.view_args or {}),
        args={k: v for k, v in request.args.items() if k.lower() not in PROTOCOL_PARAMS},
        headers=dict(request.headers),
        remote_addr=request.remote_addr,
        transport=transport,
    )


def _error(status: int, reason: str) -> Response:
    """An error answer: a one-line reason in the body and in
    ``X-Atmosphere-error``, as the Java server sends it (§8.1)."""
    return Response(reason + "\n", status=status, mimetype="text/plain",
                    headers={"X-Atmosphere-error": reason})
