"""How broadcasts are laid out in Redis, sans-IO: shards, their keys and
channel, and the one script that publishes.

Order is kept per *shard*: a shard holds the broadcasts of every path whose
first segment hashes to it (``/rooms/blue`` and ``/rooms/red`` share the
shard of ``rooms``). One Lua script per publication gives it the shard's
next offset, appends it to the shard's capped stream and publishes it with
its offset and the stream's epoch, atomically, so every process sees a
shard's publications in the same order and can tell a gap. A broadcast to a
prefix that spans shards (``/``, ``broadcast_all``) is published to each
shard, and each copy reaches only the clients of its shard.

Keys and the channel of a shard share one hash tag, ``{<prefix>:<shard>}``,
so that a Redis Cluster keeps them in one slot (and sharded pub/sub on the
node that owns it).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["shard_of", "shards_of_prefix", "ShardKeys", "keys", "PUBLISH_SCRIPT"]


def _first_segment(path: str) -> str:
    return path.strip("/").split("/", 1)[0]


def shard_of(path: str, shards: int) -> int:
    """The shard of the broadcaster ``path`` (a normalised path), among ``shards``."""
    if shards == 1:
        return 0
    return zlib.crc32(_first_segment(path).encode("utf-8")) % shards


def shards_of_prefix(prefix: str, exact: bool, shards: int) -> list[int]:
    """The shards a broadcast to ``prefix`` (or, ``exact``, to that path
    only) must be published to: the shard of its first segment, or every
    shard for the root ``/`` prefix."""
    if not exact and prefix.strip("/") == "":
        return list(range(shards))
    return [shard_of(prefix, shards)]


@dataclass(frozen=True)
class ShardKeys:
    """The Redis names of one shard.

    Attributes:
        stream: the capped stream of its publications.
        meta: a hash of its epoch (``e``), its last offset (``o``) and the
            time of its last entry in ms (``t``).
        channel: the pub/sub channel its publications go out on.
    """
    stream: str
    meta: str
    channel: str


def keys(prefix: str, shard: int) -> ShardKeys:
    """The names of shard ``shard`` under the app's ``prefix``."""
    tag = "{" + f"{prefix}:{shard}" + "}"
    return ShardKeys(f"{tag}:stream", f"{tag}:meta", f"{tag}:channel")


#: KEYS: stream, meta. ARGV: envelope, channel, max length (entries), max age
#: (ms), a new epoch for a shard with none, the publish command (PUBLISH or
#: SPUBLISH). Returns {entry id, epoch}.
#:
#: The entry id is ``<ms>-<offset>``: the offset counts the shard's
#: publications, the time (never going backwards) lets the stream be trimmed
#: by age. A shard whose meta is gone (Redis lost its data) starts a new
#: epoch, and drops a stream left from before.
PUBLISH_SCRIPT = """
local meta = redis.call("HMGET", KEYS[2], "e", "o", "t")
local epoch, offset, last = meta[1], tonumber(meta[2] or "0"), tonumber(meta[3] or "0")
if not epoch then
  epoch, offset, last = ARGV[5], 0, 0
  redis.call("DEL", KEYS[1])
end
local now = redis.call("TIME")
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ms < last then ms = last end
offset = offset + 1
local id = ms .. "-" .. offset
redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[3], id, "d", ARGV[1])
redis.call("XTRIM", KEYS[1], "MINID", "~", (ms - tonumber(ARGV[4])) .. "-0")
redis.call("PEXPIRE", KEYS[1], ARGV[4])
redis.call("HSET", KEYS[2], "e", epoch, "o", offset, "t", ms)
redis.call(ARGV[6], ARGV[2], id .. ":" .. epoch .. ":" .. ARGV[1])
return {id, epoch}
"""
