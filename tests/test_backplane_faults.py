"""The Redis backplane through Redis faults, each with a real redis-server
(restarted, killed, paused) or a link that goes silent: local delivery goes
on meanwhile, cross-process delivery resumes within 5 s of Redis being back,
what was published meanwhile crosses afterwards in order, or its loss is
announced, and the log says once that the backplane is down and once that it
is back. (The tests' time scale: a probe every 0.5 s, commands time out after
0.5 s.)"""
from __future__ import annotations

import json
import time

from app_processes import app_processes  # noqa: F401 (a fixture)
from netfaults import FreezingProxy
from redis_servers import redis_server  # noqa: F401 (a fixture)
from test_backplane import command, wait_up, ws

RESUMES_WITHIN = 5.0


def down_and_back_once(log: str) -> bool:
    return log.count("the Redis backplane is down") == 1 and log.count("is back after") == 1


def test_a_redis_restart_loses_its_history_and_says_so(redis_server, app_processes):
    one, two = app_processes(redis_server.url), app_processes(redis_server.url)
    wait_up(one, two)
    a, b = ws(one), ws(two)
    redis_server.stop()
    command(a, "everyone", "while redis is away")
    assert a.recv() == "while redis is away"  # its own process's clients get it at once
    redis_server.start()  # no persistence: it comes back empty
    back = time.monotonic()
    got = {b.recv() for _ in range(2)}
    assert time.monotonic() - back < RESUMES_WITHIN
    # What was queued crossed; that Redis lost its history is announced.
    assert got == {"while redis is away", json.dumps({"lost": None, "reason": "backplane"},
                                                     separators=(",", ":"))}
    command(b, "everyone", "after")
    assert b.recv() == "after"
    while (message := a.recv()) != "after":  # a was told of the loss too
        assert json.loads(message)["reason"] == "backplane"
    assert down_and_back_once(one.stop()) and down_and_back_once(two.stop())


def test_a_redis_killed_and_restarted_empty(redis_server, app_processes):
    one, two = app_processes(redis_server.url), app_processes(redis_server.url)
    wait_up(one, two)
    a, b = ws(one), ws(two)
    command(b, "everyone", "before")
    assert a.recv() == "before" and b.recv() == "before"
    redis_server.kill()
    command(a, "everyone", "during 1")
    command(a, "everyone", "during 2")
    assert [a.recv(), a.recv()] == ["during 1", "during 2"]
    redis_server.start()
    messages = [b.recv() for _ in range(3)]
    assert [m for m in messages if m.startswith("during")] == ["during 1", "during 2"]  # in order
    assert any('"lost"' in m for m in messages)
    wait_up(one, two)


def test_a_paused_redis_loses_nothing(redis_server, app_processes):
    one, two = app_processes(redis_server.url), app_processes(redis_server.url)
    wait_up(one, two)
    a, b = ws(one), ws(two)
    redis_server.pause()
    try:
        for i in range(5):
            command(a, "everyone", f"paused {i}")
        assert [a.recv() for _ in range(5)] == [f"paused {i}" for i in range(5)]
        deadline = time.monotonic() + 10
        while one.stats()["backplane"]["up"]:  # until it noticed (commands time out)
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        redis_server.resume()
    back = time.monotonic()
    assert [b.recv() for _ in range(5)] == [f"paused {i}" for i in range(5)]  # in order, once
    assert time.monotonic() - back < RESUMES_WITHIN
    command(b, "everyone", "after")
    assert a.recv() == "after" and b.recv() == "after"  # nothing twice, nothing lost
    assert "lost" not in one.stop()


def test_a_silent_link_is_found_by_the_probe_and_replaced(redis_server, app_processes):
    proxy = FreezingProxy(redis_server.port)
    one = app_processes(f"redis://127.0.0.1:{proxy.port}/0")  # its link to Redis will go silent
    two = app_processes(redis_server.url)
    wait_up(one, two)
    a, b = ws(one), ws(two)
    proxy.freeze()
    silent = time.monotonic()
    command(a, "everyone", "from one, link dead")
    command(b, "everyone", "from two meanwhile")
    assert a.recv() == "from one, link dead"
    assert b.recv() == "from two meanwhile"
    proxy.thaw()  # a new connection would get through: the old ones stay dead
    assert a.recv() == "from two meanwhile"  # recovered from the stream once resubscribed
    assert b.recv() == "from one, link dead"
    assert time.monotonic() - silent < 15  # the probe found the dead subscription
    command(b, "everyone", "after")
    assert a.recv() == "after" and b.recv() == "after"
    proxy.stop()
