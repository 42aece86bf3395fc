"""Fan-out: from one broadcast to the sockets and mailboxes of its targets.

Everything that touches the registry, a mailbox or a socket on behalf of a
broadcast runs on the gevent hub thread that serves the connections. A call
from any other OS thread (a worker thread, a scheduler) is handed over to
that hub with ``loop.run_callback_threadsafe``.
"""
from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable

import gevent
from gevent.monkey import get_original

from .broadcast import Broadcast
from .filters import Everyone, SkipSelf
from .mailbox import CloseRequest, MailboxFull, Outbound
from .backplane.shards import shard_of
from .registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .backplane import Backplane
    from .connection import Connection
    from .wire import WireFormat

__all__ = ["Broadcast", "Broadcaster", "fan_out"]

log = logging.getLogger("flask_atmosphere")
_native_thread_id = get_original("_thread", "get_ident")


#: The most consecutive broadcasts that go out in one write, and about the
#: most characters of text messages: enough to spare most of the syscalls of
#: a burst, few enough to keep the write small.
MAX_COALESCED = 32
MAX_COALESCED_BYTES = 64 * 1024


class Broadcaster:
    """Delivers broadcasts to the local clients.

    A broadcast is not fanned out on the spot: it joins the pending work of
    the hub, which runs as soon as the hub gets to it (the broadcasting
    greenlet yields). Consecutive broadcasts to the same broadcaster that
    pile up meanwhile (a busy sender, a burst of server pushes) go out
    together: each message is rendered once per wire format, and each
    client gets *one* write carrying all of them, the same bytes for every
    client that gets the same messages. Calls queued with :meth:`call` (a
    ``send``, a ``close``) keep their place in that order.

    Args:
        registry: the live connections.
        backplane: carries broadcasts between processes.
    """

    def __init__(self, registry: Registry, backplane: "Backplane",
                 count: Callable[[str, int], None] | None = None):
        self.registry = registry
        self.backplane = backplane
        self._count = count
        self._loop: Any = None  # the adopted hub's libev loop
        self._thread_id: int | None = None
        self._pending: list[Broadcast | tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._flushing = False
        self._scheduled = False
        #: Clients whose mailbox is past half its bound, with the time by
        #: which it must be below it again (see :meth:`relieve`).
        self._pressed: dict["Connection", float] = {}
        #: Per shard of the backplane, where the last broadcast fanned out
        #: here stands in the shard's stream: ``(epoch, entry id)``.
        self.positions: dict[int, tuple[str, str]] = {}
        self._started = False
        self.start_backplane()

    def use(self, backplane: "Backplane", forked: bool = False, start: bool = True) -> None:
        """Carry broadcasts through ``backplane`` from now on (the one the
        app's configuration names, at ``init_app``), instead of the current
        one, which is stopped; unless ``forked``: it is the parent's of a
        forked process, whose threads are not in this one. Not ``start``:
        ``backplane`` waits for :meth:`start_backplane`."""
        if not forked:
            self.backplane.stop()
        self.backplane = backplane
        self._started = False
        if start:
            self.start_backplane()

    def start_backplane(self) -> None:
        """Start the backplane kept by ``use(…, start=False)``, unless it runs already."""
        if not self._started:
            self._started = True
            self.backplane.start(self.deliver_threadsafe, self.lost_threadsafe, self._count)

    def attach(self, hub: Any, replace: bool = False) -> None:
        """Adopt ``hub`` (a ``gevent.hub.Hub``) as the one that owns the
        connections, unless one is adopted already and not ``replace``.
        Called from that hub's thread when serving starts."""
        if self._loop is None or replace:
            self._loop = hub.loop
            self._thread_id = _native_thread_id()

    def detach(self, hub: Any) -> None:
        """Forget ``hub`` if it is the adopted one (its server stopped)."""
        if self._loop is hub.loop:
            self.flush()
            self._loop = self._thread_id = None

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the hub thread, after any broadcast still
        pending: now if this is that thread (or no hub is attached yet) and
        nothing is pending, else as soon as the hub gets to it."""
        if self._loop is None:
            fn(*args)
        elif self._thread_id != _native_thread_id():
            self._loop.run_callback_threadsafe(self.call, fn, *args)
        elif self._pending or self._flushing:
            self._pending.append((fn, args))
            self._schedule()
        else:
            fn(*args)

    def hand(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the adopted hub's thread, as :meth:`call`
        does, from any thread; return ``False``, with nothing run, if no hub
        is adopted (nothing is served yet, or any more): unlike
        :meth:`call`, never on the calling thread, where a greenlet that
        ``fn`` spawns would never run."""
        loop = self._loop
        if loop is None:
            return False
        if self._thread_id != _native_thread_id():
            loop.run_callback_threadsafe(self.call, fn, *args)
        else:
            self.call(fn, *args)
        return True

    def defer(self, fn: Callable[[], Any]) -> bool:
        """Run ``fn()`` on the adopted hub once the greenlets ready now
        ran, and return ``True``, if the caller is on the hub's thread;
        else return ``False``, with nothing run."""
        if self._loop is None or self._thread_id != _native_thread_id():
            return False
        self._loop.run_callback(fn)
        return True

    def on_hub_thread(self) -> bool:
        """Whether the caller runs on the thread of the hub that owns the
        connections (or no hub is adopted yet)."""
        return self._loop is None or self._thread_id == _native_thread_id()

    def publish(self, broadcast: Broadcast) -> None:
        """Send ``broadcast`` through the backplane, from any thread; a
        greenlet of the hub's thread may be held back by :meth:`relieve`."""
        if self._count is not None:
            self._count("broadcasts", 1)
        if self._loop is not None and self._thread_id != _native_thread_id() \
                and not self.backplane.thread_safe:
            self._loop.run_callback_threadsafe(self.backplane.publish, broadcast)
            return
        self.backplane.publish(broadcast)
        if not self.on_hub_thread():
            return
        if self._pressed or len(self._pending) >= MAX_COALESCED:
            self.relieve()

    @property
    def pressing(self) -> bool:
        """Some client's mailbox is past half its bound."""
        return bool(self._pressed)

    def pressed(self, connection: "Connection") -> None:
        """``connection``'s mailbox is past half its bound (hub thread): the
        next publisher that can wait does, until it drains."""
        if connection not in self._pressed:
            self._pressed[connection] = monotonic() + connection.settings.write_timeout

    def relieve(self) -> None:
        """Cooperative back-pressure, for a greenlet of the hub's thread that
        publishes (``broadcast``, ``send``): fan out what is pending now,
        then wait while a client's mailbox is past half its bound, until its
        writer drained it, so that a publisher that never yields cannot fill
        the mailboxes of clients that are reading. A client that stays past
        half its bound for ``ATMOSPHERE_WRITE_TIMEOUT`` is a slow consumer:
        it is cut (close 1008), and the publisher goes on. The hub itself,
        and other threads, never wait here."""
        if not self.on_hub_thread() or gevent.getcurrent() is gevent.get_hub():
            return
        if self._pending and not self._flushing:
            self.flush()
        pressed = self._pressed
        while pressed:
            connection, deadline = next(iter(pressed.items()))
            mailbox = connection.mailbox
            left = deadline - monotonic()
            if left > 0 and not mailbox.wait_drained(left):
                continue  # the time is up: cut below
            if not mailbox.pressed or mailbox.closed:
                pressed.pop(connection, None)
                continue
            pressed.pop(connection, None)
            log.warning("disconnecting client %s on %s: its mailbox stayed past half its "
                        "bound for %ss", connection.uuid, connection.path,
                        connection.settings.write_timeout)
            connection.atmosphere.counters.add("slow_consumers")
            connection.close_now(CloseRequest(1008, "slow consumer", drain=False, error=MailboxFull(
                f"{len(mailbox)} messages, {mailbox.queued_bytes} bytes queued for "
                f"{connection.settings.write_timeout}s")))

    def deliver_threadsafe(self, broadcast: Broadcast) -> None:
        """:meth:`deliver`, from any thread (a backplane's)."""
        if self._loop is not None and self._thread_id != _native_thread_id():
            self._loop.run_callback_threadsafe(self.deliver, broadcast)
        else:
            self.deliver(broadcast)

    def lost_threadsafe(self, shard: int, shards: int, count: int | None) -> None:
        """A backplane lost ``count`` publications (``None``: an unknown
        number) of ``shard`` among ``shards``: every local client of that
        shard is told (``MessagesLost``), from any thread."""
        self.call(self._lost_in_shard, shard, shards, count)

    def _lost_in_shard(self, shard: int, shards: int, count: int | None) -> None:
        for connection in self.registry:
            if shard_of(connection.path, shards) == shard:
                connection.messages_lost(count, "backplane", logged=False)

    def deliver(self, broadcast: Broadcast) -> None:
        """Fan ``broadcast`` out to the matching local clients, on the hub
        thread: as soon as the hub gets to it (see the class), or at once
        when no hub is attached."""
        self._pending.append(broadcast)
        if self._loop is None:
            self.flush()
        else:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self.flush)

    def flush(self) -> None:
        """Fan out every pending broadcast and run every pending call, in
        order, now (hub thread only)."""
        self._scheduled = False
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._pending:
                pending, self._pending = self._pending, []
                self._run(pending)
        finally:
            self._flushing = False

    def _run(self, pending: list[Broadcast | tuple[Callable[..., Any], tuple[Any, ...]]]
             ) -> None:
        i, n = 0, len(pending)
        while i < n:
            item = pending[i]
            if isinstance(item, tuple):
                fn, args = item
                i += 1
                try:
                    fn(*args)
                except BaseException:  # noqa: B036 -- nothing may stop the fan-out
                    log.exception("%r failed", fn)
                continue
            batch = [item]
            end, size = min(n, i + MAX_COALESCED), _size(item.message)
            while i + len(batch) < end and size < MAX_COALESCED_BYTES:
                following = pending[i + len(batch)]
                if not isinstance(following, Broadcast) or following.path != item.path \
                        or following.exact != item.exact or following.shard != item.shard:
                    break
                batch.append(following)
                size += _size(following.message)
            j = i + len(batch)
            for sent in batch:
                if sent.position is not None:
                    shard, epoch, entry_id = sent.position
                    self.positions[shard] = (epoch, entry_id)
            try:
                delivered = fan_out(self.registry, batch)
                if self._count is not None:
                    self._count("deliveries", delivered)
            except BaseException:  # noqa: B036 -- nothing may stop the fan-out
                log.exception("broadcast to %s failed", item.path)
            i = j


