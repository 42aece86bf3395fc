"""Server-sent events (§4.4): a ``text/event-stream`` response, one event per
write, each message with its sequence number as the event id.

A browser's own EventSource reconnect sends ``Last-Event-ID``; the stream
then resumes right after that message.
"""
from __future__ import annotations

import re

from ..connection import Connection
from ..mailbox import Outbound
from ..protocol import frame
from .streaming import open_stream

__all__ = ["serve", "event_data"]

_NEWLINE = re.compile(r"\r\n|\r|\n")


def event_data(text: str, track: bool) -> bytes:
    """The ``data:`` lines of one event carrying ``text`` (without an id).

    An event's lines reach the page joined with ``\\n`` whatever line breaks
    were sent, so ``\\r\\n`` and ``\\r`` become ``\\n`` before the length is
    counted: the length framing (§3) then matches what the client parses.
    """
    text = frame(_NEWLINE.sub("\n", text), track)
    return ("".join(f"data:{line}\r\n" for line in text.split("\n")) + "\r\n").encode("utf-8")


def serve(connection: Connection, new: bool, environ, last_event_id: str | None):
    """Serve ``connection`` with SSE, resuming after ``last_event_id`` (the
    ``Last-Event-ID`` header) when the browser reconnects on its own."""
    if last_event_id is not None and not new:
        try:
            connection.mailbox.resume(int(last_event_id))
        except ValueError:
            pass  # not one of ours: nothing to resume
    track = connection.track
    key = ("sse", track)

    def encode(seq: int, outbound: Outbound) -> bytes:
        return b"id:%d\r\n" % seq + outbound.cached(key, lambda o: event_data(o.text, track))

    return open_stream(connection, new, environ, "text/event-stream", encode,
                       lambda text: event_data(text, False), keep=True)
