"""Serving a Flask app with atmosphere routes on gevent's pywsgi.

This is the only module that knows pywsgi's handler from the inside; it was
checked against gevent 26.9.0 (``gevent/pywsgi.py``: ``WSGIHandler``'s
``get_environ``, ``run_application``, ``_write_with_headers``, ``_sendall``,
``socket``/``rfile``/``headers_sent``/``response_use_chunked``, and
``WSGIServer.do_close``). It offers the transports what PEP 3333 does not
(see ``environ.py``): the request's socket, a final write, and a WebSocket
upgrade that the app's view performs itself once it has admitted the client,
so that the app's middleware, its hooks and its refusals apply to WebSocket
requests exactly as to any other.

Under gunicorn, gevent-websocket's worker
(``-k geventwebsocket.gunicorn.workers.GeventWebSocketWorker``) upgrades
before calling the app instead; the transports handle that too.
"""
from __future__ import annotations

import atexit
import gc
import logging
import re
import signal
from typing import Any

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIHandler, WSGIServer
from wsproto.utilities import generate_accept_token

from .environ import FINAL_WRITE_KEY, SOCKET_KEY, UPGRADE_KEY
from .transports.websocket import read_buffered

__all__ = ["AtmosphereServer", "AtmosphereHandler"]

log = logging.getLogger("flask_atmosphere")
#: One line per request, at DEBUG (tracking ids redacted).
access_log = logging.getLogger("flask_atmosphere.access")

#: The largest first piece of a body sent together with the headers (bytes):
#: below it, copying is cheaper than another syscall.
_COALESCE_MAX = 64 * 1024

#: The value of a tracking id in a request line, as logged.
_TRACKING_ID = re.compile(r"((?:^|[?&])X-Atmosphere-tracking-id=)[^&\s]*", re.IGNORECASE)


def _asks_upgrade(environ: dict[str, Any]) -> bool:
    """A WebSocket opening handshake (RFC 6455 §4.1): a GET with
    ``Upgrade: websocket``."""
    return environ.get("REQUEST_METHOD") == "GET" \
        and environ.get("HTTP_UPGRADE", "").lower() == "websocket"


class AtmosphereHandler(WSGIHandler):
    """pywsgi's handler, which shows the request's socket to the app
    (``SOCKET_KEY``), gives it a final write (``FINAL_WRITE_KEY``), lets the
    app's view upgrade a WebSocket request itself (``UPGRADE_KEY``), and
    bounds every request body by its ``Content-Length``."""

    _upgraded = False

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ[SOCKET_KEY] = self.socket
        environ[FINAL_WRITE_KEY] = self._write_final
        # pywsgi hands a request that says "Connection: upgrade" (nginx's
        # usual WebSocket recipe sends it on every request) its raw reader,
        # which has no end: a POST's body would be read until the peer gives
        # up. Every request gets the reader bounded by its Content-Length.
        environ["wsgi.input"] = self.wsgi_input
        environ["wsgi.input_terminated"] = True
        if _asks_upgrade(environ):
            environ[UPGRADE_KEY] = self._upgrade
        return environ

    def _upgrade(self, headers: list[tuple[str, str]]) -> tuple[Any, bytes]:
        """``UPGRADE_KEY``: send the 101 (RFC 6455 §4.2.2) with ``headers``
        and give the socket away, with what the request's reader holds
        beyond the request. The server will neither read nor close it."""
        handler: Any = self  # pywsgi's internals (see the module's description)
        key = handler.environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip().encode("latin-1")
        lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket",
                 b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + generate_accept_token(key)]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
        handler.socket.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        self._upgraded = True
        handler.status = b"101 Switching Protocols"
        handler._orig_status = "101 Switching Protocols"
        handler.code = 101
        handler.headers_sent = True
        handler.close_connection = True
        handler.server.parked.add(handler.socket)
        buffered = read_buffered(handler.rfile)
        # The reader is of no more use, and while open it keeps the socket's
        # descriptor open past the transport's close, until the garbage
        # collector breaks the handler's cycle with its environ.
        handler.rfile.close()
        return handler.socket, buffered

    def run_application(self) -> None:
        try:
            super().run_application()
        finally:
            if self._upgraded:
                handler: Any = self
                handler.socket = None  # pywsgi neither reads nor closes it any more

    def _write_with_headers(self, data: bytes) -> None:
        # pywsgi's, with the status line, the headers and a whole small body
        # (one with a Content-Length) in one send (pywsgi sends the headers on
        # their own): the same bytes, one syscall fewer on each side.
        handler: Any = self
        if not data or len(data) > _COALESCE_MAX:
            handler_class: Any = WSGIHandler
            handler_class._write_with_headers(self, data)
            return
        handler.headers_sent = True
        handler.finalize_headers()
        if handler.response_use_chunked:  # a stream: as pywsgi, headers on their own
            handler._sendall(self._header_block())
            handler._write(data)
            return
        towrite = self._header_block()
        towrite += data
        handler._sendall(towrite)

    def _header_block(self) -> bytearray:
        """The status line and headers of the response, as pywsgi writes them."""
        handler: Any = self  # there, status and headers are bytes already
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += handler.status
        towrite += b"\r\n"
        for header, value in handler.response_headers:
            towrite += header
            towrite += b": "
            towrite += value
            towrite += b"\r\n"
        towrite += b"\r\n"
        return towrite

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        """pywsgi's, plus ``Connection: close`` on the answer to an HTTP/1.1
        request that asked to close (RFC 9112 §9.6: the server closes after
        it, and should say so), unless the app sent a ``Connection`` of its
        own. Without it, a client that pools connections (urllib3, so
        ``requests``) may send its next request on this one as it closes."""
        handler: Any = self
        if handler.close_connection and handler.request_version != "HTTP/1.0" \
                and not any(name.lower() == "connection" for name, _ in headers):
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def _handle_client_error(self, ex: BaseException) -> Any:
        """A request that could not be read: a peer that reset or closed
        its connection in the middle of its request is not the server's
        error (logged at DEBUG, nothing answered); anything else is
        pywsgi's 400 and its log line."""
        if isinstance(ex, ConnectionError):
            log.debug("a peer left in the middle of its request (%s)", ex)
            self.close_connection = True
            return None
        return super()._handle_client_error(ex)  # type: ignore[misc]  # pywsgi, untyped

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
        handler: Any = self
        if not (data and handler.headers_sent and handler.response_use_chunked):
            handler.write(data)
            return
        handler.response_use_chunked = False  # the last chunk goes here, not in process_result
        handler._sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))

    def format_request(self) -> str:
        # Tracking ids act for their clients until a grace period ends:
        # they are not written to the access log.
        return _TRACKING_ID.sub(r"\1[redacted]", super().format_request())

    def log_request(self) -> None:
        # The access line, at DEBUG, formatted only if it is logged.
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug(self.format_request())

    def handle(self) -> None:
        # pywsgi answers a request cut off in its headers with a 400 to the
        # dead socket and lets the broken pipe escape; the peer is just gone.
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            # The environ holds bound methods of the handler (FINAL_WRITE_KEY,
            # UPGRADE_KEY), and the handler holds the environ: without this
            # the request's objects (the handler, its reader, the headers)
            # wait for the cyclic garbage collector, which a connect storm of
            # parked WebSockets then keeps busy. pywsgi drops the socket and
            # the reader here the same way.
            self.__dict__.pop("environ", None)


