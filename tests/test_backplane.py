"""The Redis backplane across real processes: every broadcast reaches the
clients of every process, once, in one order per shard; filters cross as
data; what is not one of ours is skipped; pushes come from any process."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from urllib.parse import urlencode

from app_processes import app_processes  # noqa: F401 (a fixture)
from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from redis_servers import redis_cluster, redis_server  # noqa: F401 (fixtures)
from flask_atmosphere import Emitter, Uuids
from flask_atmosphere.backplane.shards import keys
from flask_atmosphere.filters import Named


def ws(process, path="/chat", **params):
    """A WebSocket client of ``process`` that read its greeting."""
    query = urlencode(ATMOSPHERE_PARAMS | params)
    client = WSClient(process.url(path) + "?" + query, track=True, protocol=True)
    json.loads(client.recv())
    return client


def wait_up(*processes):
    """Until each process's backplane carries broadcasts across (its state
    announces nothing: it is polled)."""
    deadline = time.monotonic() + TIMEOUT
    for process in processes:
        while not process.stats()["backplane"]["up"]:
            assert time.monotonic() < deadline, "the backplane did not come up"
            time.sleep(0.02)


def command(client, to, msg):
    client.send(json.dumps({"cmd": "broadcast", "to": to, "msg": msg}))


def test_a_broadcast_reaches_every_process_once(redis_server, app_processes):
    one, two = app_processes(redis_server.url), app_processes(redis_server.url)
    wait_up(one, two)
    a, b = ws(one), ws(two)
    command(a, "everyone", "from one")
    assert a.recv() == "from one" and b.recv() == "from one"
    two.push("/chat", "from a view of two")
    assert a.recv() == "from a view of two" and b.recv() == "from a view of two"
    command(a, "skipself", "not to a")  # the sender is skipped on its process
    command(b, "skipself", "not to b")
    assert a.recv() == "not to b" and b.recv() == "not to a"


def test_one_order_for_all_whoever_publishes(redis_server, app_processes):
    one, two = app_processes(redis_server.url), app_processes(redis_server.url)
    wait_up(one, two)
    a, b = ws(one), ws(two)
    for i in range(50):  # both publish at once, without waiting
        command(a, "everyone", f"a{i}")
        command(b, "everyone", f"b{i}")
    seen_a = [a.recv() for _ in range(100)]
    seen_b = [b.recv() for _ in range(100)]
    assert seen_a == seen_b  # one agreed order
    assert [m for m in seen_a if m[0] == "a"] == [f"a{i}" for i in range(50)]  # each publisher's
    assert [m for m in seen_a if m[0] == "b"] == [f"b{i}" for i in range(50)]


def test_prefixes_and_broadcast_all_cross_shards_once(redis_server, app_processes):
    one = app_processes(redis_server.url, ATMOSPHERE_REDIS_SHARDS=4)
    two = app_processes(redis_server.url, ATMOSPHERE_REDIS_SHARDS=4)
    wait_up(one, two)
    blue, red = ws(one, "/rooms/blue"), ws(two, "/rooms/red")
    chat, fizz = ws(two, "/chat"), ws(one, "/real-time-buzz/fizz")
    one.push("/", "to all")
    assert [c.recv() for c in (blue, red, chat, fizz)] == ["to all"] * 4
    two.push("/rooms", "to the rooms")
    one.push("/real-time-buzz", "to the blueprint")
    assert [blue.recv(), red.recv(), fizz.recv()] == ["to the rooms"] * 2 + ["to the blueprint"]
    # Then a marker to all is each client's next message: nothing came twice.
    # (Sent only now: a push returns once its publication is queued, and two
    # processes' publications are in the order Redis got them.)
    one.push("/", "marker")
    assert [c.recv() for c in (blue, red, chat, fizz)] == ["marker"] * 4


def test_filters_cross_processes_as_data(redis_server, app_processes):
    one, two = app_processes(redis_server.url), app_processes(redis_server.url)
    wait_up(one, two)
    a, b = ws(one, role="admin"), ws(two, role="admin")
    c = ws(two, role="guest")
    command(a, "onlyself", "to a only")
    assert a.recv() == "to a only"
    a.send(json.dumps({"cmd": "broadcast", "to": {"uuids": [c.uuid]}, "msg": "to c only"}))
    assert c.recv() == "to c only"
    command(a, "other-admins-by-name", "psst")  # a filter registered by name
    assert b.recv() == "psst"
    # A bare callable cannot cross: an error at the call, nothing sent anywhere.
    command(a, "other-admins", "never")
    command(b, "everyone", "marker")
    assert [a.recv(), b.recv(), c.recv()] == ["marker"] * 3
    assert "cannot reach other processes" in one.stop()


def test_what_is_not_a_publication_of_ours_is_skipped_and_nothing_breaks(
        redis_server, app_processes):
    one = app_processes(redis_server.url)
    wait_up(one)
    a = ws(one)
    channel = keys("atmosphere", 0).channel
    r = redis_server.client()
    for garbage in (b"garbage", b"1-x:e:{}", b"\xff\xfe:\xff:"):
        r.publish(channel, garbage)
    emitter = Emitter(redis_server.url)
    emitter.broadcast("/chat", "forged", to=Named("no-such-filter"))  # a name not registered
    emitter.broadcast("/chat", {"v": 1}, to=Uuids("nobody"))
    emitter.broadcast("/chat", "still working")
    assert a.recv() == "still working"
    stats = one.stats()
    assert stats["backplane_malformed"] >= 4
    log = one.stop()
    assert "no client filter named 'no-such-filter'" in log


PLAIN_PROCESS = """
import sys
from flask_atmosphere import Emitter, Uuids
emitter = Emitter(sys.argv[1])
emitter.broadcast("/chat", {"from": "a cron job"})
emitter.broadcast_all("to everyone", to=Uuids(sys.argv[2]))
assert not any(name in sys.modules for name in ("gevent", "flask")), "an emitter needs neither"
"""


def test_an_emitter_pushes_from_a_plain_python_process(redis_server, app_processes):
    one = app_processes(redis_server.url)
    wait_up(one)
    a = ws(one)
    subprocess.run([sys.executable, "-c", PLAIN_PROCESS, redis_server.url, a.uuid], check=True,
                   timeout=TIMEOUT)
    assert json.loads(a.recv()) == {"from": "a cron job"}
    assert a.recv() == "to everyone"


def test_redis_memory_stays_flat_under_a_long_run(redis_server, app_processes):
    # A soak in the tests' time scale: streams capped at 100 publications and
    # 1 s, thousands published in rounds; every key has a TTL or is one of a
    # fixed few (a shard's meta), and Redis's memory does not grow round to round.
    config = {"ATMOSPHERE_REDIS_SHARDS": 2, "ATMOSPHERE_REDIS_STREAM_MAX_LENGTH": 100,
              "ATMOSPHERE_REDIS_STREAM_MAX_AGE": 1}
    one = app_processes(redis_server.url, **config)
    wait_up(one)
    a = ws(one, "/rooms/a")
    emitter = Emitter(redis_server.url, shards=2, stream_max_length=100, stream_max_age=1)
    r = redis_server.client()
    used = []
    for round_ in range(4):
        for i in range(1000):
            emitter.broadcast(f"/rooms/{i % 7}", "x" * 200)
        emitter.broadcast("/rooms/a", f"end of round {round_}")
        while a.recv() != f"end of round {round_}":
            pass
        used.append(r.info("memory")["used_memory"])
        for key in r.scan_iter():
            kind = r.type(key)
            if kind == b"stream":
                assert r.xlen(key) <= 300  # capped ("~": whole nodes of 100)
                assert 0 < r.pttl(key) <= 1000
            elif kind == b"string":  # the process's liveness, the client's holder
                assert key.startswith((b"atmosphere:node:", b"atmosphere:client:"))
                assert 0 < r.pttl(key) <= 62_000  # the grace period and 3 refreshes at most
            else:
                assert kind == b"hash" and key.endswith(b":meta")
        # A stream and a meta per shard, the liveness of `one`, the holder of
        # its client: nothing else, nothing more.
        assert r.dbsize() <= 6
    assert max(used[1:]) < used[0] * 1.2 + 256 * 1024  # flat after the first round


def test_a_redis_cluster_with_sharded_pub_sub(redis_cluster, app_processes):
    config = {"ATMOSPHERE_REDIS_CLUSTER": True, "ATMOSPHERE_REDIS_SHARDS": 6}
    one = app_processes(redis_cluster.url, **config)
    two = app_processes(redis_cluster.nodes[1].url, **config)  # any node will do
    wait_up(one, two)
    rooms = {name: ws(process, f"/rooms/{name}")
             for name, process in zip("abcdef", [one, two] * 3)}
    slots = {redis_cluster.nodes[0].client().cluster("keyslot", keys("atmosphere", s).stream)
             for s in range(6)}
    assert len(slots) == 6  # the shards are spread over slots (and so over the nodes)
    one.push("/", "to all")
    for name, client in rooms.items():
        assert client.recv() == "to all", name
    for name in "abcdef":
        two.push(f"/rooms/{name}", f"to {name}")
    for name, client in rooms.items():
        assert client.recv() == f"to {name}"
    emitter = Emitter(redis_cluster.url, shards=6, cluster=True)
    emitter.broadcast("/rooms/c", "from an emitter")
    assert rooms["c"].recv() == "from an emitter"
