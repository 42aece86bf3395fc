"""The lean path for polls: a known long-polling client's polls answered
in front of Flask, by this process or, for a client another process holds,
forwarded to it (``remote.py``).

A long-polling client sends one GET per answer it gets (§4.2), so under load
most requests are polls of clients the server knows already. Such a poll is
answered here as the endpoint answers it (the same
:class:`~..transports.longpolling.Poll`, or the same ``Remote.relay``), when:

* it is a GET, not an upgrade, with ``X-Atmosphere-tracking-id`` of a
  client whose last poll here went the full way (a *ticket*: :func:`remember`
  for a live client held here, :func:`remember_away` for one forwarded to
  its holder) with the same route key (``conditions.ROUTE_KEYS``: so Flask
  would route it to the same atmosphere route, and the request's own origin
  is the same);
* ``decisions.classify`` sends it to long-polling or JSONP, offered by the
  app, with well-formed parameters, none of them as a real header (§1.3);
* ``decisions.client_for`` lets it resume the client held here: the resume
  key it brings matches, and the app did not close the client; or, for a
  client held elsewhere, nobody here holds it, and its holder, known alive
  (``Remote.holder``), holds it on the same path with the same resume key
  (``Remote.may_act``);
* it comes from an origin that is allowed (a JSONP poll must prove its
  page's, as ``origins.page_origin`` says), with CORS headers as the
  endpoint makes them;
* the app does nothing of its own around requests
  (``conditions.plain_request``), and the poll carries no session cookie
  that Flask would refresh (``SESSION_REFRESH_EACH_REQUEST``).

Everything else goes the full way: new clients (tracking id ``0``) and
unknown tracking ids, POSTs (messages run the app's ``receive`` inside the
request), ``close``, streaming, SSE, preflights, refusals (a foreign origin
gets its 403 there, logged), takeovers of a client whose holder died, and
malformed requests.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable

from flask import Flask
from werkzeug.http import parse_cookie

from ..admission import binding_matches, key_from_cookies
from ..backplane.forwarding import Holder
from ..decisions import Ask, Kind, Open, Resume, classify, client_for
from ..origins import cors_headers_for, origin_allowed, page_origin
from ..protocol import AtmosphereParams
from ..remote import Remote
from ..transports import longpolling
from ..transports.responses import NO_CACHE
from .conditions import (WSGIApp, carries_session, has_header_params, parse_query, plain_request,
                         route_key)

if TYPE_CHECKING:  # pragma: no cover
    from ..connection import Connection
    from ..extension import Atmosphere

__all__ = ["remember", "remember_away", "decide", "lean_poll"]

_NO_CORS: dict[str, str] = {}

#: How the official clients name the tracking id in the query (§1.1).
_TRACKING_ID = "X-Atmosphere-tracking-id="


class _Ticket:
    """What the lean path knows of a client from its last poll through
    Flask: the route key and own origin of that request, and the last query
    string it parsed for the client with what it made of it; for a client
    held elsewhere, its broadcaster path too (``broadcast.path_key``)."""
    __slots__ = ("route_key", "own_origin", "path", "query", "parsed")

    def __init__(self, route_key: tuple[Any, ...], own_origin: str, path: str = ""):
        self.route_key = route_key
        self.own_origin = own_origin
        self.path = path
        self.query: str | None = None
        self.parsed: tuple[dict[str, str], AtmosphereParams] | None = None


_tickets: "weakref.WeakKeyDictionary[Connection, _Ticket]" = weakref.WeakKeyDictionary()
#: The tickets of clients held by other processes, by tracking id, for each
#: app's forwarding (the least recently used go first).
_away: "weakref.WeakKeyDictionary[Remote, OrderedDict[str, _Ticket]]" = \
    weakref.WeakKeyDictionary()
#: Tickets of clients held elsewhere kept at most, per app.
AWAY_TICKETS = 65_536


def remember(connection: "Connection", environ: dict[str, Any], own_origin: str) -> None:
    """Note that a poll of ``connection`` went the full way with ``environ``
    (the request's WSGI environ, as Flask saw it) and that the request's own
    origin was ``own_origin`` (``"http://host:port"``): its next polls with
    the same route key may take the lean path."""
    _tickets[connection] = _Ticket(route_key(environ), own_origin)


def remember_away(remote: Remote, tracking_id: str, environ: dict[str, Any], own_origin: str,
                  path: str) -> None:
    """Note that a poll of the client ``tracking_id``, held by another
    process, on the broadcaster path ``path``, went the full way with
    ``environ`` and was forwarded (see :func:`remember`)."""
    away = _away.get(remote)
    if away is None:
        away = _away[remote] = OrderedDict()
    away[tracking_id] = _Ticket(route_key(environ), own_origin, path)
    away.move_to_end(tracking_id)
    if len(away) > AWAY_TICKETS:
        away.popitem(last=False)


def lean_poll(atmosphere: "Atmosphere", app: Flask, environ: dict[str, Any]) -> WSGIApp | None:
    """The WSGI app that answers the poll ``environ`` on the lean path,
    or ``None`` if the request must go the full way. Once it returns an
    app, the poll is attached to its client, or sent to its holder."""
    decided = _decide(atmosphere, app, environ)
    if decided is None:
        return None
    client, args, params, callback, cors = decided
    headers = list(NO_CACHE.items())
    headers.append(("Content-Type", longpolling.content_type(callback)))
    headers.extend(cors.items())
    if isinstance(client, Holder):  # held elsewhere: as ``endpoint._forward_open``
        assert atmosphere.remote is not None
        relay = atmosphere.remote.relay(
            "poll", client, params.tracking_id, atmosphere.settings(app), environ, args=args,
            headers={}, callback=callback,  # (none: else the poll went the full way)
            transport="jsonp" if callback is not None else "long-polling",
            last_event_id=environ.get("HTTP_LAST_EVENT_ID"))

        def forward(environ: dict[str, Any], start_response: Callable[..., Any]
                    ) -> Iterable[bytes]:
            return relay(start_response, "200 OK", headers)
        return forward
    client.resume(params, params.offset)  # as the full path's resume does
    poll = longpolling.Poll(client, environ, callback)

    def respond(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return poll.respond(start_response, "200 OK", headers)
    return respond


def decide(atmosphere: "Atmosphere", app: Flask, environ: dict[str, Any]
           ) -> tuple["Connection", AtmosphereParams, str | None, dict[str, str]] | None:
    """What the lean path does with the poll ``environ`` of a client held
    here, changing nothing: ``(client, parameters, JSONP callback, CORS
    headers)`` of a poll it answers, or ``None`` for a request that goes the
    full way (or is forwarded on the lean path)."""
    decided = _decide(atmosphere, app, environ)
    if decided is None:
        return None
    client, _, params, callback, cors = decided
    return None if isinstance(client, Holder) else (client, params, callback, cors)


def _ticket(atmosphere: "Atmosphere", tracking_id: str
            ) -> tuple["Connection | None", _Ticket | None]:
    """The client held here under ``tracking_id`` and its ticket, or, if
    none is held here, the ticket of a client held elsewhere."""
    connection = atmosphere.registry.get(tracking_id)
    if connection is not None:
        return connection, _tickets.get(connection)
    away = None if atmosphere.remote is None else _away.get(atmosphere.remote)
    return None, None if away is None else away.get(tracking_id)


def _decide(atmosphere: "Atmosphere", app: Flask, environ: dict[str, Any]
            ) -> tuple["Connection | Holder", dict[str, str], AtmosphereParams, str | None,
                       dict[str, str]] | None:
    """``(client held here, or its holder, query arguments, parameters,
    JSONP callback, CORS headers)`` of a poll the lean path answers, or
    ``None``; only a lookup of a holder may wait (``Remote.holder``)."""
    method = environ.get("REQUEST_METHOD", "")
    if method != "GET" or environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        return None
    query = environ.get("QUERY_STRING", "")
    # The tracking id as the official clients write it, as a hint: the
    # query is parsed anew unless it is the one parsed last for that client.
    start = query.find(_TRACKING_ID)
    connection, ticket = None, None
    if start >= 0:
        start += len(_TRACKING_ID)
        end = query.find("&", start)
        connection, ticket = _ticket(atmosphere, query[start:] if end < 0 else query[start:end])
    if ticket is not None and ticket.query == query and ticket.parsed is not None:
        args, params = ticket.parsed
    else:
        parsed = parse_query(query)
        if parsed is None:
            return None
        args, params = parsed
        connection, ticket = _ticket(atmosphere, params.tracking_id)
        if ticket is None:
            return None
        ticket.query, ticket.parsed = query, parsed
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
    key = key_from_cookies(parse_cookie(environ.get("HTTP_COOKIE", "")), settings.resume_cookie)
    client = _client(atmosphere, connection, ticket, params.tracking_id, key)
    if client is None:
        return None
    callback = args.get("jsonpTransport", "atmosphere") if ask.transport == "jsonp" else None
    return client, args, params, callback, cors


def _client(atmosphere: "Atmosphere", connection: "Connection | None", ticket: _Ticket,
            tracking_id: str, key: str | None) -> "Connection | Holder | None":
    """The client held here that the poll resumes, or the holder it is
    forwarded to, as the endpoint would decide (``client_for``, then
    ``Remote.holder`` and ``Remote.may_act``); ``None``: the full way."""
    closed = atmosphere.registry.closed(tracking_id)
    if connection is not None:
        held = not connection.finished  # on the ticket's path: the route key says so
        decision = client_for(tracking_id, held,
                              held and binding_matches(connection.binding, key), closed)
        return connection if isinstance(decision, Resume) else None
    remote = atmosphere.remote
    decision = client_for(tracking_id, False, False, closed)
    if remote is None or not isinstance(decision, Open) or decision.uuid != tracking_id:
        return None
    holder = remote.holder(tracking_id, known=True)
    if holder is None or not holder.alive or holder.handover is not None \
            or not Remote.may_act(holder, ticket.path, key):
        return None  # a takeover, or a client of its own: the full way
    return holder
