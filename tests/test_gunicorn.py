"""gunicorn with flask-atmosphere's worker, as the README gives it: every
transport served, and SIGTERM says goodbye to the clients and ends the
worker at once, held polls and open streams included; with several workers
and no backplane, each warns."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from http_clients import PollClient, StreamClient
from redis_servers import free_port

ROOT = Path(__file__).parent.parent


@pytest.fixture
def gunicorn():
    """``start(workers)``: gunicorn serving ``demo:app`` with the worker on a
    free port; ``(process, port)``; killed at the end if still running."""
    started = []

    def start(workers: int = 1):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "flask_atmosphere.gunicorn.Worker",
             "-w", str(workers), "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "30",
             "demo:app"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        started.append(process)
        lines = []
        for line in process.stderr:  # until a worker booted
            lines.append(line)
            if "Booting worker" in line:
                break
        return process, port, lines

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def query():
    return "&".join(f"{k}={v}" for k, v in ATMOSPHERE_PARAMS.items())


def test_every_transport_and_a_goodbye_on_sigterm(gunicorn):
    process, port, _ = gunicorn()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT
    while True:  # the worker boots after the master said so: try until it answers
        try:
            ws = WSClient(f"ws://127.0.0.1:{port}/the-chat?{query()}", track=True, protocol=True)
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    poller = PollClient(base, "/the-chat")
    sse = StreamClient(base, "/the-chat", "sse")
    ws.send(json.dumps({"author": "ada", "message": "hi"}))
    for read in (lambda: poller.poll_until(1)[-1], sse.next):
        seen = [read()]
        while "hi" not in seen[-1]:
            seen.append(read())
    # A held poll and an open stream: the worker still stops at once.
    held = threading.Thread(target=poller.poll, daemon=True)
    held.start()
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert ws.recv_close() == (1001, "server shutdown")  # a goodbye
    assert process.wait(TIMEOUT) == 0
    assert time.monotonic() - started < 5 + 1


def test_several_workers_without_a_backplane_warn(gunicorn):
    process, _, lines = gunicorn(workers=2)
    warned = sum("2 workers without a backplane" in line for line in lines)
    for line in process.stderr:  # once per worker, as each loads the app
        warned += "2 workers without a backplane" in line
        if warned == 2:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=TIMEOUT)
    assert warned == 2 and "without a backplane" not in rest