def fan_out(registry: Registry, batch: list[Broadcast]) -> int:
    """Deliver ``batch``, broadcasts to one broadcaster (same ``path`` and
    ``exact``), in order, to each client that its filters allow, and return
    how many deliveries that was (a message to one client is one).

    A client a transport can write to at once (``Connection.direct``) gets
    one write with every message meant for it, framed by its transport; the
    framed bytes are made once and shared by every such client that gets the
    same messages. The others get each message queued in their mailbox. A
    message a wire format cannot render, or a filter that raises, is logged
    and skips only the clients concerned.
    """
    first = batch[0]
    targets = registry.at(first.path) if first.exact else registry.under(first.path)
    if first.shard is not None:  # one shard's copy of a broadcast that spans shards
        shard, shards = first.shard
        targets = [c for c in targets if shard_of(c.path, shards) == shard]
    if not targets:
        return 0
    delivered = 0
    everyone = tuple(range(len(batch)))
    # Everyone and SkipSelf need no call per client: only the senders of a
    # SkipSelf broadcast miss something (found by identity: no read of a
    # uuid per client).
    simple = all(b.to is Everyone or b.to is SkipSelf for b in batch)
    skips = {registry.get(b.sender) for b in batch if b.to is SkipSelf and b.sender is not None}
    rendered: dict[WireFormat, list[Outbound | None]] = {}  # an entry per broadcast
    framed: dict[tuple[Any, WireFormat, tuple[int, ...]], bytes] = {}
    last_framing: Any = None
    last_wire_format: Any = None
    last_allowed: Any = None
    data = b""
    rendered_for: Any = None
    outbounds: list[Outbound | None] = []
    for connection in targets:
        if simple and (not skips or connection not in skips):
            allowed = everyone
        else:
            allowed = _allowed(batch, connection)
            if not allowed:
                continue
        delivered += len(allowed)
        wire_format = connection.wire_format
        if wire_format is not rendered_for:  # most targets share one
            found = rendered.get(wire_format)
            if found is None:
                found = rendered[wire_format] = _render(batch, wire_format)
            outbounds, rendered_for = found, wire_format
        direct = connection.direct
        if direct is not None:
            framing = connection.framing
            if framing is not last_framing or wire_format is not last_wire_format \
                    or allowed is not last_allowed:
                key = (framing, wire_format, allowed)
                cached = framed.get(key)
                if cached is None:
                    cached = framed[key] = framing.encode(
                        [o for o in (outbounds[k] for k in allowed) if o is not None])
                data = cached
                last_framing, last_wire_format, last_allowed = framing, wire_format, allowed
            if not data:
                continue
            if direct.write_now(data):
                if connection.keeps:  # it can say later how far it got
                    sent_now = connection.mailbox.sent_now
                    for k in allowed:
                        outbound = outbounds[k]
                        if outbound is not None:
                            sent_now(outbound)
                continue
        for k in allowed:
            outbound = outbounds[k]
            if outbound is not None:
                connection.enqueue(outbound)
    return delivered


def _size(message: Any) -> int:
    """About the size of ``message`` once rendered: known for text, small otherwise."""
    return len(message) if type(message) is str else 256


def _allowed(batch: list[Broadcast], connection: "Connection") -> tuple[int, ...]:
    """The indices of the broadcasts of ``batch`` meant for ``connection``."""
    allowed = []
    for k, broadcast in enumerate(batch):
        try:
            if broadcast.to.allows(connection.client, broadcast.sender):
                allowed.append(k)
        except BaseException:  # noqa: B036 -- app code on the hub: nothing may escape
            log.exception("client filter %r failed for client %s; skipped",
                          broadcast.to, connection.uuid)
    return tuple(allowed)


def _render(batch: list[Broadcast], wire_format: WireFormat) -> list[Outbound | None]:
    """Each message of ``batch`` rendered by ``wire_format``, ``None`` where it cannot be."""
    outbounds: list[Outbound | None] = []
    for broadcast in batch:
        try:
            outbounds.append(Outbound(wire_format.render(broadcast.message)))
        except BaseException as exc:  # noqa: B036 -- app code on the hub
            log.error("cannot render a broadcast to %s with %r: %s",
                      broadcast.path, wire_format, exc)
            outbounds.append(None)
    return outbounds
