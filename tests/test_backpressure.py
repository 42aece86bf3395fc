"""A publisher that never yields cannot fill the mailboxes of clients that
are reading: it waits while one is past half its bound (cooperative
back-pressure), and only a client that stays there for
``ATMOSPHERE_WRITE_TIMEOUT`` is cut, as a slow consumer."""
from __future__ import annotations

import threading

import gevent

from conftest import ATMOSPHERE_PARAMS, WSClient
from http_clients import PollClient, StreamClient
from test_websocket import make_app

COUNT = 2000
BIG = 4 * 1024
BOUND = 2 * 1024 * 1024  # the mailbox bound in bytes: the burst is four times as big


def test_a_burst_that_never_yields_cuts_no_client_that_reads(live, recorder):
    app, atmosphere = make_app(recorder, ATMOSPHERE_MAILBOX_MAX_BYTES=BOUND)
    server = live(app)
    base = f"http://127.0.0.1:{server.port}"
    sockets = [WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS), track=True, protocol=True,
                        skip_utf8_validation=True)  # websocket-client checks in Python: slow
               for _ in range(4)]
    streams = [StreamClient(base, "/quiet", transport) for transport in ("streaming", "sse")]
    poller = PollClient(base, "/quiet")
    got: dict[str, list[str]] = {}

    def read(name, take):
        got[name] = [take()[:8] for _ in range(COUNT)]

    def poll_all():
        messages: list[str] = []
        while len(messages) < COUNT:
            messages += [m[:8] for m in poller.poll()]
        got["long-polling"] = messages

    readers = [threading.Thread(target=read, args=(f"ws{i}", ws.recv)) for i, ws in enumerate(sockets)]
    readers += [threading.Thread(target=read, args=(s.transport, s.next)) for s in streams]
    readers.append(threading.Thread(target=poll_all))
    for reader in readers:
        reader.start()

    def burst():  # no yield of its own between two broadcasts
        for i in range(COUNT):
            atmosphere.broadcast("/quiet", f"{i:07d}".ljust(BIG, "."))
    server.loop.run_callback_threadsafe(gevent.spawn, burst)
    for reader in readers:
        reader.join(120)
    expected = [f"{i:07d}." for i in range(COUNT)]
    assert {name: messages == expected for name, messages in got.items()} == \
        {name: True for name in ("ws0", "ws1", "ws2", "ws3", "streaming", "sse", "long-polling")}
    assert server.call(atmosphere.stats).get("slow_consumers", 0) == 0
