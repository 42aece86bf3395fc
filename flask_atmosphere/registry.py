"""The process-wide registry of live connections, per broadcaster path.

A broadcaster is a concrete request path (``/rooms/blue``); a lookup by prefix
matches whole path segments (``/rooms`` reaches ``/rooms/blue``, never
``/roomservice``). Lookups return snapshots, so the registry may change while
a broadcast goes through them.
"""
from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Iterator
from gevent.event import Event

from .broadcast import path_key

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .decisions import Refusal

__all__ = ["Registry"]


class Registry:
    """Live connections by broadcaster path and by uuid."""

    def __init__(self) -> None:
        self._by_path: dict[str, dict[str, "Connection"]] = {}
        self._by_uuid: dict[str, "Connection"] = {}
        self._closed: dict[str, tuple[float, "Refusal"]] = {}  # in order of expiry
        self._empty = Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._by_uuid)

    def add(self, connection: "Connection") -> None:
        """Register ``connection`` under its path and uuid."""
        self._by_path.setdefault(connection.path, {})[connection.uuid] = connection
        self._by_uuid[connection.uuid] = connection
        self._empty.clear()

    def remove(self, connection: "Connection") -> None:
        """Forget ``connection``; unknown connections are ignored."""
        if self._by_uuid.get(connection.uuid) is connection:
            del self._by_uuid[connection.uuid]
        clients = self._by_path.get(connection.path)
        if clients is not None and clients.get(connection.uuid) is connection:
            del clients[connection.uuid]
            if not clients:
                del self._by_path[connection.path]
        if not self._by_uuid:
            self._empty.set()

    def tombstone(self, uuid: str, refusal: "Refusal", seconds: float) -> None:
        """The app closed the client ``uuid``: for ``seconds`` (the grace
        period), :meth:`closed` answers ``refusal`` for it."""
        now = monotonic()
        closed = self._closed
        while closed:  # the oldest first (one grace period for all, so in order)
            oldest, (until, _) = next(iter(closed.items()))
            if until > now:
                break
            del closed[oldest]
        closed.pop(uuid, None)
        closed[uuid] = (now + seconds, refusal)

    def closed(self, uuid: str) -> "Refusal | None":
        """What a return of the client ``uuid`` gets, if the app closed it
        within the grace period; else ``None``."""
        entry = self._closed.get(uuid)
        if entry is None:
            return None
        if entry[0] <= monotonic():
            del self._closed[uuid]
            return None
        return entry[1]

    def wait_empty(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds until no connection is left (on the
        hub thread); return whether none is."""
        return self._empty.wait(timeout)

    def get(self, uuid: str) -> "Connection | None":
        """The live connection with this uuid (tracking id), or ``None``."""
        return self._by_uuid.get(uuid)

    def at(self, path: str) -> list["Connection"]:  # a key: see broadcast.path_key
        """A snapshot of the connections of the broadcaster ``path`` exactly."""
        return list(self._by_path.get(path_key(path), {}).values())

    def under(self, prefix: str) -> list["Connection"]:
        """A snapshot of the connections of ``prefix`` and of every path below
        it, by whole segments. ``"/"`` reaches every connection."""
        prefix = path_key(prefix)
        if prefix == "/":
            return list(self._by_uuid.values())
        below = prefix + "/"
        found: list["Connection"] = []
        for path, clients in list(self._by_path.items()):
            if path == prefix or path.startswith(below):
                found.extend(clients.values())
        return found

    def __iter__(self) -> Iterator["Connection"]:
        return iter(list(self._by_uuid.values()))

    def paths(self) -> list[str]:
        """The broadcaster paths that have live connections."""
        return list(self._by_path)
