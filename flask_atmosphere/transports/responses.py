"""The responses of the HTTP transports: their common headers, a response
whose headers go out at once and whose body is written as it comes, one
whose answer is written once Flask made its headers final, and refusals.
"""
from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any, Callable, Iterable

from flask import Response  # not werkzeug's: Flask would recast it (force_type)

from ..decisions import Refusal
from .sockets import Write, socket_abort, timed_writer

__all__ = ["NO_CACHE", "LiveResponse", "DeferredResponse", "UpgradedResponse",
           "refusal_response", "empty_response", "http_date"]

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

StartResponse = Callable[..., Write]


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

    def __init__(self, body: Callable[[Write], None], done: Callable[[], None],
                 write_timeout: float, **kwargs: Any):
        headers = dict(NO_CACHE)
        headers.update(kwargs.pop("headers", {}))
        # An iterator, not a list: no Content-Length, so the body is chunked.
        super().__init__(iter(()), headers=headers, **kwargs)
        self._body = body
        self._done = done
        self._write_timeout = write_timeout

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
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
    (the lean path, ``lean/``), so both answer alike.

    Args:
        respond: the callable described above.
        **kwargs: as for ``flask.Response`` (status, content_type, headers).
    """

    def __init__(self, respond: Callable[[StartResponse, str, list[tuple[str, str]]],
                                         Iterable[bytes]], **kwargs: Any):
        # An iterator, not a list: nothing makes up a Content-Length.
        super().__init__(iter(()), **kwargs)
        self._respond = respond

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        status, headers = self.get_wsgi_response(environ)[1:]
        return self._respond(start_response, status, list(headers))


class UpgradedResponse(Response):
    """What the view returns once it upgraded the request to a WebSocket
    itself (``environ.UPGRADE_KEY``): the ``101`` is sent already, so this
    writes nothing at all."""

    def __init__(self) -> None:
        super().__init__(content_type="text/plain")  # nothing for Werkzeug to look up

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return []


def refusal_response(refusal: Refusal) -> Response:
    """The answer to a refused request: the status, a one-line reason in
    the body and in ``X-Atmosphere-error`` as the Java server sends it
    (§8.1), and ``Retry-After`` when the refusal says when to try again."""
    headers = {"X-Atmosphere-error": refusal.reason, **NO_CACHE}
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(refusal.retry_after)
    response = Response(refusal.reason + "\n", status=refusal.status, mimetype="text/plain",
                        headers=headers)
    for name, value in refusal.headers:
        response.headers[name] = value
    return response


def empty_response() -> Response:
    """An empty ``200``: the answer to a message upstream, a goodbye, or a
    poll with nothing to say."""
    return Response("", mimetype="text/plain", headers=NO_CACHE)


_date: tuple[int, str] = (0, "")  # (second, its Date header)


def http_date() -> str:
    """Now as the value of an HTTP ``Date`` header (RFC 9110 §5.6.7,
    ``Mon, 30 Nov 2026 01:49:23 GMT``), made once per second. A response
    that brings its own spares the server making one per response."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]
