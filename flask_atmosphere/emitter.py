"""Pushes from any Python process: a cron job, a Celery or RQ worker, a
script, an ordinary thread. ``Emitter`` publishes through the same Redis
backplane, script and offsets as the app's own broadcasts, synchronously,
with redis-py alone: it needs no server, no Flask app and no gevent.

    from flask_atmosphere import Emitter

    emitter = Emitter("redis://127.0.0.1:6379/0")
    emitter.broadcast("/rooms/blue", {"author": "cron", "message": "backup done"})
    emitter.broadcast_all("maintenance in 5 minutes")
"""
from __future__ import annotations

import os
import secrets
from threading import Lock
from typing import Any

import redis
from redis.cluster import RedisCluster

from .backplane.envelope import encode
from .backplane.shards import PUBLISH_SCRIPT, keys, shards_of_prefix
from .broadcast import Broadcast, normalize_path
from .config import redis_url
from .filters import Everyone, as_filter

__all__ = ["Emitter"]


class Emitter:
    """Publishes broadcasts to the clients of an app's processes, through
    its Redis backplane. Thread-safe.

    Args:
        url: the app's ``ATMOSPHERE_BACKPLANE``.
        prefix: the app's ``ATMOSPHERE_REDIS_PREFIX``.
        shards: the app's ``ATMOSPHERE_REDIS_SHARDS``.
        stream_max_length: the app's ``ATMOSPHERE_REDIS_STREAM_MAX_LENGTH``.
        stream_max_age: the app's ``ATMOSPHERE_REDIS_STREAM_MAX_AGE``, in seconds.
        timeout: seconds a Redis command (or connect) may take, as the
            app's ``ATMOSPHERE_REDIS_TIMEOUT``.
        cluster: the app's ``ATMOSPHERE_REDIS_CLUSTER``.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(self, url: str, prefix: str = "atmosphere", shards: int = 1,
                 stream_max_length: int = 10_000, stream_max_age: float = 300.0,
                 timeout: float = 2.0, cluster: bool = False):
        client_class: Any = RedisCluster if cluster else redis.Redis
        self._redis = client_class.from_url(redis_url(url), socket_timeout=timeout,
                                            socket_connect_timeout=timeout)
        self._publish = "SPUBLISH" if cluster else "PUBLISH"
        self._cluster = cluster
        self._script = self._redis.register_script(PUBLISH_SCRIPT)
        self.prefix = prefix
        self.shards = shards
        self.stream_max_length = stream_max_length
        self.stream_max_age = stream_max_age
        self._origin = f"emitter.{os.getpid()}.{secrets.token_hex(4)}"
        self._counter = 0
        self._lock = Lock()

    def broadcast(self, path: str, message: Any, to: Any = Everyone) -> None:
        """Push ``message`` to every client of the broadcaster ``path`` and of
        every path below it (by whole segments), on every process, as
        ``Atmosphere.broadcast`` does; returns once Redis has it.

        Args:
            path: a broadcaster path or a prefix of one.
            message: a ``str``, or JSON (a ``dict`` or ``list``).
            to: a client filter that is data: ``Everyone``, ``Uuids``, a
                filter registered with ``client_filter``, or a combination.
        Raises:
            filters.FilterError: ``to`` is code (a bare callable).
            TypeError: ``message`` is neither a string nor JSON.
            redis.RedisError: Redis could not be reached; nothing was published.
        """
        broadcast = Broadcast(normalize_path(path), message, as_filter(to))
        with self._lock:
            self._counter += 1
            envelope_id = f"{self._origin}-{self._counter}"
        data = encode(envelope_id, broadcast)
        # One pipeline; in a cluster, one call per shard, each to the node of
        # its slot (redis-py before 8.2 refuses EVALSHA in a cluster pipeline).
        pipe = None if self._cluster else self._redis.pipeline(transaction=False)
        for shard in shards_of_prefix(broadcast.path, broadcast.exact, self.shards):
            k = keys(self.prefix, shard)
            self._script(keys=[k.stream, k.meta],
                         args=[data, k.channel, self.stream_max_length,
                               int(self.stream_max_age * 1000), secrets.token_hex(8),
                               self._publish],
                         client=self._redis if pipe is None else pipe)
        if pipe is not None:
            pipe.execute()

    def broadcast_all(self, message: Any, to: Any = Everyone) -> None:
        """Push ``message`` to every client of every route (see :meth:`broadcast`)."""
        self.broadcast("/", message, to)

    def close(self) -> None:
        """Close the connection to Redis."""
        self._redis.close()
