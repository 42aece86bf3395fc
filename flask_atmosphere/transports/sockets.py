"""What the HTTP transports do with the request's socket, where the server
shows it (``environ.SOCKET_KEY``): bounded writes, noticing a peer that left
while a response is held, and cutting a peer that stopped reading."""
from __future__ import annotations

import socket
from typing import Any, Callable

import gevent

from ..environ import FINAL_WRITE_KEY, SOCKET_KEY

__all__ = ["final_writer", "timed_writer", "watch_eof", "socket_abort"]

Write = Callable[[bytes], Any]


def final_writer(environ: dict[str, Any], write: Write) -> Write:
    """The ``write`` callable for the last piece of a response's body:
    the server's ``FINAL_WRITE_KEY`` one if ``write`` (what
    ``start_response`` returned) is that server's own ``write``, so that no
    middleware's wrapper is bypassed; else ``write`` itself."""
    final: Write | None = environ.get(FINAL_WRITE_KEY)
    if final is not None and getattr(write, "__self__", None) is getattr(final, "__self__", final):
        return final
    return write


def timed_writer(environ: dict[str, Any], write: Write, timeout: float) -> Write:
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


def watch_eof(environ: dict[str, Any], callback: Callable[[], None]) -> Callable[[], None]:
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

    def check() -> None:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        if not data:
            callback()

    def readable() -> None:
        watcher.stop()  # once: a pipelined request is no EOF, and no busy loop
        gevent.spawn(check)

    watcher.start(readable)
    stop: Callable[[], None] = watcher.close
    return stop


def socket_abort(environ: dict[str, Any]) -> Callable[[], None]:
    """A function that shuts down the socket of the request ``environ``,
    waking a blocked write (a no-op where the server does not show it)."""
    sock = environ.get(SOCKET_KEY)

    def abort() -> None:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    return abort
