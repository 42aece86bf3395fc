"""Client filters: which clients of a broadcaster a broadcast reaches.

A filter answers ``allows(client, sender_uuid)``; ``sender_uuid`` is the uuid of
the client that broadcast, or ``None`` for a server-side push. The built-in
filters are plain data, so a broadcast can carry them to other processes.

Filters compose with ``&``, ``|`` and ``~``, and any callable taking a client and
returning a bool can stand in for one::

    def OnlyAdmins(client):
        return client.session.get("admin", False)

    self.broadcast(msg, to=SkipSelf & Predicate(OnlyAdmins))
    self.broadcast(msg, to=OnlyAdmins)          # a bare callable works too
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ClientFilter", "Everyone", "SkipSelf", "OnlySelf", "Predicate", "AllOf", "AnyOf",
           "Not", "as_filter"]


class ClientFilter:
    """Base of all client filters. Subclasses implement :meth:`allows`."""

    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        """Return ``True`` if ``client`` (an ``AtmosphereClient``) should get a
        message broadcast by the client whose uuid is ``sender_uuid``."""
        raise NotImplementedError

    def __and__(self, other: Any) -> "ClientFilter":
        return AllOf((self, as_filter(other)))

    def __rand__(self, other: Any) -> "ClientFilter":
        return AllOf((as_filter(other), self))

    def __or__(self, other: Any) -> "ClientFilter":
        return AnyOf((self, as_filter(other)))

    def __ror__(self, other: Any) -> "ClientFilter":
        return AnyOf((as_filter(other), self))

    def __invert__(self) -> "ClientFilter":
        return Not(self)


@dataclass(frozen=True, repr=False)
class _Everyone(ClientFilter):
    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return True

    def __repr__(self) -> str:
        return "Everyone"


@dataclass(frozen=True, repr=False)
class _SkipSelf(ClientFilter):
    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return bool(client.uuid != sender_uuid)

    def __repr__(self) -> str:
        return "SkipSelf"


@dataclass(frozen=True, repr=False)
class _OnlySelf(ClientFilter):
    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return bool(client.uuid == sender_uuid)

    def __repr__(self) -> str:
        return "OnlySelf"


#: Every client of the broadcaster, the sender included.
Everyone = _Everyone()
#: Every client but the sender (the default of ``AtmosphereClient.broadcast``);
#: everyone for a server-side push.
SkipSelf = _SkipSelf()
#: Only the sender; nobody for a server-side push.
OnlySelf = _OnlySelf()


@dataclass(frozen=True)
class Predicate(ClientFilter):
    """An app-defined filter: ``predicate(client) -> bool``. Being code, it only
    works in the process that defined it."""
    predicate: Callable[[Any], bool]

    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return bool(self.predicate(client))


@dataclass(frozen=True)
class AllOf(ClientFilter):
    """Allows a client that every one of ``filters`` allows."""
    filters: tuple[ClientFilter, ...]

    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return all(f.allows(client, sender_uuid) for f in self.filters)


@dataclass(frozen=True)
class AnyOf(ClientFilter):
    """Allows a client that any one of ``filters`` allows."""
    filters: tuple[ClientFilter, ...]

    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return any(f.allows(client, sender_uuid) for f in self.filters)


@dataclass(frozen=True)
class Not(ClientFilter):
    """Allows exactly the clients that ``filter`` refuses."""
    filter: ClientFilter

    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return not self.filter.allows(client, sender_uuid)


def as_filter(value: Any) -> ClientFilter:
    """Turn ``value`` into a :class:`ClientFilter`.

    Args:
        value: a ``ClientFilter``, or a callable ``(client) -> bool``.
    Raises:
        TypeError: for anything else.
    """
    if isinstance(value, ClientFilter):
        return value
    if callable(value):
        return Predicate(value)
    raise TypeError(f"a client filter must be a ClientFilter or a callable, not {value!r}")
