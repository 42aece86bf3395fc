"""The lean path for polls: a known long-polling client's polls answered
in front of Flask.

A long-polling client sends one GET per answer it gets (§4.2), so under load
most requests are polls of clients the server knows already. Such a poll is
answered here with the same :class:`~..transports.longpolling.Poll` as the
endpoint's, when:

* it is a GET, not an upgrade, with ``X-Atmosphere-tracking-id`` of a live
  client whose last poll went the full way (a *ticket*, :func:`remember`)
  with the same route key (``conditions.ROUTE_KEYS``: so Flask would route
  it to the same atmosphere route, and the request's own origin is the same);
* ``decisions.classify`` sends it to long-polling or JSONP, offered by the
  app, with well-formed parameters, none of them as a real header (§1.3);
* ``decisions.client_for`` lets it resume the client: the resume key it
  brings matches, and the app did not close the client;
* it comes from an origin that is allowed (a JSONP poll must prove its
  page's, as ``origins.page_origin`` says), with CORS headers as the
  endpoint makes them;
* the app does nothing of its own around requests
  (``conditions.plain_request``), and the poll carries no session cookie
  that Flask would refresh (``SESSION_REFRESH_EACH_REQUEST``).

Everything else goes the full way: new clients (tracking id ``0``) and
unknown tracking ids, POSTs (messages run the app's ``receive`` inside the
request), ``close``, streaming, SSE, preflights, refusals (a foreign origin
gets its 403 there, logged) and malformed requests.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable

from flask import Flask
from werkzeug.http import parse_cookie

from ..admission import binding_matches, key_from_cookies
from ..decisions import Ask, Kind, Resume, classify, client_for
from ..origins import cors_headers_for, origin_allowed, page_origin
from ..protocol import AtmosphereParams
from ..transports import longpolling
from ..transports.responses import NO_CACHE
from .conditions import (WSGIApp, carries_session, has_header_params, parse_query, plain_request,
                         route_key)

if TYPE_CHECKING:  # pragma: no cover
    from ..connection import Connection
    from ..extension import Atmosphere

__all__ = ["remember", "decide", "lean_poll"]

_NO_CORS: dict[str, str] = {}

#: How the official clients name the tracking id in the query (§1.1).
_TRACKING_ID = "X-Atmosphere-tracking-id="


class _Ticket:
    """What the lean path knows of a client from its last poll through
    Flask: the route key and own origin of that request, and the last query
    string it parsed for the client with what it made of it."""
    __slots__ = ("route_key", "own_origin", "query", "parsed")

    def __init__(self, route_key: tuple[Any, ...], own_origin: str):
        self.route_key = route_key
        self.own_origin = own_origin
        self.query: str | None = None
        self.parsed: tuple[dict[str, str], AtmosphereParams] | None = None


_tickets: "weakref.WeakKeyDictionary[Connection, _Ticket]" = weakref.WeakKeyDictionary()


def remember(connection: "Connection", environ: dict[str, Any], own_origin: str) -> None:
    """Note that a poll of ``connection`` went the full way with ``environ``
    (the request's WSGI environ, as Flask saw it) and that the request's own
    origin was ``own_origin`` (``"http://host:port"``): its next polls with
    the same route key may take the lean path."""
    _tickets[connection] = _Ticket(route_key(environ), own_origin)


def lean_poll(atmosphere: "Atmosphere", app: Flask, environ: dict[str, Any]) -> WSGIApp | None:
    """The WSGI app that answers the poll ``environ`` on the lean path,
    or ``None`` if the request must go the full way. Once it returns an
    app, the poll is attached to its client."""
    decided = decide(atmosphere, app, environ)
    if decided is None:
        return None
    connection, params, callback, cors = decided
    connection.resume(params, params.offset)  # as the full path's resume does
    poll = longpolling.Poll(connection, environ, callback)
    headers = list(NO_CACHE.items())
    headers.append(("Content-Type", longpolling.content_type(callback)))
    headers.extend(cors.items())

    def respond(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return poll.respond(start_response, "200 OK", headers)
    return respond


def decide(atmosphere: "Atmosphere", app: Flask, environ: dict[str, Any]
           ) -> tuple["Connection", AtmosphereParams, str | None, dict[str, str]] | None:
    """What the lean path does with the poll ``environ``, changing nothing:
    ``(client, parameters, JSONP callback, CORS headers)`` of a poll it
    answers, or ``None`` for a request that goes the full way."""
    method = environ.get("REQUEST_METHOD", "")
    if method != "GET" or environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        return None
    query = environ.get("QUERY_STRING", "")
    registry = atmosphere.registry
    # The tracking id as the official clients write it, as a hint: the
    # query is parsed anew unless it is the one parsed last for that client.
    start = query.find(_TRACKING_ID)
    connection = None
    if start >= 0:
        start += len(_TRACKING_ID)
        end = query.find("&", start)
        connection = registry.get(query[start:] if end < 0 else query[start:end])
    ticket = None if connection is None else _tickets.get(connection)
    if ticket is not None and ticket.query == query and ticket.parsed is not None:
        args, params = ticket.parsed
    else:
        parsed = parse_query(query)
        if parsed is None:
            return None
        args, params = parsed
        connection = registry.get(params.tracking_id)
        ticket = None if connection is None else _tickets.get(connection)
        if ticket is None:
            return None
        ticket.query, ticket.parsed = query, parsed
    assert connection is not None
    if route_key(environ) != ticket.route_key:
        return None
    settings = atmosphere.settings(app)
    ask = classify(method, False, False, params, "X-Atmosphere-Post-Body" in args,
                   settings.transports)
    if not isinstance(ask, Ask) or ask.kind is not Kind.OPEN \
            or ask.transport not in ("long-polling", "jsonp"):
        return None
    if has_header_params(environ) or not plain_request(atmosphere, app) \
            or (carries_session(app, environ) and app.config["SESSION_REFRESH_EACH_REQUEST"]):
        return None
    key = key_from_cookies(parse_cookie(environ.get("HTTP_COOKIE", "")), settings.resume_cookie)
    held = not connection.finished  # on the ticket's path: the route key says so
    decision = client_for(params.tracking_id, held,
                          held and binding_matches(connection.binding, key),
                          registry.closed(params.tracking_id))
    if not isinstance(decision, Resume):
        return None
    own = ticket.own_origin
    origin = environ.get("HTTP_ORIGIN")
    if ask.transport == "jsonp":
        page = page_origin(origin, environ.get("HTTP_SEC_FETCH_SITE"),
                           environ.get("HTTP_REFERER"), own)
        if page is None or not origin_allowed(page, settings.allowed_origins, own):
            return None  # refused the full way: 403, logged
    if origin is None:
        cors = _NO_CORS
    elif origin_allowed(origin, settings.allowed_origins, own):
        cors = cors_headers_for(origin, settings.allowed_origins, own)
    else:
        return None  # refused the full way: 403, logged
    callback = args.get("jsonpTransport", "atmosphere") if ask.transport == "jsonp" else None
    return connection, params, callback, cors
