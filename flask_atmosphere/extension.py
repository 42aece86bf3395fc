"""The Flask extension: ``Atmosphere(app)`` or ``Atmosphere()`` + ``init_app(app)``.

Upstream internals used here, checked against Flask 2.3.3 and 3.1.3: the
attribute of ``RequestContext`` that holds the opened session (``session``
before Flask 3.1, ``_session`` behind a property since), swapped while
``Connected`` runs in the opening request's own context (``_OwnSession``).
"""
from __future__ import annotations

import logging
import os
import sys
import weakref
from collections import Counter
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Mapping

import gevent

from flask import Blueprint, Flask, Response, current_app, has_request_context, jsonify
from flask.ctx import RequestContext
from flask.globals import request_ctx

from . import endpoint, lean
from .backplane import Backplane, MemoryBackplane
from .broadcast import Broadcast, normalize_path
from .broadcaster import Broadcaster
from .client import AtmosphereClient
from .context import client_request_context
from .config import DEFAULTS, ConfigError, Settings, unknown_keys
from .filters import Everyone, as_filter
from .registry import Registry
from .stats import Stats
from .wire import JsonWireFormat, WireFormat

if TYPE_CHECKING:  # pragma: no cover
    from .backplane.redis import RedisBackplane
    from .connection import Connection
    from .remote import Remote
    from .testing import TestClient

__all__ = ["Atmosphere", "Route"]

log = logging.getLogger("flask_atmosphere")

#: Whether an app made in this process leaves its backplane's threads for
#: later (see :func:`defer_backplane`), and the Atmospheres that wait.
_deferred = False
_waiting: "weakref.WeakSet[Atmosphere]" = weakref.WeakSet()


def defer_backplane(deferred: bool) -> None:
    """Say whether an app made in this process from now on starts its
    backplane's threads at ``init_app`` (``False``, the default) or waits
    (``True``); ``False`` starts those of every app that waited.

    gunicorn's worker class defers in the master, which serves nothing and
    forks the workers (the app is made there with ``--preload``), and starts
    in each worker once gevent patched the standard library. A thread
    running at a fork can leave the child a module half imported or a lock
    held for good (Python 3.12 warns of forking with threads for this
    reason), and one running while gevent patches can deadlock on an import.
    """
    global _deferred
    _deferred = deferred
    if not deferred:
        for atmosphere in list(_waiting):
            atmosphere.start_backplane()


#: The Prometheus text exposition format's media type, version 0.0.4.
_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Route:
    """An atmosphere route: a URL rule bound to an ``AtmosphereClient`` subclass.

    Attributes:
        rule: the URL rule, with variables as in Flask (``/rooms/<room>``).
        client_class: the class instantiated for each connection.
        wire_format: how messages are read and rendered on this route.
        endpoint: the Flask endpoint name.
        blueprint: the blueprint it belongs to, or ``None`` for the app.
    """
    rule: str
    client_class: type
    wire_format: WireFormat
    endpoint: str
    blueprint: Blueprint | None = None


#: Where a ``RequestContext`` keeps its session (see the module's description).
_SESSION_ATTR = "_session" if isinstance(getattr(RequestContext, "session", None), property) \
    else "session"


class _OwnSession:
    """Runs ``receive`` in the current request's context with ``session``
    (the client's read-only copy) in place of the request's own."""
    __slots__ = ("context", "session", "saved")

    def __init__(self, context: RequestContext, session: Any):
        self.context, self.session = context, session

    def __enter__(self) -> None:
        self.saved = getattr(self.context, _SESSION_ATTR)
        setattr(self.context, _SESSION_ATTR, self.session)

    def __exit__(self, *exc: object) -> None:
        setattr(self.context, _SESSION_ATTR, self.saved)


