"""Counters of what happened to messages and connections in this process,
for ``Atmosphere.stats()``: every drop, cut and loss is counted here as well
as logged."""
from __future__ import annotations

from collections import Counter

from flask_atmosphere.mailbox import CloseRequest, MailboxFull

__all__ = ["Stats", "disconnect_reason"]


class Stats:
    """Named counters, only ever increased (hub thread; the backplane's
    threads add through ``Broadcaster.call``).

    The names used: ``connects``, ``messages_in`` (from clients),
    ``broadcasts`` and ``sends`` (messages the app pushed), ``deliveries``
    (a message handed to one client: a broadcast to 100 clients is 100),
    ``messages_lost`` (gone for good, told to the client as
    ``MessagesLost``), ``messages_dropped`` (by the drop-oldest policy),
    ``slow_consumers`` (clients cut for a full mailbox or a stalled write),
    ``refused`` (requests refused by origin, limits or ``before_connect``),
    the backplane's ``backplane_*``, and ``forwarding_lost`` (entries of
    requests or replies sent to this process through Redis that it lost
    unread: it fell too far behind). Disconnects are counted apart, by
    reason (:func:`disconnect_reason`).
    """
    __slots__ = ("counts", "disconnects")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.disconnects: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        self.counts[name] += n

    def disconnected(self, reason: str) -> None:
        """Count one disconnect for ``reason``."""
        self.disconnects[reason] += 1

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return dict(self.counts)


def disconnect_reason(request: CloseRequest | None, error: BaseException | None,
                      expired: bool) -> str:
    """Why a client was disconnected, for the stats: ``client_closed`` (it
    said goodbye), ``client_lost`` (its connection failed), ``timeout`` (it
    did not come back within the grace period), ``slow_consumer``,
    ``shutdown`` (1001), ``protocol_error`` (1002, 1007, 1009),
    ``internal_error`` (1011) or ``app_closed`` (any other close the server
    asked for, ``client.close()`` mostly).

    Args:
        request: how the server asked to close, ``None`` if it did not.
        error: what ended the connection, if anything did.
        expired: the grace period ran out.
    """
    if request is None:
        if expired:
            return "timeout"
        return "client_lost" if error is not None else "client_closed"
    if isinstance(request.error, MailboxFull) or request.reason == "slow consumer":
        return "slow_consumer"
    return {1001: "shutdown", 1002: "protocol_error", 1007: "protocol_error",
            1009: "protocol_error", 1011: "internal_error"}.get(request.code, "app_closed")
