"""Transports: picks the one a request asks for and hands it the client.

The choice follows the request (§10.2): a WebSocket upgrade (done by
gevent-websocket's handler, found as ``environ["wsgi.websocket"]``); else
``X-Atmosphere-Transport`` from the query or a header (§1.4):

* ``close``, any method: the client says goodbye (§4.7);
* a POST, whatever its transport value, carries one message upstream (§4.6);
* a GET with ``long-polling``, ``polling``, ``jsonp``, ``streaming`` or ``sse``
  opens (or resumes) the client on that transport.

A request with a tracking id of a live client of the same path resumes that
client; any other tracking id gets a fresh client, never an error (§8.1).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent
from flask import Response, current_app, request, session

from ..admission import cors_headers, origin_allowed, own_origin, preflight, refusal
from ..client import ConnectRequest
from ..connection import Connection
from ..protocol import (PROTOCOL_PARAMS, AtmosphereParams, ProtocolError, VersionNotSupported,
                        new_tracking_id, parse_params, valid_tracking_id)
from . import fastpath, longpolling, sse, streaming, websocket
from .http import NO_CACHE, error_response

if TYPE_CHECKING:  # pragma: no cover
    from ..extension import Atmosphere, Route

__all__ = ["serve", "admit_upgrade", "REFUSAL_KEY"]

#: The WSGI environ key of an answer decided before a WebSocket upgrade.
REFUSAL_KEY = "flask_atmosphere.refusal"

log = logging.getLogger("flask_atmosphere")

#: X-Atmosphere-Transport values that open a client over HTTP, with the
#: ATMOSPHERE_TRANSPORTS name that offers each (the legacy client's one-shot
#: "polling" is served as a long-poll).
_HTTP_TRANSPORTS = {"long-polling": "long-polling", "polling": "long-polling", "jsonp": "jsonp",
                    "streaming": "streaming", "sse": "sse"}


def serve(atmosphere: "Atmosphere", route: "Route") -> Response:
    """Serve the current Flask request on ``route``: the body of every
    atmosphere route's view."""
    refused = request.environ.get(REFUSAL_KEY)  # decided before a WebSocket upgrade
    if refused is not None:
        return refused
    if request.method == "OPTIONS":
        return preflight(atmosphere)
    ws = request.environ.get("wsgi.websocket")
    try:
        response = _dispatch(atmosphere, route, ws)
    except _Refusal as refusal_:
        if ws is not None:  # upgraded by a server that could not ask first
            websocket.refuse(ws, 1008, refusal_.response.headers["X-Atmosphere-error"][:120])
        response = refusal_.response
    response.headers.update(cors_headers(atmosphere))
    return response


def admit_upgrade(atmosphere: "Atmosphere", route: "Route") -> Response | None:
    """The answer that refuses a WebSocket upgrade of the current request
    before it happens (origin, limits, ``before_connect``), or ``None``."""
    if "websocket" not in atmosphere.settings().transports:
        return error_response(501, "Websocket protocol not supported")
    try:
        params = parse_params(request.args, request.headers)
    except ProtocolError as exc:
        return error_response(501 if isinstance(exc, VersionNotSupported) else 400, str(exc))
    try:
        _check_origin(atmosphere)
        if _resumed(atmosphere, params) is None:
            _admit(atmosphere)
    except _Refusal as refused:
        return refused.response
    return None


class _Refusal(Exception):
    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


def _check_origin(atmosphere: "Atmosphere") -> None:
    if not origin_allowed(request.headers.get("Origin"), atmosphere.settings().allowed_origins,
                          own_origin()):
        log.info("refused %s %s: origin %s not allowed", request.method, request.path,
                 request.headers.get("Origin"))
        raise _Refusal(error_response(403, "origin not allowed"))


def _admit(atmosphere: "Atmosphere") -> None:
    refused = refusal(atmosphere)
    if refused is not None:
        raise _Refusal(refused)


