"""Fan-out: from one broadcast to the mailboxes of its targets.

Everything that touches the registry or a mailbox runs on the gevent hub
thread that serves the connections. A call from any other OS thread (a worker
thread, a scheduler) is handed over to that hub with
``loop.run_callback_threadsafe``; a call from a greenlet of the hub runs at once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from gevent.monkey import get_original

from .filters import ClientFilter
from .mailbox import Outbound
from .registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .backplane import Backplane

__all__ = ["Broadcast", "Broadcaster"]

log = logging.getLogger("flask_atmosphere")
_native_thread_id = get_original("_thread", "get_ident")


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


class Broadcaster:
    """Delivers broadcasts to the mailboxes of the local clients.

    Args:
        registry: the live connections.
        backplane: carries broadcasts between processes.
    """

    def __init__(self, registry: Registry, backplane: "Backplane"):
        self.registry = registry
        self.backplane = backplane
        self._loop = None
        self._thread_id = None
        backplane.start(self.deliver)

    def attach(self, hub, replace: bool = False) -> None:
        """Adopt ``hub`` (a ``gevent.hub.Hub``) as the one that owns the
        connections, unless one is adopted already and not ``replace``.
        Called from that hub's thread when serving starts."""
        if self._loop is None or replace:
            self._loop = hub.loop
            self._thread_id = _native_thread_id()

    def detach(self, hub) -> None:
        """Forget ``hub`` if it is the adopted one (its server stopped)."""
        if self._loop is hub.loop:
            self._loop = self._thread_id = None

    def call(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the hub thread: now if this is that thread (or
        no hub is attached yet), else as soon as the hub gets to it."""
        if self._loop is None or self._thread_id == _native_thread_id():
            fn(*args)
        else:
            self._loop.run_callback_threadsafe(fn, *args)

    def publish(self, broadcast: Broadcast) -> None:
        """Send ``broadcast`` through the backplane, from any thread."""
        self.call(self.backplane.publish, broadcast)

    def deliver(self, broadcast: Broadcast) -> None:
        """Queue ``broadcast`` to each matching local client (hub thread only).

        The message is rendered once per wire format and the same
        :class:`Outbound` goes to every target. A message a wire format cannot
        render, or a filter that raises, is logged and skips only the clients
        concerned.
        """
        if broadcast.exact:
            targets = self.registry.at(broadcast.path)
        else:
            targets = self.registry.under(broadcast.path)
        rendered: dict = {}
        allows = broadcast.to.allows
        sender = broadcast.sender
        for connection in targets:
            try:
                if not allows(connection.client, sender):
                    continue
            except Exception:
                log.exception("client filter %r failed for client %s; skipped",
                              broadcast.to, connection.uuid)
                continue
            wire_format = connection.wire_format
            outbound = rendered.get(wire_format)
            if outbound is None:
                try:
                    outbound = Outbound(wire_format.render(broadcast.message))
                except Exception as exc:
                    log.error("cannot render a broadcast to %s with %r: %s",
                              broadcast.path, wire_format, exc)
                    outbound = exc
                rendered[wire_format] = outbound
            if not isinstance(outbound, Exception):
                connection.enqueue(outbound)
