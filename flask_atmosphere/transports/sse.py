"""Server-sent events (§4.4): a ``text/event-stream`` response, one event per
write, each message with its offset (its sequence number for the client) as
the event id.

An EventSource's own reconnect sends ``Last-Event-ID``, and the bundled
client sends ``X-Atmosphere-Offset``: the stream then resumes right after the
last message the browser got (see ``Connection.resume``).

Two limits of the format, whatever the client: an event's lines reach the
page joined with ``\\n``, so a ``\\r`` or ``\\r\\n`` in a message arrives as
``\\n`` (the HTML standard's EventSource parser splits lines on all three);
and a message that is exactly the heartbeat padding ``X`` is read as a
heartbeat by the official clients.
"""
from __future__ import annotations

from typing import Any

from ..connection import Connection
from ..mailbox import Outbound
from .streaming import open_stream

__all__ = ["serve", "event_data", "message_event"]


def event_data(data: bytes, prefix: bytes = b"") -> bytes:
    """The ``data:`` lines of one event carrying ``prefix + data`` (UTF-8),
    without an id: one line per line of the message, ``\\r\\n`` and ``\\r``
    read as ``\\n`` first, as the page will see them. The length framing
    (§3), given in ``prefix``, counts the message as the page sees it: a
    ``\\r\\n`` is one code unit fewer there."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if prefix:
            prefix = b"%d|" % Outbound(data.decode("utf-8")).units
    if b"\n" not in data:
        return b"data:" + prefix + data + b"\r\n\r\n"
    return b"".join(b"data:" + line + b"\r\n" for line in (prefix + data).split(b"\n")) + b"\r\n"


def message_event(seq: int, outbound: Outbound, track: bool) -> bytes:
    """The event of one message: its offset as the event id, then its data."""
    return b"id:%d\r\n" % seq + event_data(outbound.data, outbound.prefix(track))


def serve(connection: Connection, new: bool, environ: dict[str, Any]) -> Any:
    """Serve ``connection`` with SSE (``Connected`` delivered already; what
    it missed, if it said how far it got, is queued again by the endpoint)."""
    connection.keep_history()
    track = connection.track

    def encode(seq: int, outbound: Outbound) -> bytes:
        return message_event(seq, outbound, track)

    return open_stream(connection, new, environ, "text/event-stream", encode,
                       lambda text: event_data(text.encode("utf-8")))
