"""Long-polling without sticky sessions: with the Redis backplane, each
request of a client may land on any process of the app (real processes,
real Redis); the one that holds the client serves it."""
from __future__ import annotations

import json
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import gevent
import pytest
import requests

from app_processes import app_processes  # noqa: F401 (a fixture)
from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from flask_atmosphere.backplane.forwarding import Forwarding
from http_clients import Decoder, PollClient, StreamClient
from redis_servers import RedisServer, redis_server  # noqa: F401 (a fixture)
from test_backplane import wait_up, ws
from test_websocket import make_app

QUICK = {"ATMOSPHERE_HEARTBEAT_INTERVAL": 2}


def on(client: PollClient, process) -> PollClient:
    """The client's next requests go to ``process`` (its cookies go along)."""
    client.url = process.base + "/chat"
    return client


def test_polls_posts_and_goodbye_on_any_process(redis_server, app_processes):
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    witness = ws(one)  # sees the one agreed order of the broadcasts
    client = PollClient(one.base, "/chat")  # its handshake: `one` holds it from now on
    processes = [one, two]
    hello = json.loads(on(client, two).poll()[0])
    assert hello["hello"] == client.uuid  # its Connected ran on `one`, once
    got: list[str] = []
    expected: list[str] = []
    for i in range(40):
        processes[i % 2].push("/chat", f"m{i}")
        expected.append(witness.recv())
        while len(got) < len(expected):  # polls on the other process, then on this one
            got += on(client, processes[(i + 1 + len(got)) % 2]).poll()
    assert got == expected and len(set(got)) == 40  # everything once, in the agreed order

    for i in range(20):  # upstream messages to any process reach its receive, in order
        response = on(client, processes[i % 2]).post(f"up{i}")
        assert response.status_code == 200, response.text
    echoes: list[str] = []
    while len(echoes) < 20:
        echoes += on(client, processes[len(echoes) % 2]).poll()
    assert echoes == [f"up{i}" for i in range(20)]

    assert on(client, two).close().status_code == 200  # a goodbye to the other process
    witness.send(json.dumps({"cmd": "broadcast", "to": "everyone", "msg": "after"}))
    assert witness.recv() == "after"
    stats = [process.stats() for process in processes]
    assert sum(s["disconnects"].get("client_closed", 0) for s in stats) == 1
    assert stats[0]["clients"]["total"] == 1  # the witness alone
    assert stats[0]["connects"] == 2 and stats[1].get("connects", 0) == 0


def test_the_polls_of_a_client_held_elsewhere_take_the_lean_path(redis_server, app_processes):
    """Once a poll of a client held by another process went the full way
    here, its next polls are sent on to the holder in front of Flask (the
    lean path), with the same answers; one that may not act for the
    client (a wrong resume key) still goes the full way."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    client = PollClient(one.base, "/quiet")
    client.url = two.base + "/quiet"
    full = client.http.get(client.url, params=client.query(), timeout=TIMEOUT)
    assert full.status_code == 200  # (what the client's Connected sent)
    assert two.stats()["flask_requests"] == 1  # the full way: it leaves a ticket
    got = []
    for i in range(5):
        one.push("/quiet", f"m{i}")
        got += client.poll()
    assert got == [f"m{i}" for i in range(5)]
    assert two.stats()["flask_requests"] == 1  # none of them reached Flask
    one.push("/quiet", "again")
    lean = client.http.get(client.url, params=client.query(), timeout=TIMEOUT)
    assert Decoder(client.track).feed(lean.text) == ["again"]
    same = {"Content-Type", "Cache-Control", "Pragma", "Expires", "X-Accel-Buffering"}
    assert {k: v for k, v in lean.headers.items() if k in same} \
        == {k: v for k, v in full.headers.items() if k in same}

    stranger = requests.get(client.url, params=client.query(), timeout=TIMEOUT)  # no key
    assert stranger.status_code == 200
    assert two.stats()["flask_requests"] == 2  # the full way: a client of its own


def test_a_held_poll_sent_on_to_the_holder_sends_its_headers_at_once(redis_server,
                                                                     app_processes):
    """The first poll of a client after its handshake sends its headers at
    once (the clients fire ``open`` on them, §4.2), on another process too."""
    one, two = (app_processes(redis_server.url, ATMOSPHERE_HEARTBEAT_INTERVAL=30)
                for _ in range(2))
    wait_up(one, two)
    client = PollClient(one.base, "/quiet")
    client.url = two.base + "/quiet"
    # stream=True returns as soon as the headers are in: with the poll still held.
    held = client.http.get(client.url, params=client.query(), stream=True, timeout=TIMEOUT)
    assert held.status_code == 200
    one.push("/quiet", "now")
    assert Decoder(True).feed(held.raw.read().decode()) == ["now"]


def test_a_poll_for_a_client_its_holder_holds_no_more_is_answered_empty(redis_server,
                                                                         app_processes):
    """A process keeps who holds a client it forwarded a poll for, without
    looking it up again. If the holder holds the client no more (here it
    said goodbye there), the next poll sent there is answered 200 with
    nothing (a client polls again; an error status would read as a
    refusal), and the one after is served afresh: nobody holds the client,
    so it opens there, with its tracking id."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    client = PollClient(one.base, "/chat")
    assert json.loads(on(client, two).poll()[0])["hello"] == client.uuid  # served by `one`
    assert on(client, one).close().status_code == 200
    response = on(client, two).http.get(client.url, params=client.query(), timeout=TIMEOUT)
    assert (response.status_code, response.text) == (200, "")
    assert json.loads(client.poll()[0]) == {"hello": client.uuid, "room": None}
    assert one.stats()["connects"] == 1 and two.stats()["connects"] == 1


