"""What the HTTP transports share: response headers, a response whose
headers go out at once and whose body is written as it comes, and error answers.
"""
from __future__ import annotations

import socket
import time
from email.utils import formatdate
from typing import Callable

import gevent

from flask import Response  # not werkzeug's: Flask would recast it (force_type)

__all__ = ["NO_CACHE", "SOCKET_KEY", "FINAL_WRITE_KEY", "final_writer", "LiveResponse", "DeferredResponse", "error_response",
           "http_date", "socket_abort", "timed_writer", "watch_eof"]

#: The WSGI environ key under which ``AtmosphereHandler`` (server.py) puts
#: the request's socket, so that a transport can see a peer leave while a
#: response is held and can cut a peer that stopped reading.
SOCKET_KEY = "flask_atmosphere.socket"

#: The WSGI environ key under which ``AtmosphereHandler`` puts a ``write``
#: callable for the *last* piece of a response's body: on a chunked response
#: it sends the piece and the last chunk together, in one syscall (pywsgi
#: sends the last chunk on its own once the app returns). Where it is
#: absent, the ``write`` of ``start_response`` does.
FINAL_WRITE_KEY = "flask_atmosphere.write_final"

#: Headers of every transport response: no caching (as the Java server's
#: CacheHeadersInterceptor, §4), no buffering by an nginx in front, and no
#: MIME sniffing: Chromium holds back the first kilobyte of a text/plain XHR
#: response to sniff it, so a legacy streaming client would see nothing (the
#: Java server escapes this only through its 2 KB of padding).
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "-1",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}


class LiveResponse(Response):
    """A response that sends its status and headers at once, then lets
    ``body(write)`` write the body piece by piece with the WSGI ``write``
    callable (PEP 3333). A failed write raises ``OSError`` inside ``body``,
    so the transport knows exactly what reached the socket.

    gevent's pywsgi skips empty chunks yielded by an app and so cannot send
    headers before the first byte of body; its ``write(b"")`` does (§4.2).

    Args:
        body: ``body(write)``, called after the headers are sent;
            ``write(bytes)`` sends one chunk.
        done: called once the response is over, whether ``body`` ran, ended,
            or failed (the peer may be gone before the headers went out).
        write_timeout: seconds one write may take; past it the write raises
            ``TimeoutError`` and the socket is shut down (the peer stopped
            reading, and a half-written chunk spoils the rest).
        **kwargs: as for ``flask.Response`` (status, mimetype, headers).
    """

    def __init__(self, body: Callable[[Callable[[bytes], None]], None],
                 done: Callable[[], None], write_timeout: float, **kwargs):
        headers = dict(NO_CACHE)
        headers.update(kwargs.pop("headers", {}))
        # An iterator, not a list: no Content-Length, so the body is chunked.
        super().__init__(iter(()), headers=headers, **kwargs)
        self._body = body
        self._done = done
        self._write_timeout = write_timeout

    def __call__(self, environ, start_response):
        status, headers = self.get_wsgi_response(environ)[1:]
        try:
            write = timed_writer(environ, start_response(status, headers), self._write_timeout)
            write(b"")
            self._body(write)
        except TimeoutError:
            socket_abort(environ)()
        except OSError:
            pass  # the peer is gone
        finally:
            self._done()
        return []


class DeferredResponse(Response):
    """A Flask response that hands the answer over to ``respond``, once
    Flask has made its headers final (``after_request`` hooks, cookies,
    CORS): ``respond(start_response, status, headers)`` is then called in
    its place as a WSGI app would be, with the status line (``str``) and the
    headers (a list of ``(name, value)`` strings), and returns the
    (already written) body iterable.

    The same ``respond`` serves a request that never went through Flask
    (see ``transports/fastpath.py``), so both answer alike.

    Args:
        respond: the callable described above.
        **kwargs: as for ``flask.Response`` (status, content_type, headers).
    """

    def __init__(self, respond: Callable[[Callable, str, list], list], **kwargs):
        # An iterator, not a list: nothing makes up a Content-Length.
        super().__init__(iter(()), **kwargs)
        self._respond = respond

    def __call__(self, environ, start_response):
        status, headers = self.get_wsgi_response(environ)[1:]
        return self._respond(start_response, status, list(headers))


def final_writer(environ, write: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """The ``write`` callable for the last piece of a response's body:
    the server's ``FINAL_WRITE_KEY`` one if ``write`` (what
    ``start_response`` returned) is that server's own ``write``, so that no
    middleware's wrapper is bypassed; else ``write`` itself."""
    final = environ.get(FINAL_WRITE_KEY)
    if final is not None and getattr(write, "__self__", None) is getattr(final, "__self__", final):
        return final
    return write


def timed_writer(environ, write: Callable[[bytes], None], timeout: float
                 ) -> Callable[[bytes], None]:
    """``write`` (the WSGI ``write`` callable) bounded to ``timeout`` seconds
    per call: past it the call raises ``TimeoutError``.

    Where the server shows the request's socket (``SOCKET_KEY``), the bound
    is the socket's own timeout, set for the length of the call: gevent
    then starts a timer only if a send would block. Elsewhere each call
    runs under a ``gevent.Timeout``.
    """
    sock = environ.get(SOCKET_KEY)
    if sock is None:
        def bounded(data: bytes) -> None:
            with gevent.Timeout(timeout, TimeoutError("write timed out")):
                write(data)
        return bounded

    def bounded_by_socket(data: bytes) -> None:
        previous = sock.timeout
        sock.settimeout(timeout)
        try:
            write(data)
        finally:
            sock.settimeout(previous)
    return bounded_by_socket


_date = [0, ""]  # [second, its Date header]


def http_date() -> str:
    """Now as the value of an HTTP ``Date`` header (RFC 9110 §5.6.7,
    ``Mon, 30 Nov 2026 01:49:23 GMT``), made once per second. A response
    that brings its own spares the server making one per response."""
    now = int(time.time())
    cached = _date
    if cached[0] != now:
        cached[1] = formatdate(now, usegmt=True)
        cached[0] = now
    return cached[1]


def error_response(status: int, reason: str) -> Response:
    """An error answer: a one-line reason in the body and in
    ``X-Atmosphere-error``, as the Java server sends it (§8.1)."""
    return Response(reason + "\n", status=status, mimetype="text/plain",
                    headers={"X-Atmosphere-error": reason, **NO_CACHE})


def watch_eof(environ, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` once if the peer of the request closes its end of
    the socket while the response is held or streaming (nothing else is read
    from it then, so readable means EOF). Returns a function that stops
    watching. Without the socket (a server other than
    ``AtmosphereHandler``'s) it does nothing: a write then finds the peer gone.
    """
    sock = environ.get(SOCKET_KEY)
    if sock is None:
        return lambda: None
    watcher = gevent.get_hub().loop.io(sock.fileno(), 1)  # 1: readable

    def check():
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        if not data:
            callback()

    def readable():
        watcher.stop()  # once: a pipelined request is no EOF, and no busy loop
        gevent.spawn(check)

    watcher.start(readable)
    return watcher.close


def socket_abort(environ) -> Callable[[], None]:
    """A function that shuts down the socket of the request ``environ``,
    waking a blocked write (a no-op where the server does not show it)."""
    sock = environ.get(SOCKET_KEY)

    def abort():
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
    return abort
