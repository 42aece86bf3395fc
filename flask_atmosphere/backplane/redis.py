"""The Redis backplane: every broadcast reaches the clients of every process,
in one agreed order per shard, through Redis outages, and nothing is lost
silently.

How a broadcast travels (``shards.py`` has the layout, ``envelope.py`` the
format):

1. ``publish`` (any thread) turns it into an envelope and puts it in the
   *outbox*, bounded; nothing waits for Redis there.
2. The publisher thread sends what the outbox holds, pipelined, each
   through the publish script: the shard's next offset, the capped stream,
   the channel.
3. The subscriber thread of every process (the publisher's too) reads the
   shard channels. A publication whose offset follows the last one is
   handed to the hub; a gap (a lost pub/sub message, a reconnect) is filled
   from the stream first, in order; what the stream no longer holds, or a
   new epoch (Redis lost its data), is announced: logged, counted, and told
   to every local client of the shard as ``MessagesLost``.

While Redis cannot be reached, publications are delivered to this
process's clients at once and stay in the outbox; once Redis is back they
cross to the other processes (each envelope has an id: no process delivers
it twice). Reconnects back off with jitter; a probe through the normal
publish path, every ``probe_interval``, restarts a subscription that went
silent (a failover, a link that stopped forwarding).

Redis is only ever used from two native threads of this backplane, so the
gevent loop never waits on it, whether or not the app is monkey-patched.
Checked against redis-py 8.2 (``Redis``, ``PubSub.get_message``,
``Script``, pipelines) and Redis 7.0.
"""
from __future__ import annotations

import logging
import os
import random
import secrets
from collections import OrderedDict, deque
from dataclasses import replace
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

import redis
from gevent.monkey import get_original
from redis.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..config import redis_url
from .envelope import EnvelopeError, decode, encode, entry_offset, parse_publication
from .memory import Backplane
from .shards import PUBLISH_SCRIPT, ShardKeys, keys, shards_of_prefix

if TYPE_CHECKING:  # pragma: no cover
    from ..broadcast import Broadcast

__all__ = ["RedisBackplane"]

log = logging.getLogger("flask_atmosphere.backplane")

# Native threads and their primitives, whatever gevent patched: Redis runs
# off the hub, always.
_Thread, _Condition, _Lock, _Event = (get_original("threading", name)
                                      for name in ("Thread", "Condition", "Lock", "Event"))

#: Envelope ids remembered per process to deliver each once.
SEEN = 100_000
#: Publications sent in one pipeline at most.
BATCH = 256
#: Backoff of reconnects, in seconds: from the first to the cap, doubling, with jitter.
BACKOFF = (0.05, 2.0)


class _ShardState:
    """What a subscriber knows of a shard: its epoch and the last
    publication it handed on (its offset, and its stream entry id if known)."""
    __slots__ = ("epoch", "offset", "entry_id")

    def __init__(self, epoch: str, offset: int, entry_id: str | None):
        self.epoch = epoch
        self.offset = offset
        self.entry_id = entry_id


