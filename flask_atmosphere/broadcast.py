"""A broadcast as plain data: where it goes, what it carries, and whom it
spares. Broadcasters deliver it; backplanes carry it between processes."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from .filters import ClientFilter

__all__ = ["Broadcast", "normalize_path", "path_key"]


def path_key(path: str) -> str:
    """The broadcaster key of a request path as the server decoded it
    (``request.path``): a leading ``/``, no trailing ``/`` (``"/"`` stays
    ``"/"``)."""
    return "/" + path.strip("/")


def normalize_path(path: str) -> str:
    """The broadcaster key of a path the app gives (to ``broadcast``,
    ``clients``): its percent-escapes decoded once, so that what
    ``url_for("room", room="a b")`` writes (``/rooms/a%20b``) and what
    ``request.path`` says (``/rooms/a b``) name one broadcaster. (A name
    that itself holds an escape, ``a%20b``, is reached by ``url_for``'s form.)"""
    return path_key(unquote(path) if "%" in path else path)


@dataclass(frozen=True)
class Broadcast:
    """One broadcast as it crosses the backplane.

    Attributes:
        path: a broadcaster path, or a path prefix (by whole segments).
        message: the message: a ``str``, or what the route's wire format renders.
        to: the client filter.
        sender: the uuid of the broadcasting client; ``None`` for a server-side push.
        exact: ``True`` to reach the broadcaster ``path`` only (a client's
            ``broadcast``), ``False`` for ``path`` and every path below it.
    """
    path: str
    message: Any
    to: ClientFilter
    sender: str | None = None
    exact: bool = False
    #: For one shard's copy of a broadcast that spans shards (a backplane's):
    #: ``(shard, shards)``; it reaches only the clients of that shard.
    shard: tuple[int, int] | None = None
    #: Where a backplane's shard stream holds it: ``(shard, epoch, entry id)``
    #: (the Redis backplane's, as it hands it on); ``None`` otherwise.
    position: tuple[int, str, str] | None = None

    def for_shard(self, shard: int, shards: int) -> "Broadcast":
        """This broadcast as shard ``shard`` of ``shards`` carries it."""
        return replace(self, shard=(shard, shards))