def test_a_request_that_may_not_act_for_the_client_is_not_forwarded(redis_server,
                                                                   app_processes):
    """Without the resume key the client is bound to, a request that names
    its tracking id on another process gets a client of its own."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    victim = PollClient(one.base, "/chat")
    assert json.loads(victim.poll()[0])["hello"] == victim.uuid
    thief = PollClient(two.base, "/chat")
    thief.uuid = victim.uuid  # its tracking id, seen in a log; not its cookie
    hello = json.loads(thief.poll()[0])
    assert hello["hello"] != victim.uuid
    one.push("/chat", "for everyone")
    assert victim.poll() == ["for everyone"]


def test_upstream_messages_of_a_stream_on_any_process(redis_server, app_processes):
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    for transport in ("sse", "streaming"):
        stream = StreamClient(one.base, "/chat", transport=transport)
        assert json.loads(stream.next())["hello"] == stream.uuid
        for i in range(10):
            stream.url = (one, two)[i % 2].base + "/chat"
            assert stream.post(f"up{i}").status_code == 200
        assert stream.take(10) == [f"up{i}" for i in range(10)]
        stream.close()


def test_a_client_that_never_comes_back_leaves_nothing_in_redis(redis_server, app_processes):
    one = app_processes(redis_server.url, ATMOSPHERE_GRACE_PERIOD=0.5, **QUICK)
    wait_up(one)
    r = redis_server.client()
    client = PollClient(one.base, "/chat")
    key = f"atmosphere:client:{client.uuid}".encode()
    deadline = time.monotonic() + TIMEOUT
    while not r.exists(key):  # written by the process's own thread, soon
        assert time.monotonic() < deadline, "the client's holder was never written"
        time.sleep(0.01)
    assert 0 < r.pttl(key) <= 2000  # the grace period and three refreshes at most
    while r.exists(key):  # gone with the client (Redis announces nothing: polled)
        assert time.monotonic() < deadline, "the client's entry outlived it"
        time.sleep(0.05)
    assert one.stats()["disconnects"] == {"timeout": 1}
    # Its reader waited for forwarded requests longer than a Redis command
    # may take (ATMOSPHERE_REDIS_TIMEOUT is 0.5 s here) without failing.
    assert "forwarding requests between processes failed" not in one.stop()


def test_a_stream_reconnected_to_another_process_resumes(redis_server, app_processes):
    """An SSE stream that comes back to another process with
    ``Last-Event-ID``, and a streaming one with its tracking id, get what
    was sent meanwhile, in order, once; the client carries on (no second
    ``Connected``), and a stream served across processes delivers at once."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    for transport in ("sse", "streaming"):
        first = StreamClient(one.base, "/chat", transport=transport)
        assert json.loads(first.next())["hello"] == first.uuid
        one.push("/chat", "before")
        assert first.next() == "before"
        headers = {"Last-Event-ID": first.event_ids[-1]} if transport == "sse" else {}
        first.close()
        witness = ws(one)  # sees the one agreed order of the broadcasts
        for i in range(5):  # while it is away
            (one, two)[i % 2].push("/chat", f"away{i}")
        agreed = [witness.recv() for _ in range(5)]
        witness.close()
        second = StreamClient(two.base, "/chat", transport=transport, tracking_id=first.uuid,
                              headers=headers, http=first.http)
        assert second.next().startswith(first.uuid + "|")  # the 5.x handshake, again (§2.3)
        assert second.take(5) == agreed and sorted(agreed) == [f"away{i}" for i in range(5)]
        two.push("/chat", "live")
        assert second.next() == "live"
        second.close()
    assert one.stats()["connects"] == 4 and two.stats().get("connects", 0) == 0


