"""Long-polling (§4.2) and its script-tag form, JSONP (§4.5).

Each GET is held until there is something to say, then completed: with
every queued message (each length-framed) when the client tracks message
sizes, else with just one, since an untracked client would read several as
one (Appendix C); with a heartbeat after a quiet period. Between two polls
the client's mailbox keeps filling; the next poll gets it all, in order.

The first request with tracking id ``0`` and ``X-atmo-protocol`` gets only the
handshake, as its whole body (§2.3); the client is registered (and gets
``Connected``) right then, so nothing broadcast before its next poll is lost.
A client that acknowledges what it got (``X-Atmosphere-Offset``) has what a
lost answer carried sent again on its next poll.
"""
from __future__ import annotations

import re

import gevent
import simplejson
from flask import Response  # not werkzeug's: Flask would recast it (force_type)

from typing import Any, Callable, Iterable

from ..connection import Carrier, Connection
from ..decisions import handshake_only, poll_limit
from ..protocol import frame, heartbeat_text
from .responses import NO_CACHE, DeferredResponse, http_date
from .sockets import final_writer, socket_abort, timed_writer, watch_eof

__all__ = ["serve", "Poll", "content_type"]

_NOT_A_NAME = re.compile(r"[^A-Za-z0-9]")

_PLAIN = "text/plain; charset=utf-8"
_SCRIPT = "application/javascript; charset=utf-8"


def content_type(jsonp_callback: str | None) -> str:
    """The ``Content-Type`` of a poll's answer: ``text/plain`` for
    long-polling, ``application/javascript`` for JSONP (§4.5)."""
    return _PLAIN if jsonp_callback is None else _SCRIPT


def serve(connection: Connection, new: bool, environ: dict[str, Any],
          jsonp_callback: str | None = None) -> Response:
    """Serve one poll of ``connection`` (the full path, through Flask).

    Args:
        connection: the client, ``Connected`` delivered already; ``new`` if
            this request opened it.
        environ: the WSGI environ of the request.
        jsonp_callback: the ``jsonpTransport`` parameter for JSONP, else ``None``.
    Returns:
        the Flask response: the handshake, or the held poll.
    """
    if new and handshake_only(connection.params):
        connection.detach(None)  # it polls again at once, with its uuid
        return Response(_encode(connection.handshake(), jsonp_callback),
                        content_type=content_type(jsonp_callback), headers=NO_CACHE)
    poll = Poll(connection, environ, jsonp_callback)
    return DeferredResponse(poll.respond, content_type=content_type(jsonp_callback),
                            headers=NO_CACHE)


