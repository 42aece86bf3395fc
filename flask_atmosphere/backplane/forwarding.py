"""Requests for a client that another process holds, carried through Redis,
so that the HTTP transports need no sticky sessions.

A client object lives in one process, its holder. With the Redis backplane,
every process keeps in Redis which clients it holds and that it is alive;
a request that lands on another process (a poll, an upstream message, a
goodbye) is sent to the holder, which serves it as its own, and the answer
comes back the same way.

What this module keeps in Redis, under the app's prefix, each with a TTL:

- ``{prefix}:client:{uuid}``: the holder of a client, JSON ``{"node",
  "path", "binding"}`` (``binding``: the SHA-256 of its resume key, or
  ``null``), with the client's last ``checkpoint`` (``handover.py``: its
  mailbox and where it stands in its shard stream, rewritten every refresh
  interval in which they changed) and, after a graceful stop, its
  ``handover``; it lives for the grace period and three refresh intervals,
  is refreshed every refresh interval while the client lives, and is
  deleted when the client ends;
- ``{prefix}:node:{node}``: a process's liveness, for three refresh
  intervals, refreshed every interval by its reader thread; it holds the id
  of the reader's Redis connection (``CLIENT ID``), so that a process that
  died (``kill -9``, a crash, the OOM killer) is known dead as soon as Redis
  saw that connection close (``CLIENT LIST ID``), not three intervals
  later (:meth:`Forwarding.alive`): ``id:<CLIENT ID>``, or ``1`` where
  Redis refuses ``CLIENT`` or is a Cluster;
- ``{prefix}:{node:<node>}:inbox`` and ``…:replies``: the requests sent to a
  process and the replies it gets, streams that the process trims as it
  reads them (every ``TRIM_EVERY`` entries), capped at ``STREAM_MAX_LENGTH``
  entries, that expire with the process's liveness (one slot per process:
  the braces are a Redis Cluster hash tag). An entry's field ``m`` holds
  one message (a JSON object) or, for the messages a writer had for the
  stream at once, a JSON array of them, in order: one ``XADD`` for a
  burst, and one entry for the reader to take.

Redis is used from two threads (a writer and a reader: native threads, or
greenlets where gevent patched ``threading``) and from the callers of
:meth:`Forwarding.holder` (a blocking lookup: run it off the hub, in threads
of their own), never from the gevent loop's own callbacks. Requests and
replies are handed to the hub by the ``hand`` function given to
:meth:`Forwarding.start`.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from math import inf
from time import monotonic
from typing import Any, Callable, Iterator

import simplejson
from gevent.monkey import get_original

from ..config import redis_url

__all__ = ["Forwarding", "Holder", "batches", "binding_hash", "entry_messages", "entry_order"]

log = logging.getLogger("flask_atmosphere.backplane")

_Thread, _Lock, _Event, _local = (
    get_original("threading", name) for name in ("Thread", "Lock", "Event", "local"))

#: Entries kept at most in a process's inbox and replies streams: a bound on
#: Redis's memory should the process stop reading them (it trims what it
#: read every ``TRIM_EVERY`` entries); one that lags this far behind loses
#: the oldest.
STREAM_MAX_LENGTH = 100_000
#: Entries a process reads from a stream of its own before it trims them.
TRIM_EVERY = 1_000
#: Seconds a reader blocks on its streams at most (it then checks for a stop).
READ_BLOCK = 1.0
#: Entries a reader takes from its streams in one read at most; a full read
#: says that it is behind.
READ_COUNT = 256


def binding_hash(binding: str | None) -> str | None:
    """What the directory keeps of a resume key: its SHA-256 (hex), never the key."""
    return None if binding is None else hashlib.sha256(binding.encode()).hexdigest()


def batches(commands: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """``commands`` (``("set", key, text, ms)``, ``("del", key)``,
    ``("xadd", stream, message as JSON)``) with the messages for each
    stream between two directory writes made one ``("xadd", stream, JSON
    array of them, in order)``: a message still goes after every directory
    write queued before it, and before every one queued after it."""
    texts: dict[str, list[str]] = {}
    for command in commands:
        if command[0] == "xadd":
            texts.setdefault(command[1], []).append(command[2])
            continue
        yield from _xadds(texts)
        texts = {}
        yield command
    yield from _xadds(texts)


def _xadds(texts: dict[str, list[str]]) -> Iterator[tuple[str, str, str]]:
    for stream, batch in texts.items():
        yield ("xadd", stream, batch[0] if len(batch) == 1 else f"[{','.join(batch)}]")


def entry_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (``"<ms>-<seq>"``) as something that sorts as Redis does."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def entry_messages(fields: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """The messages of a stream entry written by :meth:`Forwarding.send`
    (its field ``m``: one JSON object, or an array of them); an entry, or a
    message of it, that is none is logged and skipped."""
    try:
        value = simplejson.loads(fields[b"m"])
    except (KeyError, ValueError) as exc:
        log.warning("a malformed forwarded entry was skipped (%s)", exc)
        return []
    messages = value if isinstance(value, list) else [value]
    kept = [message for message in messages if isinstance(message, dict)]
    if len(kept) < len(messages):
        log.warning("%d malformed forwarded messages were skipped (not an object)",
                    len(messages) - len(kept))
    return kept


@dataclass(frozen=True)
class Holder:
    """Who holds a client, as the directory says.

    Attributes:
        node: the holding process's name.
        path: the client's broadcaster path.
        binding: the SHA-256 of its resume key, or ``None`` (not bound).
        alive: the holding process is alive (:meth:`Forwarding.alive`).
        handover: what the holder left for whichever takes the client over:
            when it stopped gracefully, the client's state at that instant
            (``handover.hand_over_all``); when it died, its last checkpoint
            (``handover.checkpoint_all``: :attr:`stale`); ``None`` while it
            is alive, or if it left nothing.
        stale: ``handover`` is a checkpoint, up to a refresh interval older
            than the holder's death: what was sent after it may come again
            to a client that does not say how far it got.
    """
    node: str
    path: str
    binding: str | None
    alive: bool
    handover: dict[str, Any] | None = None
    stale: bool = False


class Forwarding:
    """The directory of clients and the request/reply channel between the
    processes of one app.

    Args:
        url: the Redis URL (``ATMOSPHERE_BACKPLANE``).
        prefix: the app's key prefix (``ATMOSPHERE_REDIS_PREFIX``).
        node: this process's name (unique among the app's processes).
        refresh_interval: seconds between two refreshes of the liveness and
            directory keys (``ATMOSPHERE_REDIS_PROBE_INTERVAL``).
        timeout: seconds a Redis command may take (``ATMOSPHERE_REDIS_TIMEOUT``).
        cluster: ``url`` names a node of a Redis Cluster.
    """

    def __init__(self, url: str, prefix: str, node: str, refresh_interval: float = 5.0,
                 timeout: float = 2.0, cluster: bool = False):
        self.url = redis_url(url)
        self.prefix = prefix
        self.node = node
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self.cluster = cluster
        #: uuid -> (its directory entry, as JSON too, and its time-to-live in ms)
        self._claims: dict[str, tuple[dict[str, Any], str, int]] = {}
        self._commands: deque[tuple[Any, ...]] = deque()
        self._lock = _Lock()
        #: The writer's wake-up call: released to wake it, held while none
        #: is due (a bare lock: released outside ``_lock``, it wakes the
        #: writer without making it wait for ``_lock`` at once). The
        #: ``threading`` module's: where gevent patched it, the threads are
        #: greenlets, and so must their waits be.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._stopped = _Event()
        self._hand: Callable[..., None] | None = None
        self._defer: Callable[[Callable[[], None]], bool] = lambda fn: False
        self._wake_due = False  # the writer is to be woken by a deferred call
        self._on_request: Callable[[list[dict[str, Any]]], None] = lambda messages: None
        self._on_reply: Callable[[list[dict[str, Any]]], None] = lambda messages: None
        self._on_refresh: Callable[[], None] = lambda: None
        self._on_lost: Callable[[int], None] = lambda count: None
        self._lost: dict[str, int] = {}  # stream -> entries lost unread (reported)
        self._lookups = _local()  # each thread's client for holder() and alive()
        self._threads: list[Any] = []
        self._failing: set[str] = set()  # the threads that cannot reach Redis now
        self._handed: set[str] = set()  # claims handed over: not deleted on release
        #: Redis refused ``CLIENT LIST`` or ``CLIENT ID`` (an ACL, a managed
        #: Redis that renamed it): liveness is the key's TTL alone.
        self._no_client_list = cluster
        self._trims = True  # Redis takes XTRIM MINID (6.2 and later)

    # -- keys --------------------------------------------------------------------

    def client_key(self, uuid: str) -> str:
        return f"{self.prefix}:client:{uuid}"

    def node_key(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    def inbox(self, node: str) -> str:
        return f"{self.prefix}:{{node:{node}}}:inbox"

    def replies(self, node: str) -> str:
        return f"{self.prefix}:{{node:{node}}}:replies"

    # -- the interface -------------------------------------------------------------

    def start(self, hand: Callable[..., None],
              on_request: Callable[[list[dict[str, Any]]], None],
              on_reply: Callable[[list[dict[str, Any]]], None],
              on_refresh: Callable[[], None] = lambda: None,
              defer: Callable[[Callable[[], None]], bool] = lambda fn: False,
              on_lost: Callable[[int], None] = lambda count: None) -> None:
        """Start the writer and reader threads.

        Args:
            hand: ``hand(fn, *args)`` runs ``fn(*args)`` on the hub (from any thread).
            defer: ``defer(fn)`` runs ``fn()`` on the hub once the greenlets
                ready now ran, and returns ``True``, if the caller is on the
                hub's thread; else returns ``False``, with nothing run. The
                writer is woken that way once for every command queued
                meanwhile: waking a native thread costs the hub a context
                switch or two, and requests come in bursts.
            on_request: called on the hub with the requests sent to this
                process, a list of those read at once, in order.
            on_reply: called on the hub with the replies this process gets,
                likewise.
            on_refresh: called on the hub after each refresh of the directory
                (every ``refresh_interval`` seconds while Redis answers).
            on_lost: called on the hub with how many entries of this
                process's streams were lost unread (it fell more than
                ``STREAM_MAX_LENGTH`` entries behind), after it logged them.
        """
        self._hand, self._on_request, self._on_reply = hand, on_request, on_reply
        self._on_refresh, self._defer, self._on_lost = on_refresh, defer, on_lost
        for name, target in (("writer", self._write_loop), ("reader", self._read_loop)):
            thread = _Thread(target=target, name=f"atmosphere-forwarding-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the threads; this process's liveness key is left to expire
        (and its reader's connection to close, with the process)."""
        self._stopped.set()
        self._wake_up()

    def claim(self, uuid: str, path: str, binding: str | None, grace_period: float,
              written: Callable[[], None] | None = None) -> None:
        """This process holds ``uuid`` (from any thread; written at once,
        then refreshed until :meth:`release`); ``written()`` is called on
        the hub once it is in Redis."""
        entry = {"node": self.node, "path": path, "binding": binding_hash(binding)}
        ttl = int((grace_period + 3 * self.refresh_interval) * 1000)
        text = simplejson.dumps(entry)
        command: tuple[Any, ...] = ("set", self.client_key(uuid), text, ttl)
        with self._lock:
            self._claims[uuid] = (entry, text, ttl)
            self._queue_command(command if written is None else (*command, written))

    @property
    def failing(self) -> bool:
        """Some part (a thread, the lookups) cannot reach Redis now."""
        return bool(self._failing)

    def checkpoint(self, uuid: str, record: dict[str, Any]) -> None:
        """Keep ``record`` (what a taker needs to go on with ``uuid``, as
        JSON: ``handover.py``) in ``uuid``'s directory entry, for the case
        that this process dies: written at once (unless the client is not
        held here, or was handed over already)."""
        self._amend(uuid, "checkpoint", record)

    def hand_over(self, uuid: str, handover: dict[str, Any]) -> None:
        """This process stops (gracefully) and leaves ``uuid`` to whichever
        takes it over: its directory entry carries ``handover`` (what the
        taker needs, as JSON) and, once released (:meth:`release`), lives on
        for the rest of its time-to-live (the grace period) instead of going."""
        self._amend(uuid, "handover", handover)

    def _amend(self, uuid: str, field: str, value: dict[str, Any]) -> None:
        with self._lock:
            claim = self._claims.get(uuid)
            if claim is None or uuid in self._handed:
                return
            entry = claim[0] | {field: value}
            if field == "handover":
                entry.pop("checkpoint", None)
                self._handed.add(uuid)
            text = simplejson.dumps(entry)
            self._claims[uuid] = (entry, text, claim[2])
            self._queue_command(("set", self.client_key(uuid), text, claim[2]))

    def release(self, uuid: str) -> None:
        """This process holds ``uuid`` no more: its directory entry goes
        (unless it was handed over: then it stays for the taker)."""
        with self._lock:
            if self._claims.pop(uuid, None) is not None and uuid not in self._handed:
                self._queue_command(("del", self.client_key(uuid)))
            self._handed.discard(uuid)

    def unwritten(self) -> int:
        """How many commands wait to be written to Redis; the writer is
        woken to write them (before a stop, its caller waits for 0)."""
        self._wake_up()
        with self._lock:
            return len(self._commands)

    def send(self, node: str, message: dict[str, Any], reply: bool = False) -> None:
        """Append ``message`` to ``node``'s inbox (``reply``: to its replies), in order."""
        stream = self.replies(node) if reply else self.inbox(node)
        text = simplejson.dumps(message)
        with self._lock:
            self._queue_command(("xadd", stream, text))

    def _queue_command(self, command: tuple[Any, ...]) -> None:
        """Queue ``command`` for the writer and see that it wakes (with
        ``_lock`` held): on the hub, once the greenlets ready now ran
        (``defer``), for every command they queue; from another thread, now."""
        self._commands.append(command)
        if self._wake_due:
            return
        if self._defer(self._wake_writer):
            self._wake_due = True
        else:
            self._wake_up()

    def _wake_writer(self) -> None:
        with self._lock:
            self._wake_due = False
        self._wake_up()

    def _wake_up(self) -> None:
        """Wake the writer (from any thread; once for any number of calls
        before it woke)."""
        try:
            self._wake.release()
        except RuntimeError:
            pass  # released already: the writer is to wake anyway

    def holder(self, uuid: str) -> Holder | None:
        """Who holds ``uuid``, or ``None``: a blocking Redis lookup (up to
        three reads: the entry, then :meth:`alive`), never to be called on
        the hub.

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        lookup = self._lookup_client()
        raw = lookup.get(self.client_key(uuid))
        if raw is None:
            return None
        try:
            entry = simplejson.loads(raw)
            node, path, binding = entry["node"], entry["path"], entry["binding"]
            handover, checkpoint = entry.get("handover"), entry.get("checkpoint")
            if not isinstance(handover, (dict, type(None))) \
                    or not isinstance(checkpoint, (dict, type(None))):
                raise ValueError("a handover or checkpoint is an object")
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("a malformed directory entry for a client was skipped: %.60r", raw)
            return None
        alive = node == self.node or self.alive(node)
        if handover is None and not alive and checkpoint is not None:
            return Holder(str(node), str(path), binding, alive, checkpoint, stale=True)
        return Holder(str(node), str(path), binding, alive, handover)

    def alive(self, node: str) -> bool:
        """Whether ``node`` is alive: its liveness key is there and, outside
        a Redis Cluster, the connection of its reader thread whose id the key
        holds is still open. A process that died is known dead as soon as
        Redis saw its connections close (the kernel closes them when it
        dies), not when its key expires; a host that vanished, or a Redis
        that refuses ``CLIENT LIST``, is known dead when the key expires
        (three refresh intervals). A blocking Redis lookup (one or two
        reads), never to be called on the hub.

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        lookup = self._lookup_client()
        value = lookup.get(self.node_key(node))
        if value is None:
            return False
        connection = value[3:] if value.startswith(b"id:") else b""
        if self._no_client_list or not connection.isdigit():
            return True  # (an earlier version's key holds "1")
        from redis.exceptions import ResponseError
        try:
            return bool(lookup.client_list(client_id=[int(connection)]))
        except ResponseError as exc:  # an ACL, or a Redis that renamed it
            self._client_list_refused(exc)
            return True

    def _client_list_refused(self, why: Exception) -> None:
        if not self._no_client_list:
            self._no_client_list = True
            log.warning("Redis refused CLIENT (%s): a process that died is known dead only "
                        "once its liveness key expired, three probe intervals later", why)

    def stream_after(self, stream: str, after: str) -> list[tuple[str, bytes]]:
        """The entries of ``stream`` (a shard's) after the entry id ``after``,
        as ``(entry id, data)``, oldest first: a blocking Redis read, never
        to be called on the hub.

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        entries = self._lookup_client().xrange(stream, "(" + after, "+")
        return [(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
                 fields.get(b"d", b"")) for entry_id, fields in entries]

    def stream_top(self, stream: str, meta: str) -> tuple[str, str] | None:
        """Where a shard stands now: ``(epoch, id of its last entry)``, or
        ``None`` if it has none: a blocking Redis read, never on the hub.

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        client = self._lookup_client()
        epoch = client.hget(meta, "e")
        last = client.xrevrange(stream, "+", "-", count=1)
        if epoch is None or not last:
            return None
        entry_id = last[0][0]
        return (epoch.decode() if isinstance(epoch, bytes) else str(epoch),
                entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))

    def _lookup_client(self) -> Any:
        """The calling thread's own client for lookups: where gevent patched
        the standard library, a client's sockets belong to the thread
        (its hub) that made them."""
        client = getattr(self._lookups, "client", None)
        if client is None:
            client = self._lookups.client = self._client()
        return client

    # -- threads -------------------------------------------------------------------

    def _client(self, blocks: float = 0.0, retry: bool = True) -> Any:
        """A Redis client whose commands may take ``timeout`` seconds, plus
        ``blocks`` (the longest a blocking command of it waits by design).
        ``retry=False``: a command whose connection broke raises, instead of
        running again on a new connection (the reader's connection is the
        one its liveness key names)."""
        import redis  # redis-py, the "redis" extra: only with the Redis backplane
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.retry import Retry
        kind: Any = RedisCluster if self.cluster else redis.Redis
        options = {} if retry else {"retry": Retry(NoBackoff(), 0)}
        return kind.from_url(self.url, socket_timeout=self.timeout + blocks,
                             socket_connect_timeout=self.timeout, **options)

    def _write_loop(self) -> None:
        client: Any = None
        refreshed = 0.0
        #: stream -> when this thread last set its time-to-live (three refresh
        #: intervals: a stream of a process that died goes, whoever wrote it)
        expiring: dict[str, float] = {}
        while not self._stopped.is_set():
            with self._lock:
                idle = not self._commands
            due = refreshed + self.refresh_interval - monotonic()
            if idle and due > 0:
                self._wake.acquire(timeout=due)  # (a wake-up call, or the refresh)
            with self._lock:
                commands = list(self._commands)
                self._wake_due = False  # (a deferred wake that never ran holds it no more)
                claims = list(self._claims.items()) \
                    if monotonic() - refreshed >= self.refresh_interval else None
            if not commands and claims is None:
                continue  # (a wake-up call for commands written already)
            try:
                if client is None:
                    client = self._client()
                pipe = client.pipeline(transaction=False)
                if claims is not None:
                    self._refresh(pipe, claims)
                for stream in self._queue(pipe, commands):
                    if monotonic() - expiring.get(stream, -inf) >= self.refresh_interval:
                        pipe.pexpire(stream, int(3 * self.refresh_interval * 1000))
                        expiring[stream] = monotonic()  # (a stream lives 3 intervals)
                pipe.execute()
            except Exception as exc:  # noqa: BLE001 -- whatever Redis does, the thread lives on
                client = None
                expiring.clear()
                self.health("writer", exc)
                self._stopped.wait(min(self.refresh_interval, 1.0))
                continue
            self.health("writer")
            if self._hand is not None:
                for command in commands:
                    if len(command) > 4:  # a claim someone waits for (see claim)
                        self._hand(command[4])
            if claims is not None:
                refreshed = monotonic()
                if self._hand is not None:
                    self._hand(self._on_refresh)
            with self._lock:
                for _ in commands:
                    self._commands.popleft()

    def health(self, part: str, why: BaseException | None = None) -> None:
        """``part`` (a thread, or the lookups) reached Redis, or failed to
        (``why``): logged once when forwarding stops working, once when it
        works again; the parts retry meanwhile."""
        if why is None and not self._failing:
            return
        with self._lock:
            was = not self._failing
            if why is None:
                self._failing.discard(part)
            else:
                self._failing.add(part)
            now = not self._failing
        if was and not now:
            log.warning("forwarding requests between processes failed (%s): clients held by "
                        "other processes are served here until Redis is back", why)
        elif now and not was:
            log.warning("forwarding requests between processes works again")

    def _refresh(self, pipe: Any,
                 claims: list[tuple[str, tuple[dict[str, Any], str, int]]]) -> None:
        """This process holds these clients (its reader says it is alive)."""
        ttl = int(3 * self.refresh_interval * 1000)
        for stream in (self.inbox(self.node), self.replies(self.node)):
            pipe.pexpire(stream, ttl)
        for uuid, (_, text, entry_ttl) in claims:
            pipe.set(self.client_key(uuid), text, px=entry_ttl)

    def _queue(self, pipe: Any, commands: list[tuple[Any, ...]]) -> set[str]:
        """Queue ``commands`` on ``pipe``, the messages for each stream in
        one ``XADD`` (see :func:`batches`); return the streams written."""
        written = set()
        for command in batches(commands):
            kind = command[0]
            if kind == "set":
                pipe.set(command[1], command[2], px=command[3])
            elif kind == "del":
                pipe.delete(command[1])
            else:  # xadd
                pipe.xadd(command[1], {"m": command[2]}, maxlen=STREAM_MAX_LENGTH,
                          approximate=True)
                written.add(command[1])
        return written

    def _mark_alive(self, client: Any) -> None:
        """Write this process's liveness key, for three refresh intervals,
        with the id of the reader's connection ``client`` (see :meth:`alive`)."""
        value = "1"  # (no id: the key alone tells)
        if not self._no_client_list:
            from redis.exceptions import ResponseError
            try:
                value = f"id:{client.client_id()}"
            except ResponseError as exc:
                self._client_list_refused(exc)
        client.set(self.node_key(self.node), value, px=int(3 * self.refresh_interval * 1000))

    def _read_loop(self) -> None:
        client: Any = None
        inbox, replies = self.inbox(self.node), self.replies(self.node)
        last = {inbox: "0-0", replies: "0-0"}  # the streams are this process's own: new
        total = {inbox: 0, replies: 0}  # entries read in all
        trimmed = {inbox: 0, replies: 0}  # ``total`` when the stream was last trimmed
        behind = {inbox: True, replies: True}  # (or just started): look for a gap first
        block = min(READ_BLOCK, self.refresh_interval)
        marked, failed = 0.0, False
        while not self._stopped.is_set():
            try:
                if client is None:
                    client = self._client(blocks=block, retry=False)
                    marked = 0.0  # a new connection: its id goes into the liveness key now
                if monotonic() - marked >= self.refresh_interval:
                    self._mark_alive(client)
                    marked = monotonic()
                for name in (inbox, replies):
                    if behind[name]:
                        self._look_for_gap(client, name, last[name], total[name])
                found = client.xread(last, block=int(block * 1000), count=READ_COUNT)
            except Exception as exc:  # noqa: BLE001 -- whatever Redis does, the thread lives on
                client = None
                self.health("reader", exc)
                if failed:  # at once the first time: until its new connection's id is
                    self._stopped.wait(min(self.refresh_interval, 1.0))  # written, it looks dead
                failed = True
                continue
            failed = False
            self.health("reader")
            behind = {inbox: False, replies: False}
            for stream, entries in found or []:
                name = stream.decode() if isinstance(stream, bytes) else stream
                total[name] += len(entries)
                behind[name] = len(entries) >= READ_COUNT
                messages: list[dict[str, Any]] = []
                for entry_id, fields in entries:
                    last[name] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    messages += entry_messages(fields)
                if messages and self._hand is not None:
                    self._hand(self._on_request if name == inbox else self._on_reply, messages)
            for name, count in total.items():
                if count - trimmed[name] >= TRIM_EVERY and self._trims:
                    trimmed[name] = count
                    self._trim(client, name, last[name])

    def _look_for_gap(self, client: Any, stream: str, last: str, read: int) -> None:
        """Report the entries of ``stream`` (this process's own) that the cap
        (``STREAM_MAX_LENGTH``) removed before this reader read them: there
        are some when the stream's first entry is past ``last``, the last
        one read, and fewer are left than were added and not read
        (``read``: entries read in all). They are logged and counted
        (``on_lost``); the requests they held get no answer (their
        requesters answer 504), the replies reach nobody. Called when the
        last read was a full one (a reader that far behind), before the
        next. Redis before 7.0 does not tell: nothing is reported there."""
        from redis.exceptions import RedisError
        try:
            info = client.xinfo_stream(stream)
        except RedisError:  # (no such stream yet, or Redis away: the next read tells)
            return
        first, added = info.get("recorded-first-entry-id"), info.get("entries-added")
        if first is None or added is None or entry_order(first) <= entry_order(last):
            return
        lost = int(added) - read - int(info["length"]) - self._lost.get(stream, 0)
        if lost > 0:
            self._lost[stream] = self._lost.get(stream, 0) + lost
            log.error("%d entries of %s (requests or replies sent to this process) were lost "
                      "unread: it fell more than %d entries behind", lost, stream,
                      STREAM_MAX_LENGTH)
            if self._hand is not None:
                self._hand(self._on_lost, lost)

    def _trim(self, client: Any, stream: str, last: str) -> None:
        """Remove from ``stream`` (this process's own) the entries before
        ``last``, the last one read (``XTRIM MINID``, approximately: whole
        nodes of the stream). A Redis older than 6.2 refuses it: said once,
        and the cap alone bounds the streams from then on."""
        from redis.exceptions import RedisError, ResponseError
        try:
            client.xtrim(stream, minid=last, approximate=True)
        except ResponseError as exc:
            self._trims = False
            log.warning("Redis refused XTRIM MINID (%s): the streams between processes are "
                        "bounded by their cap alone, %d entries each", exc, STREAM_MAX_LENGTH)
        except RedisError:
            pass  # the next read finds the connection broken, if it is
