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

A bare callable is code: it cannot cross to another process. With a backplane
between processes, an app's filter is registered under a name, and crosses
as that name and JSON arguments (see :func:`client_filter`); the built-in
ones, and :class:`Uuids`, cross as data (:func:`to_data`, :func:`from_data`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["ClientFilter", "Everyone", "SkipSelf", "OnlySelf", "Predicate", "AllOf", "AnyOf",
           "Not", "Uuids", "Named", "client_filter", "as_filter", "to_data", "from_data",
           "FilterError"]


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


@dataclass(frozen=True)
class Uuids(ClientFilter):
    """Allows exactly the clients with one of ``uuids`` (their tracking ids),
    on whatever process they are."""
    uuids: frozenset[str]

    def __init__(self, *uuids: str):
        object.__setattr__(self, "uuids", frozenset(uuids))

    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return client.uuid in self.uuids


#: The app's filters registered by name (:func:`client_filter`).
_NAMED: dict[str, Callable[..., bool]] = {}


@dataclass(frozen=True)
class Named(ClientFilter):
    """An app's filter registered with :func:`client_filter`, with the JSON
    arguments it is called with: ``function(client, **args) -> bool``.
    Calling it binds arguments: ``only_admins(level=2)``."""
    name: str
    args: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def allows(self, client: Any, sender_uuid: str | None) -> bool:
        return bool(_NAMED[self.name](client, **self.args))

    def __call__(self, **args: Any) -> "Named":
        return Named(self.name, {**self.args, **args})


def client_filter(name: str) -> Callable[[Callable[..., bool]], Named]:
    """Register ``function(client, **args) -> bool`` as the client filter
    ``name``, in every process that imports it; use what it returns as
    ``to=``, bare or called with JSON arguments::

        @client_filter("admins")
        def only_admins(client, level=1):
            return client.session.get("level", 0) >= level

        atmosphere.broadcast("/chat", msg, to=only_admins(level=2))

    Through a backplane the filter crosses as its name and arguments, and
    each process applies its own registered function to its own clients.

    Raises:
        ValueError: ``name`` is registered already for another function.
    """
    def register(function: Callable[..., bool]) -> Named:
        known = _NAMED.get(name)
        if known is not None and known is not function \
                and getattr(known, "__qualname__", None) != getattr(function, "__qualname__", 0):
            raise ValueError(f"a client filter named {name!r} is registered already")
        _NAMED[name] = function
        return Named(name)
    return register


class FilterError(ValueError):
    """A filter cannot be carried as data (an unregistered callable), or data
    does not describe one (a malformed or unknown filter from a backplane)."""


def to_data(value: ClientFilter) -> Any:
    """``value`` as JSON-able data, for a backplane.

    Raises:
        FilterError: it holds a bare callable (a :class:`Predicate`): register
            it with :func:`client_filter` to send it to other processes.
    """
    if value is Everyone:
        return "everyone"
    if value is SkipSelf:
        return "skip-self"
    if value is OnlySelf:
        return "only-self"
    if isinstance(value, AllOf):
        return {"all": [to_data(f) for f in value.filters]}
    if isinstance(value, AnyOf):
        return {"any": [to_data(f) for f in value.filters]}
    if isinstance(value, Not):
        return {"not": to_data(value.filter)}
    if isinstance(value, Uuids):
        return {"uuids": sorted(value.uuids)}
    if isinstance(value, Named):
        return {"named": value.name, "args": value.args}
    raise FilterError(f"the client filter {value!r} is code and cannot reach other processes: "
                      f"register it with flask_atmosphere.client_filter(name)")


_SIMPLE = {"everyone": Everyone, "skip-self": SkipSelf, "only-self": OnlySelf}


def from_data(data: Any, depth: int = 0) -> ClientFilter:
    """The filter that :func:`to_data` made ``data`` of (the built-in ones
    are the very singletons, so the broadcaster's fast path sees them).

    Raises:
        FilterError: ``data`` is malformed, nested too deep, or names a filter
            this process did not register.
    """
    if depth > 16:
        raise FilterError("client filter nested too deep")
    if isinstance(data, str):
        simple = _SIMPLE.get(data)
        if simple is not None:
            return simple
    elif isinstance(data, dict) and len(data) in (1, 2):
        if "all" in data and isinstance(data["all"], list):
            return AllOf(tuple(from_data(f, depth + 1) for f in data["all"]))
        if "any" in data and isinstance(data["any"], list):
            return AnyOf(tuple(from_data(f, depth + 1) for f in data["any"]))
        if "not" in data:
            return Not(from_data(data["not"], depth + 1))
        uuids = data.get("uuids")
        if isinstance(uuids, list) and all(isinstance(u, str) for u in uuids):
            return Uuids(*uuids)
        name, args = data.get("named"), data.get("args", {})
        if isinstance(name, str) and isinstance(args, dict):
            if name not in _NAMED:
                raise FilterError(f"no client filter named {name[:60]!r} is registered here")
            return Named(name, args)
    raise FilterError(f"not a client filter: {str(data)[:60]!r}")


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