def _dispatch(atmosphere: "Atmosphere", route: "Route", ws) -> Response:
    try:
        params = parse_params(request.args, request.headers)
    except VersionNotSupported as exc:
        return error_response(501, str(exc))
    except ProtocolError as exc:
        log.info("refused %s %s: %s", request.method, request.full_path, exc)
        if ws is not None:
            websocket.refuse(ws, 1008, str(exc)[:120])
            return Response()
        return error_response(400, str(exc))
    _check_origin(atmosphere)
    atmosphere.broadcaster.attach(gevent.get_hub())
    offered = atmosphere.settings().transports
    if ws is not None and "websocket" not in offered:
        raise _Refusal(error_response(501, "Websocket protocol not supported"))

    if ws is not None:
        connection, new = _connection_for(atmosphere, route, params, "websocket")
        websocket.serve(connection, new, ws, request.environ)
        return Response()
    transport = params.transport
    if transport == "close":
        return _close(atmosphere, params)
    post_body = request.args.get("X-Atmosphere-Post-Body")
    if request.method == "POST" or post_body is not None:
        return _message(atmosphere, route, params, post_body)
    offer = _HTTP_TRANSPORTS.get(transport)
    if offer is not None:
        if offer not in offered:
            return error_response(501, f"transport {transport} not supported")
        connection, new = _connection_for(atmosphere, route, params, transport)
        if offer == "streaming":
            return streaming.serve(connection, new, request.environ)
        if offer == "sse":
            return sse.serve(connection, new, request.environ, request.headers.get("Last-Event-ID"))
        callback = request.args.get("jsonpTransport", "atmosphere") if offer == "jsonp" else None
        fastpath.remember(connection, request.environ, own_origin())  # its next polls may go lean
        return longpolling.serve(connection, new, request.environ, callback)
    if transport == "websocket" or request.headers.get("Upgrade", "").lower() == "websocket":
        # Not upgraded: the server has no WebSocket support (§8.1); clients fall back.
        return error_response(501, "Websocket protocol not supported")
    return error_response(400, "an atmosphere route needs a WebSocket upgrade or "
                               "X-Atmosphere-Transport")


def _connection_for(atmosphere: "Atmosphere", route: "Route", params: AtmosphereParams,
                    transport: str, resume: bool = True) -> tuple[Connection, bool]:
    """The live client this request resumes, or a new one: ``(connection, new)``.

    A tracking id of a live client of this path resumes it (and, with
    ``resume``, the request's parameters become the client's: a reconnect
    may bring another transport). A valid tracking id nobody holds is adopted
    as the new client's uuid, as Java does; anything else gets a fresh uuid4
    (§2.6).
    """
    existing = _resumed(atmosphere, params)
    if existing is not None:
        if resume:
            existing.params = params
        return existing, False
    _admit(atmosphere)
    tracking_id = params.tracking_id
    free = valid_tracking_id(tracking_id) and atmosphere.registry.get(tracking_id) is None
    uuid = tracking_id if free else new_tracking_id()
    request_info = ConnectRequest(
        path=request.path,
        view_args=dict(request.view_args or {}),
        args={k: v for k, v in request.args.items() if k.lower() not in PROTOCOL_PARAMS},
        headers=dict(request.headers),
        remote_addr=request.remote_addr,
        transport=transport,
    )
    connection = Connection(atmosphere, current_app._get_current_object(), route, uuid, params,
                            request_info, session)
    return connection, True


def _resumed(atmosphere: "Atmosphere", params: AtmosphereParams) -> Connection | None:
    """The live client of this path whose tracking id the request brings."""
    if params.tracking_id == "0":
        return None
    existing = atmosphere.registry.get(params.tracking_id)
    if existing is not None and existing.path == request.path and not existing.finished:
        return existing
    return None


def _message(atmosphere: "Atmosphere", route: "Route", params: AtmosphereParams,
             post_body: str | None) -> Response:
    """One message upstream (§4.6): a POST body, or JSONP's
    ``X-Atmosphere-Post-Body``. Decoded as UTF-8 whatever the Content-Type
    says (Appendix C). Answered with an empty 200 once ``receive`` is done."""
    limit = atmosphere.settings().max_message_size
    if post_body is not None:
        text = post_body
    else:
        if (request.content_length or 0) > limit:
            return _too_big(limit)
        data = request.stream.read(limit + 1)
        if len(data) > limit:
            return _too_big(limit)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            log.info("refused a message to %s: not UTF-8", request.path)
            return error_response(400, "the message is not UTF-8 text")
    if len(text.encode("utf-8")) > limit:
        return _too_big(limit)
    connection, new = _connection_for(atmosphere, route, params, params.transport or "polling",
                                      resume=False)
    if new:
        # A client nobody knows yet gets a fresh state, as Java does: it is
        # opened here and waits for its own GET within the grace period (or
        # ends at once if it cannot come back).
        connection.open()
        connection.inbound(text)
        connection.detach(None)
    else:
        connection.inbound(text)
    return Response("", mimetype="text/plain", headers=NO_CACHE)


def _too_big(limit: int) -> Response:
    log.info("refused a message to %s: more than %d bytes", request.path, limit)
    return error_response(413, f"message larger than {limit} bytes")


def _close(atmosphere: "Atmosphere", params: AtmosphereParams) -> Response:
    """``X-Atmosphere-Transport=close`` (§4.7): the client leaves now; a held
    request of it is answered. An unknown tracking id is fine too."""
    connection = atmosphere.registry.get(params.tracking_id)
    if connection is not None and connection.path == request.path:
        connection.finish()
    return Response("", mimetype="text/plain", headers=NO_CACHE)
