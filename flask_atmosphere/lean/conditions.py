"""What the lean path checks of every request it takes, polls and
WebSocket handshakes alike: that the app does nothing of its own around it,
that no Atmosphere parameter comes as a real header, and the query as Flask
would read it.

Upstream internals used here, checked against Flask 3.1.3 and Werkzeug 3.1.9:
the app's hook registries (``before_request_funcs`` and the rest, below),
``SecureCookieSessionInterface``, and the ``werkzeug.url_quote`` codec error
handler that importing ``werkzeug.urls`` registers, so that the query is
decoded as Flask's ``request.args`` decodes it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  registers the "werkzeug.url_quote" error handler
from flask import Flask, signals
from flask.sessions import SecureCookieSessionInterface

from ..protocol import HEADER_KEYS, AtmosphereParams, ProtocolError, parse_params

if TYPE_CHECKING:  # pragma: no cover
    from ..extension import Atmosphere

__all__ = ["WSGIApp", "ROUTE_KEYS", "route_key", "plain_request", "carries_session",
           "has_header_params",
           "parse_query"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: The environ keys that decide how Flask routes a request and what its own
#: origin is: the lean path takes a request only with values that it saw a
#: request of the full path route (to the same atmosphere route) before.
ROUTE_KEYS = ("PATH_INFO", "SCRIPT_NAME", "HTTP_HOST", "wsgi.url_scheme", "SERVER_NAME",
              "SERVER_PORT")


#: Signals that Flask sends for every request it handles.
_REQUEST_SIGNALS = (signals.request_started, signals.request_finished,
                    signals.request_tearing_down, signals.appcontext_pushed,
                    signals.appcontext_popped, signals.appcontext_tearing_down)


def route_key(environ: dict[str, Any]) -> tuple[Any, ...]:
    """The values of ``ROUTE_KEYS`` in ``environ``."""
    get = environ.get
    return (get("PATH_INFO"), get("SCRIPT_NAME"), get("HTTP_HOST"), get("wsgi.url_scheme"),
            get("SERVER_NAME"), get("SERVER_PORT"))


def plain_request(atmosphere: "Atmosphere", app: Flask) -> bool:
    """Whether Flask and the app would do nothing of their own around a
    request beyond what the lean path does: no ``before_connect`` hooks (they
    run in a request context), no per-request hooks of Flask's own
    (``before_request``, ``after_request``, ``teardown_request``,
    ``teardown_appcontext``, URL value preprocessors), no request or
    app-context signal receivers, and Flask's own cookie sessions (see
    :func:`carries_session`)."""
    if atmosphere.before_connect_hooks:
        return False
    if any(app.before_request_funcs.values()) or any(app.after_request_funcs.values()) \
            or any(app.teardown_request_funcs.values()) \
            or any(app.url_value_preprocessors.values()) or app.teardown_appcontext_funcs:
        return False
    if any(signal.receivers for signal in _REQUEST_SIGNALS):
        return False
    return type(app.session_interface) is SecureCookieSessionInterface


def carries_session(app: Flask, environ: dict[str, Any]) -> bool:
    """Whether the request may carry Flask's session cookie (its name
    appears in the ``Cookie`` header), which Flask would open, and may
    refresh (``SESSION_REFRESH_EACH_REQUEST``)."""
    cookie: str = environ.get("HTTP_COOKIE") or ""
    return app.config["SESSION_COOKIE_NAME"] in cookie if cookie else False


def has_header_params(environ: dict[str, Any]) -> bool:
    """Whether the request carries an Atmosphere parameter as a real header
    (§1.3: it overrides the query's). The keys are searched as one string:
    a request has some thirty of them and almost never such a header."""
    try:
        keys = "\0" + "\0".join(environ)
    except TypeError:  # a key that is not a str (put there by a middleware)
        keys = None
    if keys is not None and "\0HTTP_X_ATMO" not in keys \
            and "\0HTTP_X_HEARTBEAT_SERVER" not in keys:
        return False
    return any(isinstance(key, str) and key.startswith(HEADER_KEYS) for key in environ)


def parse_query(query: str) -> tuple[dict[str, str], AtmosphereParams] | None:
    """The query parameters of a request as Flask's ``request.args`` reads
    them (first value of each name, in order) and its Atmosphere parameters,
    or ``None`` if the query is not UTF-8 or is malformed."""
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
