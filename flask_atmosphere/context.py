"""The request context a client's ``receive`` runs in.

Every event is delivered in a Flask request context made from the request
that opened the connection (``flask.request``, ``flask.session``,
``url_for``, ``flask.g``): see ``Atmosphere.client_context``. Most events
never look at ``flask.request``, yet Flask's own ``RequestContext`` makes
the request object, binds a URL adapter and matches the route every time,
which is the larger part of what a WebSocket connect costs on the lean path
(``lean/``). :func:`client_request_context` makes them on first use instead.

Upstream internals used here, checked against Flask 3.1.3: the context
variables ``flask.globals._cv_app`` and ``_cv_request``, and the fields of
``flask.ctx.RequestContext`` that ``push`` and ``pop`` keep (``_cv_tokens``,
``_session``, ``_after_request_functions``, ``flashes``). Under any other
layout (Flask 3.2 merges the two contexts) the context is Flask's own,
made at once.
"""
from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING, Any

import flask.globals
from flask.ctx import RequestContext
from flask.signals import request_tearing_down
from werkzeug.exceptions import HTTPException

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask, Request
    from werkzeug.routing import MapAdapter

__all__ = ["client_request_context", "LAZY"]

_cv_app = getattr(flask.globals, "_cv_app", None)
_cv_request = getattr(flask.globals, "_cv_request", None)

#: Whether this Flask's ``RequestContext`` is laid out as checked (see the
#: module's description), so that :class:`LazyRequestContext` may stand in.
LAZY = (_cv_app is not None and _cv_request is not None
        and isinstance(getattr(RequestContext, "session", None), property)
        and {"_cv_tokens", "_session", "_after_request_functions", "flashes"}
        <= set(RequestContext.__init__.__code__.co_names))

_UNSET: Any = object()


def client_request_context(app: "Flask", environ: dict[str, Any], session: Any
                           ) -> RequestContext:
    """A request context for ``app`` made from ``environ`` (the opening
    request's, without its body; it is copied, never changed), with
    ``session`` as ``flask.session``.

    Under the checked Flask it is a :class:`LazyRequestContext`; otherwise
    Flask's own."""
    if LAZY:
        return LazyRequestContext(app, environ, session)
    environ = dict(environ)
    environ["wsgi.input"] = io.BytesIO()
    return RequestContext(app, environ, session=session)


class LazyRequestContext(RequestContext):
    """A ``RequestContext`` whose request object, URL adapter and route
    match are made when first used (``flask.request``, ``url_for``), from a
    copy of the environ given. Pushing it pushes an app context as Flask's
    does; popping it runs the app's ``teardown_request`` functions and
    closes the request if it was made. The session is given, never opened.

    Args:
        app: the Flask app.
        environ: the WSGI environ to make the request from (copied on use).
        session: what ``flask.session`` is.
    """

    def __init__(self, app: "Flask", environ: dict[str, Any], session: Any):
        # Flask's __init__ makes the request at once: its fields are set here.
        self.app = app
        self._environ = environ
        self._request: "Request | None" = None
        self._url_adapter: "MapAdapter | None" = _UNSET
        self.flashes = None
        self._session = session
        self._after_request_functions = []
        self._cv_tokens = []

    @property
    def request(self) -> "Request":  # type: ignore[override]
        if self._request is None:
            self._make()
        assert self._request is not None
        return self._request

    @property
    def url_adapter(self) -> "MapAdapter | None":  # type: ignore[override]
        if self._url_adapter is _UNSET:
            self._make()
        return self._url_adapter

    def copy(self) -> RequestContext:
        """Flask's own context, with the same request and session (as
        ``RequestContext.copy``: ``copy_current_request_context``)."""
        return RequestContext(self.app, self.request.environ, request=self.request,
                              session=self._session)

    def _make(self) -> None:
        """Make the request and URL adapter, and match the route, as
        Flask's ``__init__`` and ``push`` do."""
        app = self.app
        environ = dict(self._environ)
        environ["wsgi.input"] = io.BytesIO()
        request = app.request_class(environ)
        request.json_module = app.json
        self._request = request
        try:
            adapter = app.create_url_adapter(request)
        except HTTPException as exc:
            request.routing_exception = exc
            adapter = None
        self._url_adapter = adapter
        if adapter is not None:
            try:
                request.url_rule, request.view_args = adapter.match(  # type: ignore[assignment]
                    return_rule=True)
            except HTTPException as exc:
                request.routing_exception = exc

    def push(self) -> None:
        """Flask's ``push``, less opening the session (given) and matching
        the route (on first use)."""
        assert _cv_app is not None and _cv_request is not None
        app_ctx = _cv_app.get(None)
        if app_ctx is None or app_ctx.app is not self.app:
            app_ctx = self.app.app_context()
            app_ctx.push()
        else:
            app_ctx = None
        self._cv_tokens.append((_cv_request.set(self), app_ctx))

    def pop(self, exc: BaseException | None = _UNSET) -> None:
        """Flask's ``pop``: the app's ``teardown_request`` functions run (and
        ``request_tearing_down`` is sent) when the context leaves for good;
        the request, if it was made, is closed."""
        assert _cv_request is not None
        last = len(self._cv_tokens) == 1
        try:
            if last:
                if exc is _UNSET:
                    exc = sys.exc_info()[1]
                app = self.app
                # Flask's teardown reads request.blueprints: made only when
                # there is a teardown function or a receiver to call.
                if self._request is not None or any(app.teardown_request_funcs.values()) \
                        or request_tearing_down.receivers:
                    app.do_teardown_request(exc)
                if self._request is not None:
                    self._request.close()
        finally:
            token, app_ctx = self._cv_tokens.pop()
            _cv_request.reset(token)
            if last and self._request is not None:
                self._request.environ["werkzeug.request"] = None
            if app_ctx is not None:
                app_ctx.pop(exc)
