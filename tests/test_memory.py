"""The byte bounds are what memory actually pays: a mailbox filled to
``ATMOSPHERE_MAILBOX_MAX_BYTES``, or a history to ``ATMOSPHERE_HISTORY_MAX_BYTES``,
grows the process by that much, within 1.5x either way, for small messages
and big ones (one copy of each message, and what holding it costs, counted)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from http_clients import StreamClient
from test_websocket import make_app

#: Measured in a fresh interpreter, so that nothing else of the tests' grows meanwhile.
MEASURE = textwrap.dedent("""
    import gc, json, os, sys
    from flask_atmosphere.mailbox import Mailbox, Outbound, OVERHEAD

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    size, bound = int(sys.argv[1]), 32 << 20
    queue = Mailbox(10 ** 9, bound)
    gc.collect()
    before = rss()
    i = 0
    while queue.put(Outbound((str(i) + "x" * size)[:size])):  # unique messages: none shared
        i += 1
    queued = rss() - before
    history = Mailbox(10 ** 9, bound, history_messages=10 ** 9, history_bytes=bound)
    history.keep = True
    before = rss()
    while history.kept_bytes + size + OVERHEAD <= bound:
        history.put(Outbound((str(i) + "y" * size)[:size]))
        history.take(0)
        history.written()
        i += 1
    print(json.dumps({"queue": queued / bound, "history": (rss() - before) / bound}))
""")


@pytest.mark.parametrize("size", [20, 4096])
def test_the_byte_bounds_are_the_memory_paid(size):
    done = subprocess.run([sys.executable, "-c", MEASURE, str(size)], capture_output=True,
                          text=True, check=True, timeout=120)
    ratios = json.loads(done.stdout)
    for what, ratio in ratios.items():
        assert 1 / 1.5 <= ratio <= 1.5, (what, ratio)


def test_a_fast_sse_reader_keeps_no_more_history_than_its_bound(live, recorder):
    app, atmosphere = make_app(recorder, ATMOSPHERE_HISTORY_MAX_BYTES=256 * 1024)
    server = live(app)
    stream = StreamClient(f"http://127.0.0.1:{server.port}", "/quiet", "sse")
    message = "z" * 4096

    def send():
        for _ in range(1000):
            atmosphere.broadcast("/quiet", message)
    server.call(send)
    assert stream.take(1000) == [message] * 1000
    mailbox = server.call(lambda: atmosphere.registry.get(stream.uuid).mailbox)
    assert 0 < mailbox.kept_bytes <= 256 * 1024
    stream.close()