def test_a_websocket_reconnected_to_another_process_carries_on(redis_server, app_processes):
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    first = ws(one)  # its hello read
    uuid, cookie = first.uuid, first.cookie
    one.push("/chat", "before")
    assert first.recv() == "before"
    first.reset()  # a dropped connection: it comes back within the grace period
    witness = ws(one)  # sees the one agreed order of the broadcasts
    for i in range(5):
        (one, two)[i % 2].push("/chat", f"away{i}")
    agreed = [witness.recv() for _ in range(5)]
    witness.close()
    query = urlencode(ATMOSPHERE_PARAMS | {"X-Atmosphere-tracking-id": uuid})
    second = WSClient(two.url("/chat") + "?" + query, track=True, cookie=cookie)
    assert second.recv().startswith(uuid + "|")  # the 5.x handshake again (§2.3)
    assert [second.recv() for _ in range(5)] == agreed
    assert sorted(agreed) == [f"away{i}" for i in range(5)]
    second.send("echo me")  # through to its receive, on `one`
    assert second.recv() == "echo me"
    second.send(json.dumps({"cmd": "broadcast", "to": "everyone", "msg": "from afar"}))
    assert second.recv() == "from afar"
    assert one.stats()["connects"] == 2 and two.stats().get("connects", 0) == 0
    second.close()  # a close frame: its goodbye, said on `one`
    deadline = time.monotonic() + TIMEOUT
    while one.stats()["disconnects"].get("client_closed", 0) < 1:
        assert time.monotonic() < deadline, "its goodbye did not reach its holder"
        time.sleep(0.05)


def test_a_client_whose_process_died_is_taken_over(redis_server, app_processes):
    """``kill -9`` on the process that holds a client: its next request,
    on another process, finds it taken over there (a ``Connected`` that
    says so, the same tracking id), and it carries on."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    client = PollClient(one.base, "/chat")
    assert json.loads(client.poll()[0]) == {"hello": client.uuid, "room": None}
    r = redis_server.client()
    nodes = set(r.scan_iter("atmosphere:node:*"))
    assert len(nodes) == 2
    # A client that does not say how far it got may get again what it got
    # after the last checkpoint: this one dies after a checkpoint of now.
    checkpointed(r, client.uuid, lambda mailbox: not mailbox["queued"])
    kill(one, redis_server)
    hello = json.loads(on(client, two).poll()[0])
    assert hello == {"hello": client.uuid, "room": None, "takeover": True}
    two.push("/chat", "after")
    assert client.poll() == ["after"]
    assert two.stats()["connects"] == 1
    # said where it happened, as a warning (a false takeover, of a client
    # whose process lived, would send it again what it got)
    assert f"WARNING client {client.uuid}: its process died: taken over here" in two.stop()


def test_a_websocket_whose_process_died_is_taken_over_at_its_first_reconnect(
        redis_server, app_processes):
    """``kill -9`` on the process holding a WebSocket client: its reconnect
    to another process takes it over there at once, as soon as Redis saw
    the dead process's connections close, long before its liveness key
    expires (15 s here). The socket is not carried for the dead process
    only to be closed, and opened again, once the key has expired."""
    one, two = (app_processes(redis_server.url, ATMOSPHERE_REDIS_PROBE_INTERVAL=5, **QUICK)
                for _ in range(2))
    wait_up(one, two)
    r = redis_server.client()
    first = ws(one)  # its hello read
    uuid, cookie = first.uuid, first.cookie
    # Its hello was sent: a client that does not say how far it got would
    # get it again from an earlier checkpoint (that of its opening).
    checkpointed(r, uuid, lambda mailbox: not mailbox["queued"])
    dead = node_of(one, r)
    kill(one, redis_server)
    query = urlencode(ATMOSPHERE_PARAMS | {"X-Atmosphere-tracking-id": uuid})
    second = WSClient(two.url("/chat") + "?" + query, track=True, cookie=cookie)
    assert second.recv().startswith(uuid + "|")  # the 5.x handshake (§2.3)
    assert json.loads(second.recv()) == {"hello": uuid, "room": None, "takeover": True}
    two.push("/chat", "live")
    assert second.recv() == "live"
    assert r.exists(f"atmosphere:node:{dead}")  # its death was known before the key expired


def test_what_a_dead_process_held_for_its_client_arrives_once_in_order(redis_server,
                                                                        app_processes):
    """``kill -9`` on the process that holds a client that says how far it
    got (``X-Atmosphere-Offset``): what was queued for it there, and what
    was published while nobody held it, arrive on the process that takes it
    over, in order, once; and nothing it got before comes again."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    r = redis_server.client()
    client = PollClient(one.base, "/chat", acks=True)
    assert json.loads(client.poll()[0])["hello"] == client.uuid
    for i in range(3):
        one.push("/chat", f"got{i}")
    assert client.poll_until(3) == ["got0", "got1", "got2"]
    for i in range(3):
        one.push("/chat", f"again{i}")  # queued in its mailbox on `one`
    checkpointed(r, client.uuid, lambda mailbox: [text for _, text in mailbox["queued"]]
                 == ["again0", "again1", "again2"])
    # Got after that checkpoint (most likely the last): its offset says so.
    assert client.poll_until(3) == ["again0", "again1", "again2"]
    delivered = one.stats()["deliveries"]
    one.push("/chat", "queued")  # queued on `one`, perhaps after its last checkpoint
    deadline = time.monotonic() + TIMEOUT
    while one.stats()["deliveries"] == delivered:  # there through Redis: not announced
        assert time.monotonic() < deadline, "the broadcast never reached `one`"
        time.sleep(0.01)
    kill(one, redis_server)
    two.push("/chat", "meanwhile")
    got = on(client, two).poll_until(3)
    assert got[:2] == ["queued", "meanwhile"]
    assert json.loads(got[2]) == {"hello": client.uuid, "room": None, "takeover": True}
    two.push("/chat", "live")
    assert client.poll() == ["live"]


