"""Serving a Flask app with atmosphere routes on gevent's pywsgi.

gevent-websocket's ``WebSocketHandler`` does the HTTP upgrade; everything
else is ordinary WSGI. Under gunicorn, use its gevent WebSocket worker
(``-k geventwebsocket.gunicorn.workers.GeventWebSocketWorker``) instead.
"""
from __future__ import annotations

import logging
import signal

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from .transports import REFUSAL_KEY, admit_upgrade
from .transports.http import FINAL_WRITE_KEY, SOCKET_KEY
from .transports.websocket import PARK_KEY, read_buffered

__all__ = ["AtmosphereServer", "AtmosphereHandler"]

log = logging.getLogger("flask_atmosphere")

#: The largest first piece of a body sent together with the headers (bytes):
#: below it, copying is cheaper than another syscall.
_COALESCE_MAX = 64 * 1024


class AtmosphereHandler(WebSocketHandler):
    """gevent-websocket's handler, which also shows the request's socket to
    the app (under :data:`SOCKET_KEY`) and, on an :class:`AtmosphereServer`,
    lets the WebSocket transport take an upgraded socket over (under
    ``PARK_KEY``), so that the request's greenlet can end while the
    connection lives on."""

    _parked = False

    def get_environ(self):
        environ = super().get_environ()
        environ[SOCKET_KEY] = self.socket
        environ[FINAL_WRITE_KEY] = self._write_final
        if isinstance(self.server, _WSGIServer):
            environ[PARK_KEY] = self._park
        return environ

    def _park(self):
        """Give the upgraded socket away: returns ``(socket, buffered)``,
        ``buffered`` being what the request's reader holds beyond the
        request. The server will not close the socket."""
        self._parked = True
        self.server.parked.add(self.socket)
        return self.socket, read_buffered(self.rfile)

    def run_websocket(self):
        # gevent-websocket's, without its registry of clients (``server.clients``),
        # leaving a parked socket open when the app returns.
        try:
            list(self.application(self.environ, lambda status, headers, exc_info=None: []))
        finally:
            self.environ["wsgi.websocket"] = None
            self.websocket = None
            if self._parked:
                self.socket = None  # pywsgi's handler neither reads nor closes it

    def _write_with_headers(self, data):
        # pywsgi's, with the status line, the headers and a whole small body
        # (one with a Content-Length) in one send (pywsgi sends the headers on
        # their own): the same bytes, one syscall fewer on each side.
        if not data or len(data) > _COALESCE_MAX:
            return super()._write_with_headers(data)
        self.headers_sent = True
        self.finalize_headers()
        if self.response_use_chunked:  # a stream: as pywsgi, headers on their own
            self._sendall(self._header_block())
            self._write(data)
            return
        towrite = self._header_block()
        towrite += data
        self._sendall(towrite)

    def _header_block(self) -> bytearray:
        """The status line and headers of the response, as pywsgi writes them."""
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status
        towrite += b"\r\n"
        for header, value in self.response_headers:
            towrite += header
            towrite += b": "
            towrite += value
            towrite += b"\r\n"
        towrite += b"\r\n"
        return towrite

    def _write_final(self, data: bytes) -> None:
        """The WSGI ``write`` callable for the last piece of a response's
        body (``FINAL_WRITE_KEY``): on a chunked response whose headers are
        out, the piece and the last chunk (RFC 9112 §7.1) go in one send, and
        pywsgi sends no last chunk of its own; otherwise as ``write``.

        Args:
            data: the last bytes of the body; nothing may be written after.
        Raises:
            OSError: the send failed (as ``write``).
        """
        if not (data and self.headers_sent and self.response_use_chunked):
            self.write(data)
            return
        self.response_use_chunked = False  # the last chunk goes here, not in process_result
        self._sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))

    def log_request(self):
        # gevent-websocket's, formatting the line only if it is logged.
        logger = self.logger
        if logger.isEnabledFor(logging.INFO) and "101" not in str(self.status):
            logger.info(self.format_request())

    def handle(self):
        # pywsgi answers a request cut off in its headers with a 400 to the
        # dead socket and lets the broken pipe escape; the peer is just gone.
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass


class _WSGIServer(WSGIServer):
    """pywsgi's server, which leaves the sockets of parked WebSockets open."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.parked: set = set()

    def do_close(self, sock, *args):
        if sock in self.parked:
            self.parked.discard(sock)
            return
        super().do_close(sock, *args)


class AtmosphereServer:
    """A pywsgi server for ``app`` with WebSocket support.

    Args:
        app: a Flask app with ``Atmosphere`` initialised on it.
        host: the address to listen on.
        port: the TCP port; 0 picks a free one (see :attr:`port`).

    Raises:
        RuntimeError: ``app`` has no ``Atmosphere``.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8080):
        try:
            self.atmosphere = app.extensions["atmosphere"]
        except KeyError:
            raise RuntimeError("the app has no Atmosphere: call Atmosphere(app) first") from None
        self.app = app
        self._stopped = Event()
        self.wsgi = _WSGIServer((host, port), app, handler_class=AtmosphereHandler,
                               log=logging.getLogger("flask_atmosphere.access"),
                               error_log=logging.getLogger("flask_atmosphere.server"))
        self.wsgi.pre_start_hook = self._refuse_upgrade

    def _refuse_upgrade(self, handler) -> bool:
        """gevent-websocket's ``pre_start_hook``: ``True`` serves the request
        as plain HTTP instead of upgrading it. For an atmosphere route that
        refuses the upgrade (WebSocket not offered: 501; a foreign origin:
        403; the limit or a ``before_connect`` hook), the answer is left in
        the environ for the route's view to send."""
        environ = handler.environ
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            return False
        with self.app.request_context(environ):
            from flask import request
            route = getattr(self.app.view_functions.get(request.endpoint), "atmosphere_route", None)
            if route is None:
                return False
            refused = admit_upgrade(self.atmosphere, route)
        if refused is None:
            return False
        environ[REFUSAL_KEY] = refused
        return True

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        return self.wsgi.server_port

    def start(self) -> None:
        """Start listening; connections are served on this thread's hub."""
        self.wsgi.start()
        self.atmosphere.closing = False
        self.atmosphere.broadcaster.attach(gevent.get_hub(), replace=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection (see ``Atmosphere.shutdown``)
        and stop the server, within about ``timeout`` seconds."""
        self.wsgi.close()
        self.atmosphere.shutdown(timeout)
        self.wsgi.stop(timeout=1)
        self.atmosphere.broadcaster.detach(gevent.get_hub())
        self._stopped.set()

    def serve_forever(self) -> None:
        """Start and serve until SIGINT or SIGTERM (main thread only), then stop."""
        self.start()
        host, port = self.wsgi.address[:2]
        log.warning("flask-atmosphere serving on http://%s:%s", host, port)
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, lambda: gevent.spawn(self.stop))
        self._stopped.wait()
