"""The lean path for WebSocket handshakes: a new client opened on a
WebSocket in front of Flask.

After a deploy or a network blip every client connects again at once; what
each connect costs is what a reconnect storm costs. Such a handshake is
served here, with the endpoint's own steps (``opening.new_connection``,
``Connection.open``, ``transports.websocket``), when:

* this server can upgrade it (``environ.UPGRADE_KEY``: flask-atmosphere's
  own handler, under ``atmosphere.run``, ``flask atmosphere run`` and the
  gunicorn worker; a gevent-websocket server upgrades before the app);
* a WebSocket handshake with the same route key (``conditions.ROUTE_KEYS``)
  went the full way to an atmosphere route before (:func:`remember_route`),
  whose URL variables, if any, Werkzeug's own converters read (so that the
  same path gives the same ``view_args``);
* ``decisions.classify`` opens a WebSocket, offered by the app, with
  well-formed parameters, none of them as a real header (§1.3);
* ``decisions.client_for`` opens a new client: tracking id ``0``, or, with no
  backplane (which may know it on another process), a valid one that no
  client here holds and that the app did not close;
* it comes from no page (no ``Origin``) or from an allowed one, and carries
  no ``X-Atmosphere-Post-Body`` (the endpoint asks such a request to prove
  its page, as a JSONP script);
* the server is not shutting down and below ``ATMOSPHERE_MAX_CONNECTIONS``;
* the app does nothing of its own around requests
  (``conditions.plain_request``) and the handshake carries no session
  cookie: the client's session is the empty one Flask would have opened.

``Connected`` then runs in a request context made from the handshake, as
every later event's is (``context.py``), instead of in the handshake's own.
Everything else goes the full way: returning clients, refusals, a request
whose origin, parameters or limits the endpoint must answer.

Upstream internals used here, checked against Werkzeug 3.1.9: a rule's
``_converters``, to see that they are Werkzeug's own.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import gevent
from flask import Flask
from werkzeug.http import parse_cookie
from werkzeug.routing import Map

from ..admission import key_from_cookies, resume_binding
from ..decisions import Ask, Kind, Open, classify, client_for
from ..environ import UPGRADE_KEY
from ..opening import new_connection
from ..origins import cors_headers_for, origin_allowed
from ..protocol import AtmosphereParams
from ..transports import websocket
from ..transports.responses import refusal_response
from .conditions import carries_session, has_header_params, parse_query, plain_request, route_key

if TYPE_CHECKING:  # pragma: no cover
    from werkzeug.routing import Rule

    from ..extension import Atmosphere, Route

__all__ = ["remember_route", "decide", "open_websocket"]

#: Route keys remembered per app; past it, the oldest is forgotten (the
#: ``Host`` header is in a route key, and any peer chooses it).
ROUTES_KEPT = 256

_OPEN_WEBSOCKET = Ask(Kind.OPEN, "websocket")

#: The converters of Werkzeug's own (a rule's variables read by them give
#: the same values for the same path, whatever the app's state).
_OWN_CONVERTERS = tuple(Map.default_converters.values())


class _RouteTicket:
    """What a WebSocket handshake that went the full way showed of its
    route key: the atmosphere route Flask sent it to, with what the
    endpoint read from the request there."""
    __slots__ = ("route", "path", "view_args", "own_origin", "secure", "script_root")

    def __init__(self, route: "Route", path: str, view_args: Mapping[str, Any], own_origin: str,
                 secure: bool, script_root: str):
        self.route = route
        self.path = path
        self.view_args = view_args
        self.own_origin = own_origin
        self.secure = secure
        self.script_root = script_root


_routes: "weakref.WeakKeyDictionary[Flask, dict[tuple[Any, ...], _RouteTicket]]" = \
    weakref.WeakKeyDictionary()


def remember_route(app: Flask, route: "Route", environ: dict[str, Any], rule: "Rule | None",
                   *, path: str, view_args: Mapping[str, Any], own_origin: str, secure: bool,
                   script_root: str) -> None:
    """Note that the WebSocket handshake ``environ`` went the full way to
    ``route`` of ``app``, matched by ``rule`` (``request.url_rule``), and
    what the endpoint read from it (``path``: the broadcaster key;
    ``view_args``; ``own_origin``; ``secure``: https or wss;
    ``script_root``): later handshakes with the same route key may take the
    lean path."""
    if rule is None or not all(isinstance(converter, _OWN_CONVERTERS)
                               for converter in rule._converters.values()):
        return
    routes = _routes.setdefault(app, {})
    key = route_key(environ)
    if key not in routes and len(routes) >= ROUTES_KEPT:
        del routes[next(iter(routes))]
    routes[key] = _RouteTicket(route, path, dict(view_args), own_origin, secure, script_root)


_Decided = tuple[_RouteTicket, AtmosphereParams, dict[str, str], "str | None", "str | None"]


def decide(atmosphere: "Atmosphere", app: Flask, environ: dict[str, Any]) -> _Decided | None:
    """What the lean path does with the WebSocket handshake ``environ``,
    changing nothing: ``(route ticket, parameters, query parameters, uuid to
    adopt or None, the resume key it brings or None)`` of a client it opens,
    or ``None`` for a handshake that goes the full way."""
    routes = _routes.get(app)
    ticket = routes.get(route_key(environ)) if routes else None
    if ticket is None or environ.get("REQUEST_METHOD") != "GET" \
            or environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        return None
    parsed = parse_query(environ.get("QUERY_STRING", ""))
    if parsed is None:
        return None
    args, params = parsed
    if "X-Atmosphere-Post-Body" in args:
        return None  # the endpoint asks such a request to prove its page's origin
    settings = atmosphere.settings(app)
    if classify("GET", True, True, params, False, settings.transports) != _OPEN_WEBSOCKET:
        return None
    if has_header_params(environ) or not plain_request(atmosphere, app) \
            or carries_session(app, environ):
        return None
    registry = atmosphere.registry
    limit = settings.max_connections
    if atmosphere.closing or (limit is not None and len(registry) >= limit):
        return None  # 503 the full way
    tracking_id = params.tracking_id
    if tracking_id != "0" and (atmosphere.remote is not None
                               or registry.get(tracking_id) is not None):
        return None
    decision = client_for(tracking_id, False, False, registry.closed(tracking_id))
    if not isinstance(decision, Open):
        return None
    if not origin_allowed(environ.get("HTTP_ORIGIN"), settings.allowed_origins,
                          ticket.own_origin):
        return None  # refused the full way: 403, logged
    cookie = environ.get("HTTP_COOKIE")
    key = key_from_cookies(parse_cookie(cookie), settings.resume_cookie) if cookie else None
    return ticket, params, args, decision.uuid, key


def open_websocket(atmosphere: "Atmosphere", app: Flask, environ: dict[str, Any],
                   start_response: Callable[..., Any]) -> Iterable[bytes] | None:
    """Open a new client on the WebSocket handshake ``environ`` on the lean
    path and serve it (the ``101`` goes out here), or ``None`` if the
    handshake must go the full way. A refusal by ``Connected`` is answered
    as the endpoint answers it."""
    decided = decide(atmosphere, app, environ)
    if decided is None:
        return None
    ticket, params, args, uuid, key = decided
    settings = atmosphere.settings(app)
    atmosphere.broadcaster.attach(gevent.get_hub())
    origin = environ.get("HTTP_ORIGIN")
    binding, cookies = resume_binding(settings, key, origin, ticket.own_origin, ticket.secure,
                                      ticket.script_root, can_set_cookie=True)
    connection = new_connection(
        atmosphere, app, settings, ticket.route, params, uuid, environ, path=ticket.path,
        view_args=ticket.view_args, args=args, remote_addr=environ.get("REMOTE_ADDR"),
        transport="websocket", session={}, binding=binding)
    refused = connection.open()
    if refused is not None:
        response = refusal_response(refused)
        response.headers.update(cors_headers_for(origin, settings.allowed_origins,
                                                 ticket.own_origin))
        return response(environ, start_response)
    try:
        sock, buffered = environ[UPGRADE_KEY](cookies)
    except OSError as exc:
        connection.detach(None, error=exc)  # gone before the upgrade went out
        return []
    websocket.serve(connection, True, sock, buffered, parked=True)
    return []