def test_a_process_that_served_only_after_refreshes_writes_checkpoints(redis_server,
                                                                      app_processes):
    """An app whose start-up work keeps it from serving while the directory
    is refreshed (``init_app`` starts the refreshes) still checkpoints its
    clients once it serves; also where gevent did not patch the standard
    library (the refreshes come from a thread of their own)."""
    one = app_processes(redis_server.url, env={"SLOW_START": "1", "UNPATCHED": "1"}, **QUICK)
    wait_up(one)
    client = PollClient(one.base, "/chat")
    assert json.loads(client.poll()[0])["hello"] == client.uuid
    one.push("/chat", "queued")
    checkpointed(redis_server.client(), client.uuid,
                 lambda mailbox: [text for _, text in mailbox["queued"]] == ["queued"])


def test_an_sse_stream_whose_process_died_resumes_elsewhere_once_in_order(redis_server,
                                                                          app_processes):
    """``kill -9`` on the process that holds an SSE client: the
    EventSource comes back to another process with ``Last-Event-ID`` and
    gets, in order and once, what was published while nobody held it, and
    nothing it got before (not what it got after the last checkpoint)."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    r = redis_server.client()
    first = StreamClient(one.base, "/chat", transport="sse")
    assert json.loads(first.next())["hello"] == first.uuid
    one.push("/chat", "before")
    assert first.next() == "before"
    checkpointed(r, first.uuid, lambda mailbox: "before" in [text for _, text in mailbox["kept"]])
    one.push("/chat", "after")  # most likely after the last checkpoint
    assert first.next() == "after"
    kill(one, redis_server)
    first.close()
    for i in range(3):
        two.push("/chat", f"meanwhile{i}")
    second = StreamClient(two.base, "/chat", transport="sse", tracking_id=first.uuid,
                          headers={"Last-Event-ID": first.event_ids[-1]}, http=first.http)
    got = second.take(5)
    assert got[0].startswith(first.uuid + "|")  # the 5.x handshake, again (§2.3)
    assert got[1:4] == ["meanwhile0", "meanwhile1", "meanwhile2"]
    assert json.loads(got[4]) == {"hello": first.uuid, "room": None, "takeover": True}
    two.push("/chat", "live")
    assert second.next() == "live"
    second.close()


def test_a_client_whose_process_died_in_its_first_probe_interval_misses_nothing(
        redis_server, app_processes):
    """A client's first checkpoint is written as it opens, with what
    ``Connected`` sent it: if its process dies before the next refresh (30 s
    here), what was published meanwhile reaches it where it is taken over,
    and nothing it got comes again."""
    one, two = (app_processes(redis_server.url, ATMOSPHERE_REDIS_PROBE_INTERVAL=30, **QUICK)
                for _ in range(2))
    wait_up(one, two)
    r = redis_server.client()
    client = PollClient(one.base, "/chat", acks=True)
    assert json.loads(client.poll()[0])["hello"] == client.uuid
    checkpointed(r, client.uuid, lambda mailbox: len(mailbox["queued"]) == 1)  # its hello
    kill(one, redis_server)
    two.push("/chat", "meanwhile")
    got = on(client, two).poll_until(2)
    assert got[0] == "meanwhile"
    assert json.loads(got[1]) == {"hello": client.uuid, "room": None, "takeover": True}


def test_a_client_whose_process_died_before_its_checkpoint_is_told_of_the_gap(
        redis_server, app_processes):
    """A process that died before it wrote a client's first checkpoint (its
    directory entry has none) took what it held for the client with it:
    the app that takes the client over is told (``MessagesLost``)."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    r = redis_server.client()
    client = PollClient(one.base, "/chat")
    assert json.loads(client.poll()[0])["hello"] == client.uuid
    checkpointed(r, client.uuid, lambda mailbox: True)
    one.process.send_signal(signal.SIGSTOP)  # it writes no more; then it dies
    key = f"atmosphere:client:{client.uuid}"
    entry = json.loads(r.get(key))
    del entry["checkpoint"]
    r.set(key, json.dumps(entry), px=r.pttl(key))
    kill(one, redis_server)
    got = on(client, two).poll_until(2)
    assert [json.loads(text) for text in got] == [
        {"hello": client.uuid, "room": None, "takeover": True},
        {"lost": None, "reason": "takeover"}]


