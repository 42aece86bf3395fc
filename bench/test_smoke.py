"""The harness works end to end, at toy scale: every server relays every
message to every receiver once and in order, over WebSocket and long-polling.

Not part of the test suite (its testpaths is ``tests/``); run it with
``python -m pytest bench/test_smoke.py``. No timing is asserted.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import POLLING_SERVERS, SERVERS, run_once

ROOT = Path(__file__).resolve().parent.parent


def _check(result: dict, clients: int, messages: int) -> None:
    assert result["connect"]["failures"] == 0
    assert result["not_ready"] == 0
    assert result["sent"] == messages
    assert result["deliveries"] == clients * messages
    assert result["lost"] == 0
    assert result["duplicates"] == 0
    assert result["out_of_order"] == 0
    assert result["errors"] == 0
    assert result["server_cpu_s"] >= 0
    assert result["latency_ms"]["p50"] is not None


@pytest.mark.parametrize("server", list(SERVERS))
def test_websocket_fixed_rate(server, tmp_path):
    result = run_once(server, clients=5, messages=20, rate=100, verbose=False,
                      idle_timeout=3, max_seconds=30, log_dir=tmp_path)
    _check(result, 5, 20)
    assert result["rss"]["after_kib"] > 0


@pytest.mark.parametrize("server", list(SERVERS))
def test_websocket_window(server, tmp_path):
    result = run_once(server, clients=5, messages=30, rate=0, window=3, verbose=False,
                      idle_timeout=3, max_seconds=30, log_dir=tmp_path)
    _check(result, 5, 30)


@pytest.mark.parametrize("server", POLLING_SERVERS)
def test_long_polling(server, tmp_path):
    result = run_once(server, transport="poll", clients=4, messages=20, rate=0, window=4,
                      verbose=False, idle_timeout=5, max_seconds=30, log_dir=tmp_path)
    _check(result, 4, 20)
    assert result["polls"] > 0


def test_text_relays_keep_the_message_unchanged(tmp_path):
    """The load generator reads only the stamp; check once that a text relay
    hands over the exact bytes."""
    from bench.harness import Server
    import websocket  # websocket-client, from the project's test extra

    for name in ("raw", "atmosphere"):
        server = Server(name, None, tmp_path / f"{name}.log")
        try:
            url = f"ws://127.0.0.1:{server.port}/the-chat"
            receiver = websocket.create_connection(url, timeout=5)
            sender = websocket.create_connection(url, timeout=5)
            message = json.dumps({"seq": 1, "t": 2.5, "message": "é" * 20})
            for _ in range(50):  # until the receiver is registered
                sender.send(message)
                receiver.settimeout(0.2)
                try:
                    assert receiver.recv() == message
                    break
                except websocket.WebSocketTimeoutException:
                    continue
            else:
                pytest.fail(f"{name} relayed nothing")
            receiver.close()
            sender.close()
        finally:
            server.stop()


def test_cli_quick_compare(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "compare", "-q", "--servers", "raw,atmosphere",
         "--clients", "3", "--messages", "10", "--rate", "50", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| raw |" in proc.stdout and "| atmosphere |" in proc.stdout
    saved = json.loads(out.read_text())
    assert [r["server"] for r in saved["results"]] == ["raw", "atmosphere"]
    assert all(r["lost"] == 0 for r in saved["results"])


@pytest.mark.parametrize("server", ["raw", "atmosphere", "socketio"])
def test_connect_storm(server, tmp_path):
    """``--storm``: every receiver connects and is registered, and the
    server's CPU time per connection is counted."""
    result = run_once(server, storm=True, clients=30, messages=0, connect_concurrency=10,
                      verbose=False, log_dir=tmp_path)
    connect = result["connect"]
    assert result["storm"] is True
    assert connect["failures"] == 0
    assert result["not_ready"] == 0
    assert connect["probes"] >= 1 and connect["probe_frames"] >= 30
    assert connect["per_s"] > 0 and connect["ready_per_s"] > 0
    assert 0 < connect["wall_s"] <= connect["ready_s"]
    assert connect["server_cpu_us_ready_raw"] >= connect["server_cpu_us_handshakes"] >= 0
    assert connect["probe_calibration"]["frames"] >= 30
    assert result["errors"] == 0


def test_cli_storm(tmp_path):
    out = tmp_path / "storm.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "storm", "-q", "--servers", "raw,atmosphere@HEAD",
         "--clients", "20", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| raw |" in proc.stdout and "| atmosphere@HEAD |" in proc.stdout
    assert "wall s: handshakes (ready)" in proc.stdout
    saved = json.loads(out.read_text())
    runs = saved["storms"]["20"]["runs"]
    assert list(runs) == ["raw", "atmosphere@HEAD"]
    assert all(r["connect"]["failures"] == 0 and r["not_ready"] == 0
               for rs in runs.values() for r in rs)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_cli_backplane(tmp_path):
    """``backplane --quick``: the memory and the Redis backplane, one process
    and two, relay every message to every receiver once and in order; the
    Redis server's CPU time is counted apart, each process's too."""
    out = tmp_path / "backplane.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "backplane", "-q", "--quick", "--only", "fanout",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "| memory | 1 |" in proc.stdout and "| redis-2p | 2 |" in proc.stdout
    runs = json.loads(out.read_text())["scenarios"]["fanout"]["runs"]
    assert list(runs) == ["memory", "redis", "redis-2p"]
    for name, (result,) in runs.items():
        _check(result, 20, 60)
        assert ("aux_cpu_s" in result) == (name != "memory")
    assert len(runs["redis-2p"][0]["server_cpu_s_each"]) == 2


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_cli_backplane_longpoll_without_sticky_sessions(tmp_path):
    """``backplane --only longpoll``: long-polling receivers whose polls go
    to a process drawn at random (of three), or always to the one that does
    not hold their client, get every message once and in order; the polls
    and what each cost are counted."""
    out = tmp_path / "longpoll.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "backplane", "-q", "--quick", "--only", "longpoll",
         "--setups", "redis-2p,redis-2p-away,redis-3p", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "CPU µs/poll (servers + Redis)" in proc.stdout
    runs = json.loads(out.read_text())["scenarios"]["longpoll"]["runs"]
    assert list(runs) == ["redis-2p", "redis-2p-away", "redis-3p"]
    for name, (result,) in runs.items():
        _check(result, 10, 60)
        assert result["polls_run"] > 0 and result["aux_cpu_us_per_poll"] is not None