class _WSGIServer(WSGIServer):
    """pywsgi's server, which leaves the sockets of upgraded WebSockets open."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.parked: set[Any] = set()

    def do_close(self, sock: Any, *args: Any) -> None:
        if sock in self.parked:
            self.parked.discard(sock)
            return
        super().do_close(sock, *args)


def freeze_startup_objects() -> None:
    """Leave what exists at start-up (the app, its modules, its routes) out
    of the garbage collector's future passes (``gc.freeze``): it lives as
    long as the process, and a connect storm then costs the collector only
    the connections' own objects (about 10 % of a WebSocket connect's CPU
    in ``python -m bench storm``). Refcounting still frees frozen objects.
    At exit they are unfrozen, so that they are collected while the
    interpreter still works (else logging's and gevent's clean-up clash,
    and Python prints "Exception ignored")."""
    gc.freeze()
    atexit.unregister(gc.unfreeze)  # once, however often it is called
    atexit.register(gc.unfreeze)


class AtmosphereServer:
    """A pywsgi server for ``app`` with WebSocket support.

    Args:
        app: a Flask app with ``Atmosphere`` initialised on it.
        host: the address to listen on.
        port: the TCP port; 0 picks a free one (see :attr:`port`).

    Raises:
        RuntimeError: ``app`` has no ``Atmosphere``.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8080):
        try:
            self.atmosphere = app.extensions["atmosphere"]
        except KeyError:
            raise RuntimeError("the app has no Atmosphere: call Atmosphere(app) first") from None
        self.app = app
        self._stopped = Event()
        self.wsgi = _WSGIServer((host, port), app, handler_class=AtmosphereHandler,
                                log=None,
                                error_log=logging.getLogger("flask_atmosphere.server"))

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        port = self.wsgi.server_port
        if port is None:
            raise RuntimeError("the server is not started")
        return port

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
        """Start and serve until SIGINT or SIGTERM (main thread only), then
        stop. The process is the server's from now on: what exists already
        is frozen (:func:`freeze_startup_objects`)."""
        freeze_startup_objects()
        self.start()
        address: Any = self.wsgi.address
        host, port = address[:2]
        log.info("flask-atmosphere serving on http://%s:%s", host, port)
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, lambda: gevent.spawn(self.stop))
        self._stopped.wait()
