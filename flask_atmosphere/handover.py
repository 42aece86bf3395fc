"""Stops and deaths that lose no client (the Redis backplane only).

A process that stops (SIGTERM: gunicorn's ``HUP`` or a rolling deploy)
hands each of its clients over instead of ending it. At that instant, on
the hub, it writes in the client's directory entry
(``backplane/forwarding.py``) what the next process needs: the client's
mailbox (what was sent, kept for a resume, and what was not sent yet, with
their sequence numbers), and the *cursor*, where the last broadcast it
fanned out stands in the client's shard stream. Then it closes the
transport (1001) without delivering more.

The client's next request, on any process, takes it over (the app gets
``Connected(takeover=True)`` there). Before the new client is registered,
that process restores the mailbox and replays from the shard stream what
was published after the cursor, up to the last broadcast it fanned out
itself; what comes later reaches the client live. So every message is
delivered once and in order: the mailbox's, then the stream's, then the
live ones, and a client that says how far it got (``X-Atmosphere-Offset``,
``Last-Event-ID``) gets again just what it missed. A cursor whose epoch is
gone, or a stream trimmed past it, is told to the app (``MessagesLost``).

A process that dies (``kill -9``) can write nothing at that instant, so
as a client opens (just after ``Connected``) and then every refresh
interval (``ATMOSPHERE_REDIS_PROBE_INTERVAL``) it writes the same record
for each client whose mailbox or cursor changed, as the client's
*checkpoint* (:func:`checkpoint`, :func:`checkpoint_all`). A taker goes on from the
checkpoint as from a handover: what the client had not received then, and
the stream since. What was sent to the client after the checkpoint comes
again, unless the client says how far it got: the bundled client
(``X-Atmosphere-Offset``) and an EventSource (``Last-Event-ID``) do, and get
each message once.
"""
from __future__ import annotations

import logging
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING, Any

import gevent

from .backplane.envelope import EnvelopeError, decode, entry_offset
from .backplane.shards import shard_of
from .broadcaster import fan_out
from .mailbox import CloseRequest
from .registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .backplane.redis import RedisBackplane
    from .connection import Connection
    from .remote import Remote

__all__ = ["hand_over_all", "checkpoint_all", "checkpoint", "go_on"]

log = logging.getLogger("flask_atmosphere")

#: Clients checkpointed in one go on the hub, between two fan-outs.
CHECKPOINT_BATCH = 256


def hand_over_all(remote: "Remote") -> int:
    """Hand every client of this process over (on the hub, as it stops):
    write its mailbox and its cursor in its directory entry, then close its
    transport with 1001 and nothing more delivered. Returns how many."""
    atmosphere = remote.atmosphere
    broadcaster = atmosphere.broadcaster
    backplane: RedisBackplane = broadcaster.backplane  # type: ignore[assignment]
    # Where a shard stands that nothing of reached the clients here through
    # Redis (what was sent while it was not up yet was delivered here
    # directly): its stream's last entry, read before anything is handed.
    tops: dict[int, tuple[str, str] | None] = {}
    for connection in atmosphere.registry:
        shard = shard_of(connection.path, backplane.shards)
        if shard not in tops and shard not in broadcaster.positions:
            keys = backplane.keys[shard]
            try:
                tops[shard] = remote.look_up(partial(remote.forwarding.stream_top,
                                                      meta=keys.meta), keys.stream)
            except Exception:  # noqa: BLE001 -- Redis away: no cursor, nothing replayed
                tops[shard] = None
    broadcaster.flush()  # what is pending reaches the mailboxes first
    handed = 0
    for connection in list(atmosphere.registry):
        if connection.mailbox.closed:
            continue
        shard = shard_of(connection.path, backplane.shards)
        position = broadcaster.positions.get(shard) or tops.get(shard)
        record = {"mailbox": connection.mailbox.snapshot(),
                  "cursor": None if position is None else [shard, *position]}
        # No yield from the snapshot to the close: nothing reaches the
        # mailbox in between, and all after it is in the stream.
        connection.close_now(CloseRequest(1001, "server restart", drain=False))
        remote.forwarding.hand_over(connection.uuid, record)
        handed += 1
    if handed:
        log.info("handed %d clients over to the processes that take them over", handed)
    return handed


def checkpoint_all(remote: "Remote") -> None:
    """Write the checkpoint of each client of this process whose mailbox or
    cursor changed since its last one (a refresh of the directory calls it,
    on the hub). Each batch of clients is taken between two fan-outs
    (``Broadcaster.call``), so that a client's mailbox and its shard's
    position agree."""
    atmosphere = remote.atmosphere
    connections = list(atmosphere.registry)
    for start in range(0, len(connections), CHECKPOINT_BATCH):
        atmosphere.broadcaster.call(checkpoint, remote,
                                    connections[start:start + CHECKPOINT_BATCH])
        gevent.sleep(0)  # the fan-outs and requests waiting go first


def checkpoint(remote: "Remote", connections: list["Connection"]) -> None:
    """Write the checkpoint of each of ``connections`` whose mailbox or
    cursor changed since its last one. Run between two fan-outs
    (``Broadcaster.call``), so that a client's mailbox and its shard's
    position agree."""
    for connection in connections:
        if connection.mailbox.closed or connection.finished:
            continue
        record = _checkpoint_of(remote, connection)
        if record is not None:
            remote.forwarding.checkpoint(connection.uuid, record)


