"""A gunicorn worker that serves as ``atmosphere.run`` does:

    gunicorn -k flask_atmosphere.gunicorn.Worker -w 1 --bind 127.0.0.1:8080 'chat:app'

It is gunicorn's gevent worker (the standard library patched before the app
is imported) with flask-atmosphere's handler: the view upgrades a WebSocket
itself once it admitted the client (the app's middleware and hooks apply,
the resume cookie is set), an idle WebSocket costs no greenlet, held
responses notice a client that left, request bodies end at their
``Content-Length``. On SIGTERM the worker says goodbye to its clients
(``Atmosphere.shutdown``: WebSocket close 1001, held polls answered, streams
ended) and exits within ``min(graceful_timeout, 5)`` seconds more or less.

Checked against gunicorn 27.0 (``gunicorn.workers.ggevent``:
``GeventPyWSGIWorker``, ``PyWSGIServer``, ``handle_exit``).
"""
from __future__ import annotations

import logging
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIServer

from .extension import defer_backplane
from .server import AtmosphereHandler, freeze_startup_objects

__all__ = ["Worker"]

log = logging.getLogger("flask_atmosphere")


class _Server(PyWSGIServer):  # type: ignore[misc]
    """gunicorn's pywsgi server, leaving the sockets of upgraded WebSockets open."""

    #: The servers of this worker process (one per listening socket).
    started: list["_Server"] = []

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.parked: set[Any] = set()
        _Server.started.append(self)

    def do_close(self, sock: Any, *args: Any) -> None:
        if sock in self.parked:
            self.parked.discard(sock)
            return
        super().do_close(sock, *args)


class Worker(GeventPyWSGIWorker):  # type: ignore[misc]
    """``-k flask_atmosphere.gunicorn.Worker``: see the module's description."""

    server_class = _Server
    wsgi_handler = AtmosphereHandler

    @classmethod
    def setup(cls) -> None:
        """Called by gunicorn as its master loads this class, before it makes
        the app with ``--preload`` and forks the workers: an app's backplane
        threads start in each worker, once gevent patched the standard
        library (:meth:`load_wsgi`), never in the master, which serves nothing."""
        defer_backplane(True)

    def _atmosphere(self) -> Any:
        app = getattr(self, "wsgi", None)  # None until the app is loaded
        return getattr(app, "extensions", {}).get("atmosphere")

    def load_wsgi(self) -> None:
        self._log_with_gunicorn()
        super().load_wsgi()
        freeze_startup_objects()
        atmosphere = self._atmosphere()
        defer_backplane(False)  # patched by now: see setup
        if atmosphere is None:
            log.warning("gunicorn serves an app without an Atmosphere (is the app wrapped? "
                        "then shutdown will not say goodbye to its clients)")
        elif self.cfg.workers > 1 and atmosphere.stats()["backplane"]["kind"] == "memory":
            log.warning("%d workers without a backplane: a broadcast reaches only the clients "
                        "of the worker it is made in, and a client's requests must all reach "
                        "one worker. Set ATMOSPHERE_BACKPLANE to a Redis URL (see the README's "
                        "Many processes and hosts)", self.cfg.workers)

    def _log_with_gunicorn(self) -> None:
        """Where neither the app nor anything else configured logging (no
        handler on ``flask_atmosphere``'s logger or the root), the library's
        records go to gunicorn's error log, with its format (time, pid,
        level) and level (``--log-level``), not bare to stderr."""
        error_log = getattr(self.log, "error_log", None)
        if not isinstance(error_log, logging.Logger) or log.handlers \
                or logging.getLogger().handlers:
            return
        for handler in error_log.handlers:
            log.addHandler(handler)
        log.setLevel(error_log.level)
        log.propagate = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(self._goodbye)

    def _goodbye(self) -> None:
        """Close every client, then the requests left (idle keep-alive
        connections, which gunicorn would wait ``graceful_timeout`` for)."""
        atmosphere = self._atmosphere()
        if atmosphere is not None:
            atmosphere.shutdown(min(self.cfg.graceful_timeout, 5))
        for server in _Server.started:
            server.stop(timeout=1)
