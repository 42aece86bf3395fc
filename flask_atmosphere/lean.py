"""The lean path: the polls of a known long-polling client answered in
front of Flask.

A long-polling client sends one GET per answer it gets (§4.2), so under load
most requests are polls of clients the server knows already. Through Flask
each one costs a request and an app context, URL matching, the session, the
parameters parsed anew and a response object, for an answer that depends on
none of them. :class:`LeanPath` is a WSGI middleware that
``Atmosphere.init_app`` puts in front of ``app.wsgi_app``; it answers such a
poll itself, with the same decisions as the endpoint (``decisions.py``:
what the request asks for, which client it resumes) and the same
:class:`~.transports.longpolling.Poll`, so both answer byte for byte alike.

It takes a request only when it knows what the endpoint would do with it:

* a GET, not an upgrade, with ``X-Atmosphere-tracking-id`` of a live client
  whose last poll went the full way (a *ticket*, :func:`remember`) with the
  same path, host, scheme, server and script name (so Flask would route it
  to the same atmosphere route, and the request's own origin is the same);
* that ``decisions.classify`` sends to long-polling or JSONP, offered by the
  app, with well-formed parameters, none of them as a real header (§1.3);
* that ``decisions.client_for`` lets resume the client: the resume key it
  brings matches, and the app did not close the client;
* from an origin that is allowed (a JSONP poll must prove its page's, as
  ``origins.page_origin`` says), with CORS headers as the endpoint makes them;
* to an app without ``before_connect`` hooks (they run on every poll, in a
  request context) and without per-request hooks of Flask's own
  (``before_request``, ``after_request``, ``teardown_request``,
  ``teardown_appcontext``, URL value preprocessors, request or app-context
  signal receivers), with Flask's own cookie sessions, where the poll
  carries no session cookie that Flask would refresh
  (``SESSION_REFRESH_EACH_REQUEST``).

Everything else goes the full way, unchanged: new clients (tracking id ``0``)
and unknown tracking ids, POSTs (messages run the app's ``receive`` inside
the request), ``close``, streaming, SSE, WebSocket, preflights, refusals
(a foreign origin gets its 403 there, logged) and malformed requests.

Upstream internals used here, checked against Flask 3.1.3 and Werkzeug 3.1.9:
the app's hook registries (``before_request_funcs`` and the rest, above),
``SecureCookieSessionInterface``, and the ``werkzeug.url_quote`` codec error
handler that importing ``werkzeug.urls`` registers, so that the query is
decoded as Flask's ``request.args`` decodes it.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  registers the "werkzeug.url_quote" error handler
from flask import Flask, signals
from flask.sessions import SecureCookieSessionInterface
from werkzeug.http import parse_cookie

from .admission import binding_matches, key_from_cookies
from .decisions import Ask, Kind, Resume, classify, client_for
from .origins import cors_headers_for, origin_allowed, page_origin
from .protocol import AtmosphereParams, ProtocolError, parse_params
from .transports import longpolling
from .transports.responses import NO_CACHE

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .extension import Atmosphere

__all__ = ["LeanPath", "install", "remember"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: The environ keys that decide how Flask routes a request and what its own
#: origin is: a ticket holds their values as the full path saw them.
_ROUTE_KEYS = ("PATH_INFO", "SCRIPT_NAME", "HTTP_HOST", "wsgi.url_scheme", "SERVER_NAME",
               "SERVER_PORT")

#: Environ keys of real headers that override query parameters (§1.3).
_HEADER_PARAMS = ("HTTP_X_ATMOSPHERE_", "HTTP_X_HEARTBEAT_SERVER", "HTTP_X_ATMO_PROTOCOL")

#: Signals that Flask sends for every request it handles.
_REQUEST_SIGNALS = (signals.request_started, signals.request_finished,
                    signals.request_tearing_down, signals.appcontext_pushed,
                    signals.appcontext_popped, signals.appcontext_tearing_down)

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
    _tickets[connection] = _Ticket(tuple(environ.get(key) for key in _ROUTE_KEYS), own_origin)


def install(atmosphere: "Atmosphere", app: Flask) -> bool:
    """Put :class:`LeanPath` in front of ``app.wsgi_app``, if it is still
    Flask's own: a middleware wrapped before (e.g. ``ProxyFix``) may change
    the environ in ways the lean path cannot know, so then every request goes
    the full way. One wrapped later sits in front and is fine.

    Returns:
        whether it was installed.
    """
    wsgi_app = app.wsgi_app
    if getattr(wsgi_app, "__func__", None) is not Flask.wsgi_app \
            or getattr(wsgi_app, "__self__", None) is not app:
        return False
    app.wsgi_app = LeanPath(atmosphere, app, wsgi_app)
    return True


class LeanPath:
    """WSGI middleware: answers the polls of known long-polling clients
    without Flask (see the module's description) and passes everything else
    to ``wsgi_app``.

    Args:
        atmosphere: the extension.
        app: the Flask app.
        wsgi_app: what to call for every other request (Flask's ``wsgi_app``).
    """

    def __init__(self, atmosphere: "Atmosphere", app: Flask, wsgi_app: WSGIApp):
        self.atmosphere = atmosphere
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET" \
                and "tracking-id=" in environ.get("QUERY_STRING", ""):
            poll = self.lean_poll(environ)
            if poll is not None:
                return poll(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def lean_poll(self, environ: dict[str, Any]) -> WSGIApp | None:
        """The WSGI app that answers the poll ``environ`` on the lean path,
        or ``None`` if the request must go the full way. Once it returns an
        app, the poll is attached to its client."""
        decided = self.decide(environ)
        if decided is None:
            return None
        connection, params, callback, cors = decided
        connection.resume(params, params.offset)  # as the full path's resume does
        poll = longpolling.Poll(connection, environ, callback)
        headers = list(NO_CACHE.items())
        headers.append(("Content-Type", longpolling.content_type(callback)))
        headers.extend(cors.items())

        def respond(environ: dict[str, Any], start_response: Callable[..., Any]
                    ) -> Iterable[bytes]:
            return poll.respond(start_response, "200 OK", headers)
        return respond

    def decide(self, environ: dict[str, Any]
               ) -> tuple["Connection", AtmosphereParams, str | None, dict[str, str]] | None:
        """What the lean path does with ``environ``, changing nothing:
        ``(client, parameters, JSONP callback, CORS headers)`` of a poll it
        answers, or ``None`` for a request that goes the full way."""
        method = environ.get("REQUEST_METHOD", "")
        if method != "GET" or environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return None
        query = environ.get("QUERY_STRING", "")
        registry = self.atmosphere.registry
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
            parsed = _parse(query)
            if parsed is None:
                return None
            args, params = parsed
            connection = registry.get(params.tracking_id)
            ticket = None if connection is None else _tickets.get(connection)
            if ticket is None:
                return None
            ticket.query, ticket.parsed = query, parsed
        assert connection is not None
        get = environ.get
        if (get("PATH_INFO"), get("SCRIPT_NAME"), get("HTTP_HOST"), get("wsgi.url_scheme"),
                get("SERVER_NAME"), get("SERVER_PORT")) != ticket.route_key:
            return None
        settings = self.atmosphere.settings(self.app)
        ask = classify(method, False, False, params, "X-Atmosphere-Post-Body" in args,
                       settings.transports)
        if not isinstance(ask, Ask) or ask.kind is not Kind.OPEN \
                or ask.transport not in ("long-polling", "jsonp"):
            return None
        if _has_header_params(environ) or not self._plain_request(environ):
            return None
        key = key_from_cookies(parse_cookie(environ.get("HTTP_COOKIE", "")),
                               settings.resume_cookie)
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

    def _plain_request(self, environ: dict[str, Any]) -> bool:
        """Whether Flask and the app would do nothing of their own for this
        request beyond what the lean path does: no hooks, no signal
        receivers, no session cookie to refresh."""
        app = self.app
        if self.atmosphere.before_connect_hooks:
            return False
        if any(app.before_request_funcs.values()) or any(app.after_request_funcs.values()) \
                or any(app.teardown_request_funcs.values()) \
                or any(app.url_value_preprocessors.values()) or app.teardown_appcontext_funcs:
            return False
        if any(signal.receivers for signal in _REQUEST_SIGNALS):
            return False
        if type(app.session_interface) is not SecureCookieSessionInterface:
            return False
        cookie = environ.get("HTTP_COOKIE")
        if cookie and app.config["SESSION_REFRESH_EACH_REQUEST"] \
                and app.config["SESSION_COOKIE_NAME"] in cookie:
            return False
        return True


def _has_header_params(environ: dict[str, Any]) -> bool:
    """Whether the request carries an Atmosphere parameter as a real header
    (§1.3: it overrides the query's). The keys are searched as one string:
    a poll has some thirty of them and almost never such a header."""
    try:
        keys = "\0" + "\0".join(environ)
    except TypeError:  # a key that is not a str (put there by a middleware)
        keys = None
    if keys is not None and "\0HTTP_X_ATMO" not in keys \
            and "\0HTTP_X_HEARTBEAT_SERVER" not in keys:
        return False
    return any(isinstance(key, str) and key.startswith(_HEADER_PARAMS) for key in environ)


def _parse(query: str) -> tuple[dict[str, str], AtmosphereParams] | None:
    """The query parameters of a poll as Flask's ``request.args`` reads them
    (first value of each name, in order) and its Atmosphere parameters, or
    ``None`` if the query is not UTF-8 or is malformed."""
    if not query.isascii():
        try:
            query = query.encode("latin-1").decode()
        except UnicodeError:
            return None
    args: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"):
        if key not in args:
            args[key] = value
    try:
        return args, parse_params(args)
    except ProtocolError:
        return None