class Poll:
    """One poll of a client, held until there is something to say: attached
    to the client at once, answered by :meth:`respond`.

    Both paths use it: through Flask (:func:`serve`) and in front of it
    (``transports/fastpath.py``).

    Args:
        connection: the client.
        environ: the WSGI environ of the request.
        jsonp_callback: the ``jsonpTransport`` parameter for JSONP, else ``None``.
    """
    __slots__ = ("connection", "environ", "jsonp_callback", "carrier")

    def __init__(self, connection: Connection, environ: dict[str, Any],
                 jsonp_callback: str | None = None):
        self.connection = connection
        self.environ = environ
        self.jsonp_callback = jsonp_callback
        self.carrier = Carrier(socket_abort(environ),
                               transport="long-polling" if jsonp_callback is None else "jsonp")
        connection.attach(self.carrier)

    def respond(self, start_response: Callable[..., Any], status: str,
                headers: list[tuple[str, str]]) -> Iterable[bytes]:
        """Answer the poll as a WSGI app would, with ``status`` and
        ``headers`` (``(name, value)`` strings, without a length).

        The answer is every queued message (each length-framed) when the
        client tracks message sizes, else just one (Appendix C); a heartbeat
        after a quiet period; nothing once the client is closed. It goes
        with a ``Content-Length``, headers and body in one send, as soon as
        there is something to say.

        Only the first poll after a client connects, or after a poll of it
        went unanswered, sends its headers at once and its body chunked
        later: the clients fire ``open`` when the headers of that poll
        arrive (§2.5, §4.2). A client's later polls fire nothing on their
        headers, so they are held back and sent with the answer: one write
        per poll instead of two, for the server and for the client.

        Returns:
            ``[]``: everything is written already.
        """
        connection, carrier, environ = self.connection, self.carrier, self.environ
        mailbox = connection.mailbox
        limit = poll_limit(connection.track)
        write_timeout = connection.settings.write_timeout
        batch = None
        failure = None
        answered, connection.poll_answered = connection.poll_answered, False
        headers.append(("Date", http_date()))
        try:
            write = None  # until the headers are out
            if mailbox.closed or len(mailbox) and not mailbox.in_flight:  # taken without waiting
                batch = mailbox.take(None, limit) if connection.serves(carrier) else None
            else:
                if not answered:
                    write = start_response(status, headers)
                    timed_writer(environ, write, write_timeout)(b"")  # the headers, now
                    # the answer is all that follows them: with the last chunk
                    write = timed_writer(environ, final_writer(environ, write), write_timeout)
                stop_watching = watch_eof(environ, lambda: connection.lost(carrier))
                try:
                    # Nothing is taken while waiting (for a message, or for
                    # a batch an earlier request is still writing), nor by a
                    # poll another took over: the newer poll finds it all,
                    # in order.
                    mailbox.wait(connection.heartbeat_interval())
                    if limit is None and len(mailbox) and connection.serves(carrier):
                        self._settle()
                finally:
                    stop_watching()
                batch = mailbox.take(0, limit) if connection.serves(carrier) else None
            try:
                data = self._answer(batch)
                if write is None:
                    if data is None:
                        data = b""
                    headers.append(("Content-Length", str(len(data))))
                    write = timed_writer(environ, start_response(status, headers), write_timeout)
                elif data is None:
                    return []  # an empty answer
                write(data)
            except BaseException as exc:  # broken, timed out, or killed
                if batch:
                    connection.requeue(batch)
                if isinstance(exc, OSError):
                    failure = exc
                raise
            if batch:
                mailbox.written()
            connection.poll_answered = bool(data)
        except TimeoutError:
            socket_abort(environ)()
        except OSError:
            pass  # the peer is gone
        finally:
            connection.detach(carrier, error=failure)
        return []

    def _settle(self) -> None:
        """Before a woken poll takes its messages: wait until the server has
        nothing else to do at once (gevent's loop is idle: the messages read
        meanwhile are fanned out), but at most
        ``ATMOSPHERE_LONG_POLL_BATCH_WAIT`` seconds. Under load each poll
        then carries several messages; on a quiet server it waits for
        nothing."""
        connection = self.connection
        wait = connection.settings.long_poll_batch_wait
        if wait > 0:
            try:
                with gevent.Timeout(wait):
                    gevent.idle()
            except gevent.Timeout:
                pass

    def _answer(self, batch: list[tuple[int, Any]] | None) -> bytes | None:
        """The body for what ``take`` gave: ``None`` for nothing at all (the
        client is closed, or this poll was superseded and took nothing)."""
        if batch is None:
            return None
        connection = self.connection
        track = connection.track
        callback = self.jsonp_callback
        if not batch:
            return _encode(heartbeat_text(connection.params), callback)
        if callback is None:  # one copy of each message's bytes
            parts = []
            for _, outbound in batch:
                if track:
                    parts.append(outbound.prefix(True))
                parts.append(outbound.data)
            return b"".join(parts)
        return _encode("".join(frame(o.text, track) for _, o in batch), callback)


def _encode(text: str, jsonp_callback: str | None) -> bytes:
    if jsonp_callback is None:
        return text.encode("utf-8")
    # The Java server's JSONPAtmosphereInterceptor body; JSON string escaping
    # is valid JavaScript (U+2028 and U+2029 escaped too).
    name = _NOT_A_NAME.sub("", jsonp_callback)
    return f'{name}({{"message" : {simplejson.dumps(text)}}});'.encode("utf-8")