def checkpointed(r, uuid: str, holds) -> dict:
    """Wait until the directory entry of ``uuid`` carries a checkpoint whose
    mailbox ``holds``, and return it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        raw = r.get(f"atmosphere:client:{uuid}")
        checkpoint = json.loads(raw).get("checkpoint") if raw else None
        if checkpoint is not None and holds(checkpoint["mailbox"]):
            return checkpoint
        assert time.monotonic() < deadline, f"no such checkpoint: {checkpoint}"
        time.sleep(0.05)  # written every probe interval: Redis announces nothing


def node_of(process, r) -> str:
    """The name ``process`` goes by among the app's processes."""
    keys = list(r.scan_iter(f"atmosphere:node:{process.process.pid}.*"))
    assert len(keys) == 1, keys
    return keys[0].decode().removeprefix("atmosphere:node:")


def kill(process, redis_server) -> None:
    """``kill -9`` on ``process``, and wait until the other processes can
    tell that it died: Redis saw its connections close. Its liveness key
    is still there (it expires three probe intervals later)."""
    node = node_of(process, redis_server.client())
    process.kill()
    forwarding = Forwarding(redis_server.url, "atmosphere", "tests")
    deadline = time.monotonic() + TIMEOUT
    while forwarding.alive(node):
        assert time.monotonic() < deadline, "the dead process still looks alive"
        time.sleep(0.01)  # Redis announces nothing


def test_forwarding_says_once_that_it_failed_and_once_that_it_works_again(caplog):
    forwarding = Forwarding("redis://127.0.0.1:1/0", "atmosphere", "node")  # never started
    refused = ConnectionRefusedError("Connection refused")
    with caplog.at_level(logging.WARNING, "flask_atmosphere"):
        for _ in range(5):  # both threads retry, each failing again and again
            forwarding.health("writer", refused)
            forwarding.health("reader", refused)
        forwarding.health("writer")
        assert [r.getMessage() for r in caplog.records] == [
            "forwarding requests between processes failed (Connection refused): clients held by"
            " other processes are served here until Redis is back"]
        forwarding.health("reader")
        forwarding.health("reader")
    assert [r.getMessage() for r in caplog.records][1:] == [
        "forwarding requests between processes works again"]


def test_where_redis_refuses_client_a_process_is_dead_once_its_key_expired(caplog):
    """A Redis that refuses ``CLIENT`` (an ACL, a managed Redis that renamed
    it): liveness is the key's TTL alone (three probe intervals), said once."""
    server = RedisServer(None, "--rename-command", "CLIENT", '""')
    one, other = (Forwarding(server.url, "atmosphere", node, refresh_interval=0.2)
                  for node in ("one", "other"))
    try:
        with caplog.at_level(logging.WARNING, "flask_atmosphere"):
            one.start(lambda fn, *args: None, print, print)
            deadline = time.monotonic() + TIMEOUT
            while not other.alive("one"):
                assert time.monotonic() < deadline, "its liveness key was never written"
                time.sleep(0.01)  # written by its reader thread: Redis announces nothing
            assert server.client().get("atmosphere:node:one") == b"1"
            one.stop()
            while other.alive("one"):  # until the key expired: 0.6 s
                assert time.monotonic() < deadline, "its liveness key did not expire"
                time.sleep(0.01)
        assert [r.getMessage() for r in caplog.records] == [
            "Redis refused CLIENT (unknown command 'CLIENT', with args beginning with: 'ID' ): "
            "a process that died is known dead only once its liveness key expired, three probe "
            "intervals later"]
    finally:
        one.stop()
        server.close()


