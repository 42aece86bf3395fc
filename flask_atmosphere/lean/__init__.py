"""The lean path: the commonest requests of an atmosphere route answered in
front of Flask, with the same decisions (``decisions.py``) and the same
transports as the endpoint, so that both answer byte for byte alike:

* the polls of a known long-polling client (:mod:`.polls`), held here or
  forwarded to the process that holds it: under load, most requests are those;
* the WebSocket handshakes that open new clients (:mod:`.websocket`): a
  reconnect storm after a deploy is made of those.

Through Flask each one costs a request and an app context, URL matching,
the session and a response object, for an answer that depends on none of
them. :class:`LeanPath` is a WSGI middleware that ``Atmosphere.init_app``
puts in front of ``app.wsgi_app``. It takes a request only when it knows
what the endpoint would do with it (each module says when), and only for an
app that does nothing of its own around its requests (:mod:`.conditions`).
Everything else goes the full way, unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from flask import Flask

from ..environ import UPGRADE_KEY
from . import polls, websocket
from .conditions import WSGIApp
from .polls import remember, remember_away
from .websocket import remember_route

if TYPE_CHECKING:  # pragma: no cover
    from ..connection import Connection
    from ..extension import Atmosphere
    from ..protocol import AtmosphereParams

__all__ = ["LeanPath", "install", "remember", "remember_away", "remember_route"]


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
    """WSGI middleware: answers the polls of known long-polling clients and
    opens the WebSockets of new clients without Flask (see the package's
    description), and passes everything else to ``wsgi_app``.

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
        if environ.get("REQUEST_METHOD") == "GET":
            if UPGRADE_KEY in environ:  # a WebSocket handshake this server can upgrade
                opened = websocket.open_websocket(self.atmosphere, self.app, environ,
                                                  start_response)
                if opened is not None:
                    return opened
            elif "tracking-id=" in environ.get("QUERY_STRING", ""):
                poll = polls.lean_poll(self.atmosphere, self.app, environ)
                if poll is not None:
                    return poll(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def decide(self, environ: dict[str, Any]
               ) -> tuple["Connection", "AtmosphereParams", str | None, dict[str, str]] | None:
        """What the lean path does with the poll ``environ`` (see
        ``polls.decide``), changing nothing."""
        return polls.decide(self.atmosphere, self.app, environ)
