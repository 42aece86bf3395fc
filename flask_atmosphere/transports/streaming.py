"""HTTP streaming (§4.3): one GET whose response stays open, a chunk per write.

:func:`pump` is the loop that SSE shares: wait on the mailbox, write each
message as one chunk (flushed at once), a heartbeat after a quiet period.
"""
from __future__ import annotations

from typing import Any, Callable

from ..connection import Carrier, Connection
from ..mailbox import WRITE_BATCH, Outbound
from ..protocol import handshake_due, heartbeat_text
from .responses import LiveResponse
from .sockets import socket_abort, watch_eof

__all__ = ["serve", "pump", "open_stream"]

Write = Callable[[bytes], None]

#: Seconds a legacy streaming client gets after its handshake (when it does
#: not track message sizes) or on a reconnect, before the first message.
LEGACY_SETTLE = 0.1


def pump(connection: Connection, carrier: Carrier, write: Write,
         encode: Callable[[int, Outbound], bytes], beat: bytes, heartbeat: float | None
         ) -> None:
    """Write what the mailbox gives until it closes or another request takes
    the client over.

    Args:
        connection: the client.
        carrier: this request.
        write: sends one chunk; raises ``OSError`` when the peer is gone.
        encode: ``encode(seq, message)``, the bytes of one message.
        beat: the bytes of a heartbeat.
        heartbeat: seconds without a write before a heartbeat; ``None``: never.
    Raises:
        OSError: a write failed; what was not written is queued again.
    """
    mailbox = connection.mailbox
    while connection.serves(carrier):
        batch = mailbox.take(heartbeat, limit=WRITE_BATCH)
        if batch is None:
            return
        if not connection.serves(carrier):  # another request took over, or the peer left
            if batch:
                connection.requeue(batch)
            return
        if not batch:
            write(beat)
            continue
        for index, (seq, outbound) in enumerate(batch):
            if index and not connection.serves(carrier):  # the newer request waits for this
                connection.requeue(batch[index:])
                return
            try:
                write(encode(seq, outbound))
            except BaseException:  # broken, timed out, or killed
                connection.requeue(batch[index:])
                raise
        mailbox.written()


def open_stream(connection: Connection, new: bool, environ: dict[str, Any], mimetype: str,
                encode: Callable[[int, Outbound], bytes], encode_text: Callable[[str], bytes],
                legacy_xhr: bool = False) -> LiveResponse:
    """The response of a streaming transport: handshake (if due, §2.3), then
    the pumped messages and heartbeats, each as one flushed chunk.

    Args:
        connection: the client, ``Connected`` delivered already; ``new`` if
            this request opened it.
        environ: the WSGI environ of the request.
        mimetype: the response's media type.
        encode: the bytes of one queued message (see :func:`pump`).
        encode_text: the bytes of one write of plain text (handshake, heartbeat).
        legacy_xhr: the legacy client reads this transport by XHR progress
            events (it does for streaming, not for SSE).
    """
    carrier = Carrier(socket_abort(environ),
                      transport="sse" if mimetype == "text/event-stream" else "streaming")
    connection.attach(carrier)
    track = connection.track
    hello = None
    if handshake_due(connection.params):
        hello = encode_text(connection.handshake())
    beat = encode_text(heartbeat_text(connection.params))
    error: list[OSError] = []

    # The legacy (2.x-4.x) XHR client reads a stream by progress events:
    # it drops what shares one with the handshake when it does not track
    # sizes (§2.3), and on a reconnect it opens a few requests and aborts
    # the first at once, taking whatever was written there with it. Give it
    # a moment before the first message, unless this request ends meanwhile.
    version = connection.params.framework_version
    settle = legacy_xhr and version is not None and version[0] < 5 \
        and (not new or (hello is not None and not track))

    def body(write: Write) -> None:
        stop_watching = watch_eof(environ, lambda: connection.lost(carrier))
        try:
            if hello is not None:
                write(hello)  # its own chunk, before anything else (§2.3)
            if settle and carrier.ended.wait(LEGACY_SETTLE):
                return
            pump(connection, carrier, write, encode, beat, connection.heartbeat_interval())
        except OSError as exc:
            error.append(exc)
            raise
        finally:
            stop_watching()

    def done() -> None:
        connection.detach(carrier, error=error[0] if error else None)

    return LiveResponse(body, done, connection.settings.write_timeout, mimetype=mimetype)


def serve(connection: Connection, new: bool, environ: dict[str, Any]) -> LiveResponse:
    """Serve ``connection`` with HTTP streaming: ``text/plain``, each write
    (length-framed if asked) as one chunk."""
    track = connection.track
    return open_stream(connection, new, environ, "text/plain",
                       lambda seq, outbound: outbound.encoded(track),
                       lambda text: text.encode("utf-8"), legacy_xhr=True)