def test_a_process_whose_connection_to_redis_broke_is_alive_again_at_once(redis_server):
    """Its liveness key names its reader's connection: when that connection
    breaks (here Redis closes it), the reader opens a new one and names it
    at once, not at its next refresh (30 s here)."""
    one, other = (Forwarding(redis_server.url, "atmosphere", node, refresh_interval=30)
                  for node in ("one", "other"))
    r = redis_server.client()
    try:
        one.start(lambda fn, *args: None, print, print)
        deadline = time.monotonic() + TIMEOUT
        while not other.alive("one"):
            assert time.monotonic() < deadline, "its liveness key was never written"
            time.sleep(0.01)  # written by its reader thread: Redis announces nothing
        named = r.get("atmosphere:node:one")
        assert r.client_kill_filter(_id=int(named.removeprefix(b"id:"))) == 1
        while r.get("atmosphere:node:one") == named or not other.alive("one"):
            assert time.monotonic() < deadline, "its new connection was not named"
            time.sleep(0.01)
    finally:
        one.stop()


def test_thousands_of_clients_leave_redis_as_it_was(redis_server, app_processes):
    """Rounds of 700 clients that open and never come back: after each,
    once their grace period is over, Redis holds the keys it held before
    them, and its memory does not grow from round to round."""
    one = app_processes(redis_server.url, ATMOSPHERE_GRACE_PERIOD=0.5, **QUICK)
    wait_up(one)
    r = redis_server.client()
    before = set(r.scan_iter())
    memory = []
    for _ in range(3):
        with ThreadPoolExecutor(16) as pool:
            uuids = list(pool.map(lambda _: PollClient(one.base, "/chat").uuid, range(700)))
        assert len(set(uuids)) == 700
        deadline = time.monotonic() + 3 * TIMEOUT
        while set(r.scan_iter()) != before:  # their entries expire or are deleted
            assert time.monotonic() < deadline, set(r.scan_iter()) - before
            time.sleep(0.1)
        memory.append(r.info("memory")["used_memory"])
    assert memory[2] <= memory[0] + 256 * 1024
    assert one.stats()["disconnects"] == {"timeout": 2100}


def test_a_quiet_moment_changes_nothing(redis_server, app_processes):
    """Where gevent patched the standard library (as in these processes),
    a Redis client's sockets belong to the thread that made them: the
    lookups of who holds a client must still work after the app was quiet
    long enough for gevent's own pool to end its idle threads."""
    quick_pool = {"GEVENT_THREADPOOL_IDLE_TASK_TIMEOUT": "0.1"}
    one, two = (app_processes(redis_server.url, env=quick_pool, **QUICK) for _ in range(2))
    wait_up(one, two)
    client = PollClient(one.base, "/chat")
    assert json.loads(on(client, two).poll()[0])["hello"] == client.uuid
    for i in range(3):
        time.sleep(0.5)  # quiet: idle threads of gevent's pool end
        one.push("/chat", f"m{i}")
        assert on(client, (two, one)[i % 2]).poll() == [f"m{i}"]
    assert one.stats()["connects"] == 1 and two.stats().get("connects", 0) == 0


def test_a_request_for_a_client_of_a_dead_process_waits_no_longer_than_its_death_shows(
        redis_server, app_processes):
    """A poll sent on to a holder that was just killed (before Redis saw
    its connections close) is answered once its death shows, within a
    probe interval (1 s here), not after a heartbeat interval (20 s here);
    the next poll takes over (or this one does, if Redis saw it first)."""
    one, two = (app_processes(redis_server.url, ATMOSPHERE_HEARTBEAT_INTERVAL=20,
                              ATMOSPHERE_REDIS_PROBE_INTERVAL=1, ATMOSPHERE_REDIS_TIMEOUT=2)
                for _ in range(2))  # (a lookup that times out would open a client anew)
    wait_up(one, two)
    client = PollClient(one.base, "/chat")
    assert json.loads(client.poll()[0])["hello"] == client.uuid
    checkpointed(redis_server.client(), client.uuid, lambda mailbox: not mailbox["queued"])
    one.kill()
    started = time.monotonic()
    response = on(client, two).http.get(client.url, params=client.query(), timeout=2 * TIMEOUT)
    assert time.monotonic() - started < 8  # 3 s and a probe interval, on a busy machine
    if response.status_code == 200:  # it got there after the liveness key expired: taken over
        hello = json.loads(Decoder(True).feed(response.text)[0])
    else:
        assert response.status_code == 504
        hello = json.loads(client.poll()[0])
    assert hello == {"hello": client.uuid, "room": None, "takeover": True}


