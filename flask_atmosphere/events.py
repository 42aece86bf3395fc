"""The events a client's ``receive`` gets: small frozen dataclasses, no behaviour.

They are made to be taken apart with ``match``::

    match event:
        case Connected():
            ...
        case Disconnected(ClientDisconnected()):
            ...
        case JsonMessage({"type": "typing", **rest}):
            ...
        case TextMessage(text):
            ...

The order is fixed: ``Connected`` first, then messages and errors, then
``Disconnected`` exactly once, last.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "Event", "Connected", "Disconnected", "ClientDisconnected", "ServerDisconnected",
    "Error", "TextMessage", "JsonMessage", "MessagesLost",
]


@dataclass(frozen=True)
class ClientDisconnected:
    """The value of ``Disconnected.by`` when the peer went away: it closed the
    connection, stopped polling past the grace period, or its socket died."""


@dataclass(frozen=True)
class ServerDisconnected:
    """The value of ``Disconnected.by`` when this server ended the connection:
    ``client.close()``, a full mailbox, a protocol error, or shutdown."""


@dataclass(frozen=True)
class Connected:
    """The connection is open and the client is registered: ``send`` and
    ``broadcast`` from here reach the new client too.

    Attributes:
        takeover: the client was held by another process of the app, which
            died (or was stopped) within its grace period: this object takes
            its place, with its uuid (the old object is gone with its
            process, and what only it knew with it). ``False`` for a new client.
    """
    takeover: bool = False


@dataclass(frozen=True)
class Disconnected:
    """The connection is over; no event follows.

    Attributes:
        by: ``ClientDisconnected()`` or ``ServerDisconnected()``.
        error: the exception that ended the connection (a protocol error, an
            oversize message, a failed write), or ``None`` for a clean close.
    """
    by: Union[ClientDisconnected, ServerDisconnected]
    error: BaseException | None = None


@dataclass(frozen=True)
class Error:
    """Something went wrong without ending the connection, most often an
    exception raised by ``receive`` itself (given as ``error``)."""
    error: BaseException


@dataclass(frozen=True)
class TextMessage:
    """An inbound message that the route's wire format did not read as JSON."""
    text: str


@dataclass(frozen=True)
class JsonMessage:
    """An inbound JSON object or array, already parsed (``dict`` or ``list``)."""
    json: Any


@dataclass(frozen=True)
class MessagesLost:
    """Messages meant for this client are gone for good, and it did not get
    them: the connection carries on without them. Resend whatever state the
    page needs (a chat would send the last lines again), as Centrifugo's
    ``recovered: false`` asks its apps to.

    Attributes:
        count: how many messages were lost; ``None`` when that is not known
            (Redis lost the backplane's history itself).
        path: the broadcaster they were meant for (the client's own path).
        reason: why: ``"history"`` (the client came back reporting less than
            it was sent, and the history no longer held the rest) or
            ``"overflow"`` (``ATMOSPHERE_MAILBOX_OVERFLOW = "drop-oldest"``
            dropped them from a full mailbox) or ``"backplane"`` (Redis lost
            broadcasts to this client's shard, see the README's scale-out)
            or ``"takeover"`` (the client was taken over from a process
            that died before it wrote the client's first checkpoint, or left
            one that could not be read: what it held for the client is gone).
    """
    count: int | None
    path: str
    reason: str = "history"


Event = Union[Connected, Disconnected, Error, TextMessage, JsonMessage, MessagesLost]