class RedisBackplane(Backplane):
    """Broadcasts between processes through Redis.

    Args:
        url: ``redis://`` or ``rediss://`` URL (``ATMOSPHERE_BACKPLANE``).
        prefix: the app's key prefix (``ATMOSPHERE_REDIS_PREFIX``): apps with
            other prefixes share a Redis without seeing each other.
        shards: how many shards the paths are spread over
            (``ATMOSPHERE_REDIS_SHARDS``); order is kept per shard.
        stream_max_length: publications kept per shard for gap recovery
            (``ATMOSPHERE_REDIS_STREAM_MAX_LENGTH``).
        stream_max_age: seconds a publication is kept at most
            (``ATMOSPHERE_REDIS_STREAM_MAX_AGE``).
        outbox: publications waiting for Redis at most
            (``ATMOSPHERE_REDIS_OUTBOX``); past it the oldest is dropped
            (it still reaches this process's clients), logged and counted.
        probe_interval: seconds between probes of the subscription
            (``ATMOSPHERE_REDIS_PROBE_INTERVAL``); a subscription that got no
            probe for twice as long (plus a second) is restarted.
        timeout: seconds a Redis command or connect may take
            (``ATMOSPHERE_REDIS_TIMEOUT``).
        cluster: ``url`` names a node of a Redis Cluster (7 or later)
            (``ATMOSPHERE_REDIS_CLUSTER``): sharded pub/sub, each shard in one slot.

    Raises:
        ValueError: ``url`` is not a Redis URL (see ``config.redis_url``).
    """

    thread_safe = True

    def __init__(self, url: str, prefix: str = "atmosphere", shards: int = 1,
                 stream_max_length: int = 10_000, stream_max_age: float = 300.0,
                 outbox: int = 10_000, probe_interval: float = 5.0, timeout: float = 2.0,
                 cluster: bool = False):
        self.url = redis_url(url)
        self.prefix = prefix
        self.shards = shards
        self.stream_max_length = stream_max_length
        self.stream_max_age = stream_max_age
        self.outbox_size = outbox
        self.probe_interval = probe_interval
        self.timeout = timeout
        self.cluster = cluster
        self.keys: list[ShardKeys] = [keys(prefix, shard) for shard in range(shards)]
        self._channels = {k.channel.encode(): shard for shard, k in enumerate(self.keys)}
        #: This process's name in envelope ids.
        self.origin = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._counter = 0
        self._outbox: deque[tuple[int, str, bytes, Broadcast | None]] = deque()
        self._local: set[tuple[int, str]] = set()  # delivered here while Redis was away
        self._lock = _Lock()
        self._wake = _Condition(self._lock)
        self._seen: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._states: dict[int, _ShardState] = {}
        #: Per shard, where this process began to hand publications on
        #: (``(epoch, offset)``): the later ones reach its hub, not these.
        self._starts: dict[int, tuple[str, int]] = {}
        self._stopped = _Event()
        self._deliver: Callable[[Broadcast], None] | None = None
        self._lost: Callable[[int, int, int | None], None] | None = None
        self._count: Callable[[str, int], None] = lambda name, n: None
        self._threads: list[Any] = []
        #: Whether publications cross processes now: the publisher reaches
        #: Redis, and the subscriber is subscribed.
        self.up = False
        self._publishing = False
        self._subscribed = False
        self._down_since: float | None = monotonic()
        self._logged_down = False
        self._probe_seen = [monotonic()] * shards  # per shard: its channel may be on its own node
        self._probe_sent = 0.0

    # -- the interface ----------------------------------------------------------

    def start(self, deliver: Callable[["Broadcast"], None],
              lost: Callable[[int, int, int | None], None] | None = None,
              count: Callable[[str, int], None] | None = None) -> None:
        """Start the publisher and subscriber threads.

        Args:
            deliver: hands a broadcast to this process's clients; called
                from the backplane's threads (it must hand over to the hub).
            lost: ``lost(shard, shards, count)``: publications of ``shard``
                are gone for good (``count`` of them; ``None``: unknown, the
                history itself is gone); called from the backplane's threads.
            count: ``count(name, n)`` adds to the app's counters.
        """
        self._deliver = deliver
        self._lost = lost
        if count is not None:
            self._count = count
        for name, target in (("publisher", self._publish_loop),
                             ("subscriber", self._subscribe_loop)):
            thread = _Thread(target=target, name=f"atmosphere-redis-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def publish(self, broadcast: "Broadcast") -> None:
        """Queue ``broadcast`` for every process (from any thread, at once).

        Raises:
            filters.FilterError: its client filter is code: register it with
                ``client_filter`` to use it across processes.
            TypeError: its message is neither a string nor JSON.
        """
        if not self._threads:  # not started: gunicorn's master with --preload
            log.warning("a broadcast to %s before the backplane started (in gunicorn's "
                        "master with --preload, which serves nothing) reaches no client",
                        broadcast.path)
            return
        with self._lock:
            self._counter += 1
            envelope_id = f"{self.origin}-{self._counter}"
        data = encode(envelope_id, broadcast)
        deliver_here = not self.up
        with self._lock:
            for shard in shards_of_prefix(broadcast.path, broadcast.exact, self.shards):
                self._queue(shard, envelope_id, data, broadcast if not deliver_here else None)
                if deliver_here:
                    self._local.add((shard, envelope_id))
            self._wake.notify()
        if deliver_here:  # Redis is away: this process's clients get it now
            self._hand(broadcast)

    def _queue(self, shard: int, envelope_id: str, data: bytes,
               broadcast: "Broadcast | None") -> None:
        """Append to the outbox (lock held); past its bound the oldest is
        dropped: it still reaches this process's clients."""
        outbox = self._outbox
        if len(outbox) >= self.outbox_size:
            dropped_shard, dropped_id, _, undelivered = outbox.popleft()
            self._count("backplane_dropped", 1)
            log.warning("the backplane's outbox is full (%d): a publication to shard %d "
                        "reaches this process only", self.outbox_size, dropped_shard)
            if undelivered is not None:
                self._hand(undelivered)
            self._local.discard((dropped_shard, dropped_id))
        outbox.append((shard, envelope_id, data, broadcast))

    def _hand(self, broadcast: "Broadcast") -> None:
        if self._deliver is not None:
            self._deliver(broadcast)

    def start_of(self, shard: int) -> tuple[str, int] | None:
        """``(epoch, offset)``: the publications of ``shard`` after this
        offset are handed on to this process's hub, those up to it never
        are (they came before it subscribed, or before Redis lost its
        data); ``None`` before it learnt where the shard stands."""
        return self._starts.get(shard)

    def forked(self) -> "RedisBackplane":
        """A backplane with this one's settings, for the child of a fork
        (gunicorn's ``--preload``): this one's threads did not survive the
        fork, its locks may be held by them, and the child needs a name
        (:attr:`origin`) of its own. Not started."""
        return RedisBackplane(self.url, self.prefix, self.shards, self.stream_max_length,
                              self.stream_max_age, self.outbox_size, self.probe_interval,
                              self.timeout, self.cluster)

    def stop(self) -> None:
        """Stop the threads (they end within ``timeout`` seconds)."""
        self._stopped.set()
        with self._lock:
            self._wake.notify_all()

    def state(self) -> dict[str, Any]:
        """What ``Atmosphere.stats()`` shows of the backplane."""
        return {"kind": "redis", "up": self.up, "subscribed": self._subscribed,
                "outbox": len(self._outbox),
                "shards": {shard: {"epoch": s.epoch, "offset": s.offset}
                           for shard, s in list(self._states.items())}}

    # -- Redis ------------------------------------------------------------------

    def _client(self) -> Any:
        if self.cluster:
            return RedisCluster.from_url(self.url, socket_timeout=self.timeout,
                                         socket_connect_timeout=self.timeout,
                                         retry=Retry(NoBackoff(), 0))
        return redis.Redis.from_url(self.url, socket_timeout=self.timeout,
                                    socket_connect_timeout=self.timeout,
                                    retry=Retry(NoBackoff(), 0), health_check_interval=0)

    def _backoff(self, attempt: int) -> None:
        first, cap = BACKOFF
        delay = min(cap, first * 2 ** attempt) * (0.5 + random.random() / 2)
        self._stopped.wait(delay)

    def _health(self, why: BaseException | None = None, publishing: bool | None = None,
                subscribed: bool | None = None) -> None:
        """The publisher or the subscriber reached Redis, or failed to
        (``why``). Publications cross processes (:attr:`up`) only while both
        do: else they reach this process's clients at once, and what waits
        in the outbox does too. Logged once when it goes down, once when it
        is back, with how long it was down."""
        with self._lock:
            was = self.up
            if publishing is not None:
                self._publishing = publishing
            if subscribed is not None:
                self._subscribed = subscribed
            self.up = now = self._publishing and self._subscribed
            if was and not now or not now and why is not None and not self._logged_down:
                if was:
                    self._down_since = monotonic()
                self._logged_down = True
                log.warning("the Redis backplane is down (%s): broadcasts reach this "
                            "process's clients only, until it is back", why)
            if not now:
                self._deliver_outbox_here()
                return
            if was:
                return
            since, self._down_since = self._down_since, None
            logged, self._logged_down = self._logged_down, False
        if logged and since is not None:
            log.warning("the Redis backplane is back after %.1f s", monotonic() - since)
        else:
            log.info("the Redis backplane is up (%s)", _safe_url(self.url))

    def _deliver_outbox_here(self) -> None:
        """What waits in the outbox reaches this process's clients now (lock
        held); it crosses to the others once Redis is back."""
        delivered = set()
        outbox: deque[tuple[int, str, bytes, Broadcast | None]] = deque()
        for shard, envelope_id, data, broadcast in self._outbox:
            if broadcast is not None:
                self._local.add((shard, envelope_id))
                if envelope_id not in delivered:
                    delivered.add(envelope_id)
                    self._hand(broadcast)
            outbox.append((shard, envelope_id, data, None))
        self._outbox = outbox

    def _by_node(self, client: Any, batch: list[tuple[int, str, bytes, Any]]
                 ) -> list[tuple[Any, list[tuple[int, bytes]]]]:
        """``batch``'s ``(shard, data)`` in order, grouped by the client of
        the node that holds each shard's keys: one node (``client`` itself)
        outside a cluster. In a cluster, each node's group goes through a
        plain pipeline of that node (a shard's keys share one slot), which
        every redis-py since 5 runs, where a cluster pipeline of EVALSHA is
        refused before redis-py 8.2."""
        if not self.cluster:
            return [(client, [(shard, data) for shard, _, data, _ in batch])]
        groups: dict[str, tuple[Any, list[tuple[int, bytes]]]] = {}
        for shard, _, data, _ in batch:
            node = client.get_node_from_key(self.keys[shard].stream)
            if node.name not in groups:
                groups[node.name] = (client.get_redis_connection(node), [])
            groups[node.name][1].append((shard, data))
        return list(groups.values())

    def _publish_loop(self) -> None:
        client: Any = None
        sha, attempt = "", 0
        command = "SPUBLISH" if self.cluster else "PUBLISH"
        while not self._stopped.is_set():
            with self._lock:
                if not self._outbox and monotonic() - self._probe_sent < self.probe_interval:
                    self._wake.wait(min(self.probe_interval, 0.5))
                if monotonic() - self._probe_sent >= self.probe_interval:
                    self._probe_sent = monotonic()
                    self._counter += 1
                    probe_id = f"{self.origin}-{self._counter}"
                    for shard in range(self.shards):  # every shard's channel, on its node
                        self._outbox.append((shard, probe_id, encode(probe_id, None), None))
                batch = list(self._outbox)[:BATCH]
            if not batch or self._stopped.is_set():
                continue
            try:
                if client is None:
                    client = self._client()
                    sha = client.script_load(PUBLISH_SCRIPT)  # on every node of a cluster
                for node, publications in self._by_node(client, batch):
                    pipe = node.pipeline(transaction=False)
                    for shard, data in publications:
                        k = self.keys[shard]
                        pipe.evalsha(sha, 2, k.stream, k.meta, data, k.channel,
                                     self.stream_max_length, int(self.stream_max_age * 1000),
                                     secrets.token_hex(8), command)
                    pipe.execute()
            except Exception as exc:  # noqa: BLE001 -- whatever Redis does, the thread lives on
                client = None
                self._health(exc, publishing=False)
                self._backoff(attempt)
                attempt += 1
                continue
            attempt = 0
            with self._lock:
                for _ in batch:
                    self._outbox.popleft()
            self._health(publishing=True)

    def _subscribe_loop(self) -> None:
        attempt = 0
        while not self._stopped.is_set():
            pubsub = None
            try:
                client = self._client()
                pubsub = client.pubsub()
                if self.cluster:
                    pubsub.ssubscribe(*self._channels)
                else:
                    pubsub.subscribe(*self._channels)
                early = self._await_subscribed(pubsub)
                self._recover(client)
                for message in early:
                    self._message(client, message)
                attempt = 0
                self._probe_seen = [monotonic()] * self.shards
                self._health(subscribed=True)
                self._listen(client, pubsub)
            except Exception as exc:  # noqa: BLE001 -- whatever Redis does, the thread lives on
                if self._subscribed:
                    log.info("the backplane's subscription ended (%s): resubscribing", exc)
                self._health(exc, subscribed=False)
                self._backoff(attempt)
                attempt += 1
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001, S110 -- closing what is broken anyway
                        pass

    def _await_subscribed(self, pubsub: Any) -> list[dict[str, Any]]:
        """Until Redis confirmed every channel, so that nothing published
        after the recovery that follows can be missed; returns the
        publications that arrived meanwhile (handled after the recovery)."""
        pending, early = set(self._channels), []
        deadline = monotonic() + self.timeout
        while pending:
            if monotonic() > deadline:
                raise _ProbeTimeout("no subscription confirmed")
            message = self._next(pubsub, 0.1)
            if message is None:
                continue
            if message.get("type") in ("subscribe", "ssubscribe"):
                pending.discard(message["channel"])
            elif message.get("type") in ("message", "smessage"):
                early.append(message)
        return early

    def _listen(self, client: redis.Redis, pubsub: Any) -> None:
        limit = 2 * self.probe_interval + 1
        while not self._stopped.is_set():
            message = self._next(pubsub, 0.25)
            if message is not None:
                self._message(client, message)
            if monotonic() - min(self._probe_seen) > limit:
                raise _ProbeTimeout(f"no probe came back for {limit:.0f} s")

    def _next(self, pubsub: Any, timeout: float) -> dict[str, Any] | None:
        """The next message of the subscription, or ``None`` after ``timeout`` seconds."""
        if self.cluster:
            message: dict[str, Any] | None = pubsub.get_sharded_message(timeout=timeout)
        else:
            message = pubsub.get_message(timeout=timeout)
        return message

    def _message(self, client: redis.Redis, message: dict[str, Any]) -> None:
        if message.get("type") in ("message", "smessage"):
            shard = self._channels.get(message["channel"])
            if shard is not None:
                self._received(client, shard, message["data"])

    # -- order and recovery ------------------------------------------------------

    def _recover(self, client: redis.Redis) -> None:
        """After (re)subscribing: catch up with what each shard published
        meanwhile, from its stream, or learn where it stands (a first start)."""
        for shard, k in enumerate(self.keys):
            meta: Any = client.hmget(k.meta, "e", "o")
            epoch, offset = meta
            if epoch is None:
                continue  # nothing published yet: the first publication sets it
            epoch_text, top = epoch.decode(), int(offset or 0)
            state = self._states.get(shard)
            if state is None:  # a first start: from now on
                self._states[shard] = _ShardState(epoch_text, top, None)
                self._starts[shard] = (epoch_text, top)
                continue
            if state.epoch != epoch_text:
                self._history_lost(shard, epoch_text)
                state = self._states[shard]
            if top > state.offset:
                self._fill(client, shard, state, top)

    def _received(self, client: redis.Redis, shard: int, payload: bytes) -> None:
        try:
            publication = parse_publication(payload)
        except EnvelopeError as exc:
            self._malformed(shard, exc)
            return
        state = self._states.get(shard)
        if state is None:
            state = self._states[shard] = _ShardState(publication.epoch, publication.offset - 1,
                                                      None)
            self._starts[shard] = (publication.epoch, publication.offset - 1)
        elif state.epoch != publication.epoch:
            self._history_lost(shard, publication.epoch)
            state = self._states[shard]
        if publication.offset <= state.offset:
            return  # seen already (a catch-up read it from the stream)
        if publication.offset > state.offset + 1:
            self._fill(client, shard, state, publication.offset - 1)
        self._handle(shard, state, publication.entry_id, publication.offset,
                     publication.envelope)

    def _fill(self, client: redis.Redis, shard: int, state: _ShardState, upto: int) -> None:
        """Hand on, in order, the publications of ``shard`` after the last
        one seen up to offset ``upto``, from the stream; announce those the
        stream no longer holds."""
        # From right after the last entry seen; where its id is not known
        # (after a first start or a loss), from the stream's start.
        start = "-" if state.entry_id is None else "(" + state.entry_id
        count = None if state.entry_id is None else upto - state.offset
        entries: Any = client.xrange(self.keys[shard].stream, start, "+", count=count)
        for entry_id, fields in entries:
            offset = entry_offset(entry_id.decode())
            if offset <= state.offset:
                continue
            if offset > upto:
                break
            if offset > state.offset + 1:
                self._announce(shard, offset - state.offset - 1)
            self._handle(shard, state, entry_id.decode(), offset, fields.get(b"d", b""))
        if upto > state.offset:
            self._announce(shard, upto - state.offset)
            state.offset, state.entry_id = upto, None

    def _handle(self, shard: int, state: _ShardState, entry_id: str, offset: int,
                data: bytes) -> None:
        state.offset, state.entry_id = offset, entry_id
        try:
            envelope = decode(data)
        except EnvelopeError as exc:
            self._malformed(shard, exc)
            return
        key = (shard, envelope.id)
        with self._lock:
            if key in self._seen:
                return
            self._seen[key] = None
            if len(self._seen) > SEEN:
                self._seen.popitem(last=False)
            here = key in self._local
            self._local.discard(key)
        if envelope.broadcast is None:
            if envelope.id.startswith(self.origin + "-"):
                self._probe_seen[shard] = monotonic()
            return
        if here:
            return  # delivered here already, while Redis was away
        broadcast = replace(envelope.broadcast, position=(shard, state.epoch, entry_id))
        if self.shards > 1 and not broadcast.exact and broadcast.path.strip("/") == "":
            broadcast = broadcast.for_shard(shard, self.shards)
        self._hand(broadcast)

    def _history_lost(self, shard: int, epoch: str) -> None:
        """The shard's epoch changed: Redis lost its history."""
        log.warning("the backplane's shard %d has a new epoch: Redis lost its data (a "
                    "restart without persistence, a flush, a failover), so publications "
                    "this process had not received yet may be lost; its clients on that "
                    "shard get MessagesLost", shard)
        self._count("backplane_epochs", 1)
        self._states[shard] = _ShardState(epoch, 0, None)
        self._starts[shard] = (epoch, 0)
        if self._lost is not None:
            self._lost(shard, self.shards, None)

    def _announce(self, shard: int, count: int) -> None:
        log.warning("the backplane lost %d publications of shard %d (its stream no longer "
                    "holds them)", count, shard)
        self._count("backplane_lost", count)
        if self._lost is not None:
            self._lost(shard, self.shards, count)

    def _malformed(self, shard: int, error: Exception) -> None:
        self._count("backplane_malformed", 1)
        log.warning("skipped a publication of the backplane's shard %d: %s", shard, error)


class _ProbeTimeout(Exception):
    """The subscription went silent."""


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