def test_a_graceful_stop_hands_its_clients_over_and_loses_no_message(redis_server,
                                                                     app_processes):
    """SIGTERM on the process holding a long-polling client (gunicorn's HUP,
    a rolling deploy): the client's next poll, on another process, takes it
    over (``Connected(takeover=True)``) with what was queued for it there
    and what was published while nobody held it, in order, once."""
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    here, there = ws(one), ws(two)  # witnesses: each process has fanned out what they saw
    client = PollClient(one.base, "/chat", acks=True)
    # Served by `one` through `two`, which keeps that `one` holds it.
    assert json.loads(on(client, two).poll()[0])["hello"] == client.uuid
    for i in range(3):  # queued on `one`: the client does not poll meanwhile
        one.push("/chat", f"queued{i}")
    assert [here.recv() for _ in range(3)] == [f"queued{i}" for i in range(3)]
    assert "handed 2 clients over" in one.stop()
    for i in range(3):  # nobody holds the client now
        two.push("/chat", f"away{i}")
    assert [there.recv() for _ in range(6)][3:] == [f"away{i}" for i in range(3)]
    got = on(client, two).poll_until(7)
    assert got[:6] == [f"queued{i}" for i in range(3)] + [f"away{i}" for i in range(3)]
    assert json.loads(got[6]) == {"hello": client.uuid, "room": None, "takeover": True}
    two.push("/chat", "live")
    assert client.poll() == ["live"]
    assert "its process died" not in two.stop()  # a handover: no warning of a death


def test_a_websocket_of_a_stopped_process_comes_back_elsewhere_with_nothing_lost(
        redis_server, app_processes):
    one, two = (app_processes(redis_server.url, **QUICK) for _ in range(2))
    wait_up(one, two)
    there = ws(two)
    first = ws(one)  # its hello read
    uuid, cookie = first.uuid, first.cookie
    one.push("/chat", "before")
    assert first.recv() == "before"
    one.stop()
    assert first.recv_close()[0] == 1001
    for i in range(3):
        two.push("/chat", f"away{i}")
    assert [there.recv() for _ in range(4)][1:] == [f"away{i}" for i in range(3)]
    query = urlencode(ATMOSPHERE_PARAMS | {"X-Atmosphere-tracking-id": uuid})
    second = WSClient(two.url("/chat") + "?" + query, track=True, cookie=cookie)
    assert second.recv().startswith(uuid + "|")  # the 5.x handshake (§2.3)
    assert [second.recv() for _ in range(3)] == [f"away{i}" for i in range(3)]
    assert json.loads(second.recv()) == {"hello": uuid, "room": None, "takeover": True}
    two.push("/chat", "live")
    assert second.recv() == "live"


@pytest.fixture
def redis_app(live, recorder, redis_server):
    """(server, atmosphere) of an app served in this process with the Redis
    backplane, refreshed every 30 s, whose hub serves a client already."""
    app, atmosphere = make_app(recorder, ATMOSPHERE_BACKPLANE=redis_server.url,
                               ATMOSPHERE_REDIS_PROBE_INTERVAL=30)
    server = live(app)
    PollClient(f"http://127.0.0.1:{server.port}", "/quiet")  # the hub is the broadcaster's now
    yield server, atmosphere
    atmosphere.remote.stop()
    atmosphere.broadcaster.backplane.stop()


def test_a_request_sent_on_is_written_at_once_not_at_the_next_refresh(redis_app, redis_server):
    """The writer thread is woken once the hub's ready greenlets ran (one
    wake for a burst of requests), or at once from another thread: either
    way the request is in Redis long before the next refresh (30 s)."""
    server, atmosphere = redis_app
    forwarding = atmosphere.remote.forwarding
    r, stream = redis_server.client(), forwarding.inbox("other")
    last = "0-0"
    for send in (server.call, lambda fn, *args: fn(*args)):  # on the hub, then from this thread
        send(forwarding.send, "other", {"kind": "poll"})
        sent = time.monotonic()
        found = r.xread({stream: last}, block=TIMEOUT * 1000)
        assert found and time.monotonic() - sent < TIMEOUT, "written at the next refresh only"
        last = found[0][1][-1][0]


def test_a_burst_of_requests_for_a_process_is_written_as_one_entry(redis_app, redis_server):
    """What the hub's greenlets send to one process before the writer wakes
    is one ``XADD``, in order: the writer's and the reader's cost goes with
    the bursts, not with each request."""
    server, atmosphere = redis_app
    forwarding = atmosphere.remote.forwarding
    r, stream = redis_server.client(), forwarding.inbox("burst")

    def burst() -> None:
        for i in range(5):
            forwarding.send("burst", {"i": i})
    server.call(burst)
    found = r.xread({stream: "0-0"}, block=TIMEOUT * 1000)
    assert found, "not written"
    assert [[m["i"] for m in json.loads(fields[b"m"])] for _, fields in found[0][1]] \
        == [[0, 1, 2, 3, 4]]


