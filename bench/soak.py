"""What the Redis backplane keeps per client, over a long run: rounds of
long-polling clients on two processes that share a throw-away
``redis-server``. Each round opens ``--clients`` clients (half on each
process, each with the handshake, so each gets a directory entry), queues a
broadcast in the mailbox of every client but its sender (so each of their
entries carries a checkpoint with it), then lets every client go: none comes back, and each entry must leave Redis
once its grace period is over. After each round it prints Redis's keys and
``used_memory``, and how many entries the shard's stream holds (its
history, kept ``STREAM_MAX_AGE`` seconds); once that history is at its
bound, the memory must stay flat from round to round.

    python -m bench soak --clients 3000 --rounds 20
"""
from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

from .backplane import RedisServer
from .harness import Server, default_log_dir

#: Short times so that a round ends soon, and the shard's stream reaches
#: its bound (its history: publications and probes) within the run: seconds.
GRACE_PERIOD, PROBE_INTERVAL, STREAM_MAX_AGE = 8, 0.5, 60

HANDSHAKE = {"X-Atmosphere-tracking-id": "0", "X-Atmosphere-Framework": "5.0.7",
             "X-Atmosphere-Transport": "long-polling", "X-atmo-protocol": "true"}


def _redis(url: str):
    import redis  # the "redis" extra
    return redis.Redis.from_url(url)


def _open(base: str) -> tuple[str, str]:
    """One long-polling client's handshake; returns its tracking id and the
    cookie that binds the id to this client (``ATMOSPHERE_RESUME_COOKIE``)."""
    with urllib.request.urlopen(f"{base}/the-chat?{urlencode(HANDSHAKE)}", timeout=30) as r:
        cookie = r.headers.get("Set-Cookie", "").split(";")[0]
        return r.read().decode().split("|")[0], cookie


def _say(base: str, client: tuple[str, str], text: str) -> None:
    """An upstream message of ``client`` (tracking id, cookie): the relay
    broadcasts it to every client."""
    uuid, cookie = client
    query = urlencode(HANDSHAKE | {"X-Atmosphere-tracking-id": uuid})
    request = urllib.request.Request(f"{base}/the-chat?{query}", data=text.encode(),
                                     method="POST", headers={"Cookie": cookie})
    urllib.request.urlopen(request, timeout=30).read()


def cmd_soak(args) -> None:
    log_dir = default_log_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(None, log_dir / "soak-redis.log")
    env = {"BENCH_REDIS_URL": redis_server.url,
           "FLASK_ATMOSPHERE_GRACE_PERIOD": str(GRACE_PERIOD),
           "FLASK_ATMOSPHERE_REDIS_PROBE_INTERVAL": str(PROBE_INTERVAL),
           "FLASK_ATMOSPHERE_REDIS_STREAM_MAX_AGE": str(STREAM_MAX_AGE)}
    servers = [Server("atmosphere_redis", None, log_dir / f"soak-{i}.log", env=env)
               for i in range(2)]
    r = _redis(redis_server.url)
    rows = []
    try:
        bases = [f"http://127.0.0.1:{server.port}" for server in servers]
        with ThreadPoolExecutor(32) as pool:
            for n in range(args.rounds):
                started = time.monotonic()
                clients = list(pool.map(lambda i: (bases[i % 2], _open(bases[i % 2])),
                                      range(args.clients)))
                _say(*clients[0], f"round {n}")
                # Every entry carries a checkpoint of a mailbox that holds it.
                peak_keys, peak_memory = r.dbsize(), r.info("memory")["used_memory"]
                time.sleep(2 * PROBE_INTERVAL)  # a checkpoint is due: nothing announces it
                peak_memory = max(peak_memory, r.info("memory")["used_memory"])
                entries = [json.loads(raw) for raw in r.mget(r.keys("atmosphere:client:*"))
                           if raw is not None]
                with_message = sum(1 for entry in entries
                                   if entry.get("checkpoint", {}).get("mailbox", {}).get("queued"))
                deadline = time.monotonic() + GRACE_PERIOD + 60
                while r.keys("atmosphere:client:*"):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"round {n}: client entries outlived their grace period")
                    time.sleep(0.2)
                rows.append({"round": n, "clients": args.clients, "peak_keys": peak_keys,
                             "checkpoints_with_the_message": with_message,
                             "peak_used_memory": peak_memory, "keys_after": r.dbsize(),
                             "used_memory_after": r.info("memory")["used_memory"],
                             "stream_entries_after": sum(r.xlen(key) for key
                                                         in r.keys("*:stream")),
                             "seconds": round(time.monotonic() - started, 1)})
                if not args.quiet:
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        for server in servers:
            server.stop()
        redis_server.stop()
    first, last = rows[0]["used_memory_after"], rows[-1]["used_memory_after"]
    print(f"{args.rounds} rounds of {args.clients} clients: used_memory after the first "
          f"{first} B, after the last {last} B ({last - first:+d} B)")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


def add_parser(sub) -> None:
    """The ``soak`` command of ``python -m bench``."""
    parser = sub.add_parser("soak", help="Redis memory over rounds of clients that never "
                                         "come back (two processes, the Redis backplane)")
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="write every round here")
    parser.add_argument("--quiet", "-q", action="store_true")
    parser.set_defaults(func=cmd_soak)