def _checkpoint_of(remote: "Remote", connection: "Connection") -> dict[str, Any] | None:
    """The checkpoint of ``connection`` now (its mailbox, and where the
    last broadcast fanned out here stands in its shard's stream), or
    ``None`` if it has not changed since the last one, or where the shard
    stands is not known yet."""
    broadcaster = remote.atmosphere.broadcaster
    backplane: RedisBackplane = broadcaster.backplane  # type: ignore[assignment]
    mailbox = connection.mailbox
    shard = shard_of(connection.path, backplane.shards)
    position = broadcaster.positions.get(shard)
    if position is None:  # nothing of it fanned out here: where the subscription began
        start = backplane.start_of(shard)
        if start is None:
            return None  # not known yet
        position = (start[0], f"0-{start[1]}")  # (an id before the next offset's)
    mark = (mailbox.next_seq, len(mailbox), mailbox.kept_bytes, position)
    if connection.checkpointed == mark:
        return None
    connection.checkpointed = mark
    return {"mailbox": mailbox.snapshot(), "cursor": [shard, *position]}


def go_on(remote: "Remote", connection: "Connection", handover: dict[str, Any] | None,
          stale: bool = False) -> None:
    """Take over a client another process handed over, or held when it
    died (``handover``: its handover or, ``stale``, its last checkpoint,
    from its directory entry): restore its mailbox and replay what was
    published since, in the request's greenlet, before ``connection.open()``,
    with no yield in between (the caller's part). What cannot be restored
    (``handover`` is ``None``: its process died before its first checkpoint)
    is told to the app (``MessagesLost``), never raised. A takeover from a
    process that died is logged as a warning (one whose process lived would
    be a bug); a handover, which every graceful stop makes, is not."""
    if connection.params.acks:
        connection.keep_history()
    if stale and handover is not None:
        log.warning("client %s: its process died: taken over here from its last checkpoint "
                    "(what it got since may come again, unless it says how far it got)",
                    connection.uuid)
    if handover is None:
        log.warning("client %s: its process died before it wrote a checkpoint: what it held "
                    "for the client is gone", connection.uuid)
        connection.messages_lost(None, "takeover", logged=False)
        return
    try:
        connection.mailbox.restore(handover.get("mailbox"))
    except ValueError as exc:
        log.warning("client %s: the mailbox it was handed over with was not restored (%s)",
                    connection.uuid, exc)
        connection.messages_lost(None, "takeover", logged=False)
    cursor = handover.get("cursor")
    try:
        shard, epoch, after = int(cursor[0]), str(cursor[1]), str(cursor[2])  # type: ignore[index]
        after_offset = entry_offset(after)
    except (TypeError, ValueError, IndexError, EnvelopeError):
        return  # it had delivered nothing of the shard: nothing to replay
    entries = _published_since(remote, connection, shard, epoch, after, after_offset)
    if entries is None:
        return
    one = Registry()
    one.add(connection)
    shards = remote.atmosphere.broadcaster.backplane.shards  # type: ignore[attr-defined]
    for data in entries:
        try:
            envelope = decode(data)
        except EnvelopeError as exc:
            log.warning("a malformed publication was skipped in a takeover (%s)", exc)
            continue
        broadcast = envelope.broadcast
        if broadcast is None:
            continue  # a probe
        if shards > 1 and not broadcast.exact and broadcast.path.strip("/") == "":
            broadcast = broadcast.for_shard(shard, shards)
        fan_out(one, [broadcast])


def _published_since(remote: "Remote", connection: "Connection", shard: int, epoch: str,
                     after: str, after_offset: int) -> list[bytes] | None:
    """The publications of ``shard`` after the entry ``after`` up to the
    last one this process fanned out (the later ones reach the client
    live); ``None``, with the loss told, if the stream's history is gone."""
    atmosphere = remote.atmosphere
    backplane: RedisBackplane = atmosphere.broadcaster.backplane  # type: ignore[assignment]
    stream = backplane.keys[shard].stream
    deadline = monotonic() + remote.forwarding.timeout
    found: list[tuple[int, bytes]] = []
    last = after
    while True:
        try:
            entries = remote.look_up(partial(remote.forwarding.stream_after, after=last), stream)
        except Exception as exc:  # noqa: BLE001 -- Redis away: what it holds cannot be had
            log.warning("client %s: what was published while it was handed over could not "
                        "be read (%s)", connection.uuid, exc)
            connection.messages_lost(None, "backplane", logged=False)
            return None
        found += [(entry_offset(entry_id), data) for entry_id, data in entries]
        if entries:
            last = entries[-1][0]
        # Up to where the hub here has fanned out, or, before it fanned out
        # anything of the shard, where its subscription began: what comes
        # after reaches the client live once it is registered.
        delivered = atmosphere.broadcaster.positions.get(shard)
        here = (delivered[0], entry_offset(delivered[1])) if delivered is not None \
            else backplane.start_of(shard)
        if here is None or here[1] < after_offset:
            if monotonic() < deadline:
                gevent.sleep(0.01)  # not yet caught up with the process that stopped
                continue
            here = (epoch, after_offset)  # (what is still behind may come twice)
        if here[0] != epoch:
            log.warning("client %s: the backplane lost its history since it was handed over",
                        connection.uuid)
            connection.messages_lost(None, "backplane", logged=False)
            return None
        upto = here[1]
        if entries and found[-1][0] < upto:
            continue  # published meanwhile, and fanned out here already: read on
        break
    first = min(found[0][0], upto + 1) if found else upto + 1
    if first > after_offset + 1:  # the stream no longer holds them
        connection.messages_lost(first - after_offset - 1, "backplane")
    return [data for offset, data in found if after_offset < offset <= upto]