def test_a_client_is_in_the_directory_before_its_first_answer(redis_app, redis_server):
    """The answer that opens a client goes out once its directory entry is
    in Redis: its next request, on any process, finds it held, instead of
    opening it a second time (two objects, two ``Connected``). Redis is made
    slow to write (``CLIENT PAUSE … WRITE``: reads go on) while it opens."""
    server, atmosphere = redis_app
    r = redis_server.client()
    r.client_pause(500, all=False)  # writes wait 0.5 s
    try:
        client = PollClient(f"http://127.0.0.1:{server.port}", "/quiet")
        entry = r.get(f"atmosphere:client:{client.uuid}")
    finally:
        r.client_unpause()
    assert entry is not None, "answered before it was in the directory"
    assert json.loads(entry)["node"] == atmosphere.remote.forwarding.node


def test_requests_waiting_on_a_process_share_one_lookup_of_its_liveness(redis_app):
    """When a process's liveness is due to be looked up again, the requests
    for its clients that come meanwhile wait for that one lookup, instead of
    each asking Redis (a burst of polls asked it a hundred times)."""
    server, atmosphere = redis_app
    remote = atmosphere.remote
    asked = []
    alive = remote.forwarding.alive

    def counted(node: str) -> bool:
        asked.append(node)
        return alive(node)
    remote.forwarding.alive = counted

    def burst() -> list:
        return [g.get() for g in gevent.joinall([gevent.spawn(remote._alive, "other")
                                                 for _ in range(20)], raise_error=True)]
    assert server.call(burst) == [False] * 20  # no such process
    assert asked == ["other"]


def test_a_process_trims_the_requests_it_has_read(redis_server):
    """Its streams hold what it has not read yet, not the last
    ``STREAM_MAX_LENGTH`` entries: a reader that lagged that far behind
    lost the oldest, and the cap is now a bound for a process that stopped
    reading (``TRIM_EVERY`` entries read, then trimmed)."""
    from flask_atmosphere.backplane import forwarding as module
    one = Forwarding(redis_server.url, "atmosphere", "one", refresh_interval=30)
    got: list[dict] = []
    lost: list[int] = []
    r, stream = redis_server.client(), one.inbox("one")
    try:
        one.start(lambda fn, *args: fn(*args), got.extend, print, on_lost=lost.append)
        count = 3 * module.TRIM_EVERY
        pipe = r.pipeline(transaction=False)  # an entry each (a writer batches a burst)
        for i in range(count):
            pipe.xadd(stream, {"m": json.dumps({"i": i})})
        pipe.execute()
        deadline = time.monotonic() + TIMEOUT
        # At most what was read since the last trim (under TRIM_EVERY, plus a
        # read's worth and the whole node that holds the last entry read):
        while len(got) < count or r.xlen(stream) >= 2 * module.TRIM_EVERY:
            assert time.monotonic() < deadline, (len(got), r.xlen(stream))
            time.sleep(0.01)  # a thread of its own: nothing to await
        assert [m["i"] for m in got] == list(range(count))  # all of them, in order
        assert not lost  # (read in full batches: behind, but nothing gone)
    finally:
        one.stop()


def test_a_process_that_fell_behind_past_the_cap_says_what_it_lost(redis_server, caplog):
    """Entries that the cap removed before the process read them (it fell
    more than ``STREAM_MAX_LENGTH`` entries behind) are logged and counted,
    not lost without a word."""
    caplog.set_level(logging.ERROR, "flask_atmosphere.backplane")
    one = Forwarding(redis_server.url, "atmosphere", "one", refresh_interval=30)
    r, stream = redis_server.client(), one.inbox("one")
    pipe = r.pipeline(transaction=False)
    for i in range(300):  # capped at 100 by the writers (exactly here): 200 gone unread
        pipe.xadd(stream, {"m": json.dumps({"i": i})}, maxlen=100, approximate=False)
    pipe.execute()
    got: list[dict] = []
    lost: list[int] = []
    try:
        one.start(lambda fn, *args: fn(*args), got.extend, print, on_lost=lost.append)
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 100:
            assert time.monotonic() < deadline, len(got)
            time.sleep(0.01)  # a thread of its own: nothing to await
        assert [m["i"] for m in got] == list(range(200, 300))
        assert lost == [200]
        assert [record.getMessage().split(" (")[0] for record in caplog.records] \
            == [f"200 entries of {stream}"]
    finally:
        one.stop()