class Atmosphere:
    """Server push for a Flask app.

    Args:
        app: the Flask app, or ``None`` to call :meth:`init_app` later.
        backplane: carries broadcasts between processes; the default
            ``MemoryBackplane`` keeps them in this one.

    Attributes:
        registry: the live connections of this process, per broadcaster path.
        broadcaster: fans broadcasts out to the clients' mailboxes.
    """

    def __init__(self, app: Flask | None = None, backplane: Backplane | None = None):
        self.registry = Registry()
        #: What happened to messages and connections in this process (see :meth:`stats`).
        self.counters = Stats()
        self.broadcaster = Broadcaster(self.registry, backplane or MemoryBackplane(),
                                       self.counters.add)
        self._own_backplane = backplane is not None
        self._routes: list[Route] = []
        self._apps: "weakref.WeakKeyDictionary[Flask, Settings]" = weakref.WeakKeyDictionary()
        self._error_handlers: list[Callable[[AtmosphereClient, BaseException], Any]] = []
        #: Serves requests for clients held by other processes (Redis backplane only).
        self.remote: Remote | None = None
        self._fork_safe = False  # the fork handler is registered
        #: The functions registered with :meth:`before_connect`.
        self.before_connect_hooks: list[Callable[[], Any]] = []
        #: True once :meth:`shutdown` began: new clients get 503.
        self.closing = False
        if app is not None:
            self.init_app(app)

    # -- set-up ---------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Bind to ``app``: read and check its ``ATMOSPHERE_*`` configuration,
        add the routes declared so far, and serve the bundled JavaScript client.

        Raises:
            config.ConfigError: a key has a value it cannot take; the message
                names the key and what it accepts.
            RuntimeError: ``app`` has an ``Atmosphere`` already.
        """
        if "atmosphere" in app.extensions:
            raise RuntimeError("this app has an Atmosphere already: call init_app once per app")
        settings = Settings.from_config(app.config)
        for key, nearest in unknown_keys(app.config):
            log.warning("unknown configuration key %s%s", key,
                        f" (did you mean {nearest}?)" if nearest else "")
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        self._apps[app] = settings
        app.extensions["atmosphere"] = self
        if not self._own_backplane and settings.backplane is not None:
            from .backplane.redis import RedisBackplane  # redis-py: the "redis" extra
            self.broadcaster.use(RedisBackplane(
                settings.backplane, settings.redis_prefix, settings.redis_shards,
                settings.redis_stream_max_length, settings.redis_stream_max_age,
                settings.redis_outbox, settings.redis_probe_interval, settings.redis_timeout,
                settings.redis_cluster), start=False)
            self._own_backplane = True
        self._rebuild_after_fork()
        self._start_unless_deferred()
        for route in self._routes:
            if route.blueprint is None:
                self._add_rule(app, route)
        if settings.static_url_path:
            app.register_blueprint(Blueprint(
                "atmosphere", __name__, static_folder="static",
                static_url_path=settings.static_url_path))
        self._add_stats_views(app, settings)
        # The polls of known long-polling clients are answered before Flask.
        lean.install(self, app)

    def start_backplane(self) -> None:
        """Start the backplane's threads, unless they run already; with the
        Redis backplane, also those that serve requests for clients held by
        other processes (``remote.py``: no sticky sessions). ``init_app``
        calls it, unless :func:`defer_backplane` said to wait."""
        _waiting.discard(self)
        self.broadcaster.start_backplane()
        backplane = self._redis_backplane()
        if self.remote is not None or backplane is None:
            return
        from .backplane.forwarding import Forwarding
        from .remote import Remote
        self.remote = Remote(self, Forwarding(backplane.url, backplane.prefix, backplane.origin,
                                              backplane.probe_interval, backplane.timeout,
                                              backplane.cluster))
        self.remote.start()

    def _rebuild_after_fork(self) -> None:
        """With the Redis backplane, have the child of a fork rebuild it
        (:meth:`_after_fork`), once per ``Atmosphere``."""
        if self._fork_safe or self._redis_backplane() is None:
            return
        self._fork_safe = True
        this = weakref.ref(self)

        def after_fork() -> None:
            atmosphere = this()
            if atmosphere is not None:
                atmosphere._after_fork()
        os.register_at_fork(after_in_child=after_fork)

    def _after_fork(self) -> None:
        """In the child of a fork (gunicorn's ``--preload`` makes the app
        before it forks its workers): the parent's backplane and forwarding
        threads, if it started them, are not here, so the child gets its
        own, under a name of its own; else its broadcasts would never leave
        it. They start now, unless :func:`defer_backplane` said to wait."""
        backplane = self._redis_backplane()
        if backplane is not None:
            self.broadcaster.use(backplane.forked(), forked=True, start=False)
            self.remote = None
            self._start_unless_deferred()

    def _redis_backplane(self) -> "RedisBackplane | None":
        """The backplane, if it is the Redis one (none if redis-py's module
        was never imported)."""
        module = sys.modules.get(f"{__package__}.backplane.redis")
        backplane = self.broadcaster.backplane
        return backplane if module is not None \
            and isinstance(backplane, module.RedisBackplane) else None

    def _start_unless_deferred(self) -> None:
        if _deferred:
            _waiting.add(self)
        else:
            self.start_backplane()

    def _add_stats_views(self, app: Flask, settings: Settings) -> None:
        """Serve :meth:`stats` as JSON and as Prometheus text where the
        config asks for it.

        Raises:
            config.ConfigError: ``ATMOSPHERE_METRICS_URL_PATH`` is set and
                ``prometheus_client`` is not installed.
        """
        if settings.stats_url_path:
            app.add_url_rule(settings.stats_url_path, "atmosphere_stats",
                             lambda: jsonify(self.stats()))
        if settings.metrics_url_path:
            try:
                from .metrics import render
            except ImportError:
                raise ConfigError("ATMOSPHERE_METRICS_URL_PATH needs prometheus_client: "
                                  "pip install 'flask-atmosphere[prometheus]'") from None
            app.add_url_rule(settings.metrics_url_path, "atmosphere_metrics",
                             lambda: Response(render(self), content_type=_PROMETHEUS_TYPE))

    def settings(self, app: Flask | None = None) -> Settings:
        """The settings read from ``app``'s config at ``init_app`` (by default
        the current app's).

        Raises:
            RuntimeError: ``init_app`` was not called for ``app``.
        """
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._apps[app]
        except KeyError:
            raise RuntimeError("Atmosphere.init_app(app) was not called for this app") from None

    def route(self, rule: str, *, bp: Blueprint | None = None,
              wire_format: WireFormat | None = None, endpoint: str | None = None
              ) -> Callable[[type], type]:
        """Bind an ``AtmosphereClient`` subclass to ``rule``, beside the app's
        (or the blueprint's) ordinary routes::

            @atmosphere.route("/rooms/<room>")
            class Room(AtmosphereClient):
                def receive(self, event): ...

        Each concrete path (``/rooms/blue``) is its own broadcaster.

        Args:
            rule: a Flask URL rule; with ``bp``, relative to its ``url_prefix``.
            bp: put the route on this blueprint instead of the app.
            wire_format: the route's wire format; ``JsonWireFormat()`` by default.
            endpoint: the endpoint name; the class name by default.
        Raises:
            TypeError: the decorated class is not an ``AtmosphereClient``.
        """
        def decorate(client_class: type) -> type:
            if not (isinstance(client_class, type) and issubclass(client_class, AtmosphereClient)):
                raise TypeError(f"@atmosphere.route needs an AtmosphereClient subclass, "
                                f"not {client_class!r}")
            route = Route(rule, client_class, wire_format or JsonWireFormat(),
                          endpoint or client_class.__name__, bp)
            self._routes.append(route)
            if bp is not None:
                self._add_rule(bp, route)
            else:
                for app in list(self._apps):
                    self._add_rule(app, route)
            return client_class
        return decorate

    def _add_rule(self, target: Flask | Blueprint, route: Route) -> None:
        def view(**_view_args: Any) -> Response:
            return endpoint.serve(self, route)
        view.__name__ = route.endpoint
        # Werkzeug matches WebSocket upgrades only against websocket rules.
        # The HTTP rule comes first, so that url_for() builds an http URL.
        target.add_url_rule(route.rule, route.endpoint, view, methods=["GET", "POST", "OPTIONS"],
                            provide_automatic_options=False)
        target.add_url_rule(route.rule, route.endpoint, view, methods=["GET"], websocket=True)

    def before_connect(self, hook: Callable[[], Any]) -> Callable[[], Any]:
        """Register ``hook()``, called in the request context (``flask.request``,
        ``flask.session``, with the app's middleware applied) on every request
        that opens a client on any transport, comes back for one (a
        reconnect, each long-poll, a resumed stream) or speaks for one (a
        message POST); for a WebSocket, before the upgrade where the server
        allows (``atmosphere.run``). It refuses by raising
        ``Refused(status, reason)`` (e.g. 401, 403) or an ``HTTPException``
        (``abort(403)``). Usable as a decorator::

            @atmosphere.before_connect
            def logged_in():
                if "user" not in session:
                    raise Refused(401, "log in first")
        """
        self.before_connect_hooks.append(hook)
        return hook

    def error_handler(self, handler: Callable[[AtmosphereClient, BaseException], Any]
                      ) -> Callable[[AtmosphereClient, BaseException], Any]:
        """Register ``handler(client, exception)``, called (in the app context)
        when a client's ``receive`` raises. Usable as a decorator. The client
        then also receives an ``Error`` event and stays connected."""
        self._error_handlers.append(handler)
        return handler

    def client_context(self, connection: "Connection", opening: bool = False
                       ) -> "RequestContext | _OwnSession":
        """The request context a client's ``receive`` runs in: the request
        that opened the connection (without its body), with its session as
        it was then, read-only (``client.ReadOnlySession``).

        ``opening``: the event is delivered while the opening request is
        served (``Connected``): it runs in that request's own context (what
        the app's hooks put in ``flask.g`` is there), with the same read-only
        session, instead of a copy made for it.
        """
        if opening and has_request_context():
            current = request_ctx._get_current_object()  # type: ignore[attr-defined]
            if current.app is connection.app:
                return _OwnSession(current, connection.session)
        return client_request_context(connection.app, connection.environ, connection.session)

    def report_error(self, client: AtmosphereClient, error: BaseException) -> None:
        """Log ``error`` from ``client`` once and call the error handlers; a
        handler that raises is logged and does not stop the others."""
        log.error("error in %r: %s", client, error, exc_info=error)
        for handler in self._error_handlers:
            try:
                handler(client, error)
            except BaseException:  # noqa: B036 -- app code: nothing may escape
                log.exception("error handler %r failed", handler)

    # -- pushes from anywhere -------------------------------------------------

    def broadcast(self, path: str, message: Any, to: Any = Everyone) -> None:
        """Push ``message`` to every client of the broadcaster ``path`` and of
        every path below it, by whole segments: ``/chat`` reaches
        ``/chat/room1``, never ``/chatroom``. A blueprint's ``url_prefix``
        thus reaches all of its atmosphere routes.

        Callable from a view, a greenlet, or another OS thread; it queues the
        message and returns without waiting for any socket.

        Args:
            path: a broadcaster path or a prefix of one.
            message: a ``str`` (sent as text) or what the routes' wire format
                renders (``dict``/``list`` as JSON by default).
            to: a client filter, or a callable ``(client) -> bool``.
        """
        self.broadcaster.publish(Broadcast(normalize_path(path), message, as_filter(to)))

    def broadcast_all(self, message: Any, to: Any = Everyone) -> None:
        """Push ``message`` to every client of every route (see :meth:`broadcast`)."""
        self.broadcast("/", message, to)

    def stats(self) -> dict[str, Any]:
        """What happened in this process so far, as plain JSON-ready data.

        Returns:
            ``clients``: live now, ``{"total": n, "by_route": {rule: n},
            "by_transport": {name: n}}`` (a long-polling client between two
            polls counts under its last transport); ``disconnects``: ``{reason:
            n}`` (see ``stats.disconnect_reason``); ``backplane``: its kind and
            state; and the counters of ``stats.Stats``: ``connects``,
            ``messages_in``, ``broadcasts``, ``sends``, ``deliveries``,
            ``messages_lost``, ``messages_dropped``, ``slow_consumers``,
            ``refused`` and the backplane's ``backplane_*`` (a counter that
            never moved is absent).
        """
        by_route: Counter[str] = Counter()
        by_transport: Counter[str] = Counter()
        for connection in self.registry:
            by_route[connection.route] += 1
            by_transport[connection.transport or "opening"] += 1
        return {"clients": {"total": len(self.registry), "by_route": dict(by_route),
                            "by_transport": dict(by_transport)},
                "disconnects": dict(self.counters.disconnects),
                "backplane": self.broadcaster.backplane.state(),
                **self.counters.snapshot()}

    def clients(self, path: str = "/") -> list[AtmosphereClient]:
        """The live clients of ``path`` and below (every client by default)."""
        return [connection.client for connection in self.registry.under(normalize_path(path))]

    # -- serving --------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Close every connection: WebSocket close 1001 after what is queued,
        and each client gets ``Disconnected(ServerDisconnected())``. With the
        Redis backplane each client is handed over instead (``handover.py``):
        closed at once, and taken over, with what it had not received, by
        the process its next request reaches. Waits up
        to ``timeout`` seconds for the peers to answer, then cuts the
        connections that did not, and returns within about a second more.
        Call it on the serving hub's thread.

        Returns:
            ``True`` if every connection ended.
        """
        self.closing = True
        remote = self.remote
        if remote is not None:  # the Redis backplane: each client is handed over
            from .handover import hand_over_all
            hand_over_all(remote)
        for connection in self.registry:
            connection.close(1001, "server shutdown")
        ended = self.registry.wait_empty(timeout)
        if not ended:
            for connection in self.registry:
                connection.abort()
            ended = self.registry.wait_empty(1.0)
        if remote is not None:  # the handovers written before the process goes
            deadline = monotonic() + remote.forwarding.timeout
            while remote.forwarding.unwritten() and monotonic() < deadline:
                gevent.sleep(0.01)  # the writer is a thread of its own: nothing to await
        return ended

    def run(self, app: Flask, host: str = "127.0.0.1", port: int = 8080) -> None:
        """Serve ``app`` on gevent's pywsgi with WebSocket support until
        SIGINT or SIGTERM, then shut down cleanly.

        Args:
            app: the Flask app (``init_app`` must have been called for it).
            host: the address to listen on.
            port: the TCP port to listen on.
        """
        from gevent import monkey

        from .server import AtmosphereServer
        if not monkey.is_module_patched("socket"):
            log.warning("the standard library is not patched by gevent: a blocking call in a "
                        "view (time.sleep, a database driver) stops every connection while it "
                        "lasts. Call `from gevent import monkey; monkey.patch_all()` first thing "
                        "in your entry point, or serve with `flask atmosphere run`")
        AtmosphereServer(app, host, port).serve_forever()

    def test_client(self, path: str, transport: str = "websocket", *,
                    config: Mapping[str, Any] | None = None,
                    headers: Mapping[str, str] | None = None,
                    app: Flask | None = None) -> "TestClient":
        """A client for tests, open on ``path`` (query string included)
        over ``transport`` (``"websocket"``, ``"long-polling"``,
        ``"streaming"`` or ``"sse"``), through the real server, which is
        started for the app's clients and stopped when the last one closes;
        no monkey-patching needed::

            with atmosphere.test_client("/the-chat?name=Ada") as ada, \\
                    atmosphere.test_client("/the-chat", "sse") as bob:
                ada.send_json({"message": "hi"})
                assert bob.receive_json(timeout=1.0)["message"] == "hi"

        ``config``: ``ATMOSPHERE_*`` keys over the app's own while its
        clients are open (e.g. ``{"ATMOSPHERE_HEARTBEAT_INTERVAL": 0.5}``,
        in seconds), checked as ``init_app`` checks them. ``headers``:
        extra request headers. ``app``: the app, if this extension serves
        several. See ``flask_atmosphere.testing.connect`` for what it raises.
        """
        from .testing import connect  # h11 and wsproto's client: for tests only
        return connect(self, path, transport, config=config, headers=headers, app=app)
