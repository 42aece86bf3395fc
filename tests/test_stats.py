"""``Atmosphere.stats()`` as an operator reads it: clients per route and per
transport, messages in and out, deliveries, disconnects by reason; and the
same figures served as JSON and in the Prometheus text format."""
from __future__ import annotations

import json
import subprocess
import sys

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import TIMEOUT, WSClient
from http_clients import PollClient, StreamClient
from test_websocket import make_app

PATHS = {"ATMOSPHERE_STATS_URL_PATH": "/_atmosphere/stats",
         "ATMOSPHERE_METRICS_URL_PATH": "/_atmosphere/metrics"}


def test_clients_per_route_and_transport_and_what_they_did(live, recorder):
    app, atmosphere = make_app(recorder, ATMOSPHERE_GRACE_PERIOD=0.2, **PATHS)
    server = live(app)
    base = f"http://127.0.0.1:{server.port}"
    a = WSClient(server.url("/chat"))
    b = WSClient(server.url("/rooms/blue"))
    for ws in (a, b):
        ws.recv()  # its hello: Connected ran
    poller = PollClient(base, "/chat")
    stream = StreamClient(base, "/quiet", transport="sse")
    server.wait_until(lambda: len(atmosphere.registry) == 4)

    a.send(json.dumps({"cmd": "broadcast", "to": "everyone", "msg": "hi"}))  # a, b: under /
    assert a.recv() == "hi"

    stats = server.call(atmosphere.stats)
    assert stats["clients"] == {
        "total": 4,
        "by_route": {"/chat": 2, "/rooms/<room>": 1, "/quiet": 1},
        "by_transport": {"websocket": 2, "long-polling": 1, "sse": 1}}
    assert stats["messages_in"] == 1
    assert stats["broadcasts"] == 1
    assert stats["deliveries"] >= 2 + 1  # the broadcast to /chat's two clients, the hellos
    assert stats["sends"] == 2 + 1       # a hello per client that says hello (not /quiet's)

    a.close()
    poller.close()
    stream.close()  # gone without a word: its grace period runs out
    b.send(json.dumps({"cmd": "close", "code": 4000, "reason": "kicked"}))
    assert b.recv_close() == (4000, "kicked")
    server.wait_until(lambda: len(atmosphere.registry) == 0)
    assert server.call(atmosphere.stats)["disconnects"] == {
        "client_closed": 2, "timeout": 1, "app_closed": 1}

    served = requests.get(base + "/_atmosphere/stats", timeout=TIMEOUT).json()
    assert served["disconnects"] == {"client_closed": 2, "timeout": 1, "app_closed": 1}
    assert served["clients"]["total"] == 0 and served["backplane"]["kind"] == "memory"


def test_prometheus_metrics(live, recorder):
    app, atmosphere = make_app(recorder, **PATHS)
    server = live(app)
    ws = WSClient(server.url("/chat"))
    ws.recv()
    response = requests.get(f"http://127.0.0.1:{server.port}/_atmosphere/metrics",
                            timeout=TIMEOUT)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text)
               for s in family.samples}
    assert samples[("atmosphere_clients", (("route", "/chat"), ("transport", "websocket")))] == 1
    assert samples[("atmosphere_connects_total", ())] == 1
    assert samples[("atmosphere_messages_lost_total", ())] == 0  # there from the start
    assert samples[("atmosphere_backplane_up", ())] == 1


def test_nothing_is_served_unless_asked(live, recorder):
    app, _ = make_app(recorder)
    server = live(app)
    for path in PATHS.values():
        assert requests.get(f"http://127.0.0.1:{server.port}{path}",
                            timeout=TIMEOUT).status_code == 404


def test_metrics_without_prometheus_client_stop_init_app_naming_the_key():
    script = """
import sys
sys.modules["prometheus_client"] = None  # not installed
from flask import Flask
from flask_atmosphere import Atmosphere, ConfigError
app = Flask(__name__)
app.config["ATMOSPHERE_METRICS_URL_PATH"] = "/metrics"
try:
    Atmosphere(app)
except ConfigError as error:
    print(error)
"""
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, timeout=TIMEOUT).stdout
    assert "ATMOSPHERE_METRICS_URL_PATH needs prometheus_client" in printed
