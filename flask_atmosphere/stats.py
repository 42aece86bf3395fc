"""Counters of what happened to messages and connections in this process,
for ``Atmosphere.stats()``: every drop, cut and loss is counted here as well
as logged."""
from __future__ import annotations

from collections import Counter

__all__ = ["Stats"]


class Stats:
    """Named counters, only ever increased (hub thread).

    The names used: ``connects``, ``messages_in``, ``messages_lost``
    (gone for good, told to the client as ``MessagesLost``),
    ``messages_dropped`` (by the drop-oldest policy), ``slow_consumers``
    (clients cut for a full mailbox or a stalled write), ``refused`` (requests
    refused by origin, limits or ``before_connect``), ``disconnects_client`` and
    ``disconnects_server``.
    """
    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        self.counts[name] += n

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return dict(self.counts)
