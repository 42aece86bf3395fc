"""gunicorn with flask-atmosphere's worker, as the README gives it: every
transport served, and SIGTERM says goodbye to the clients and ends the
worker at once, held polls and open streams included; with several workers
and no backplane, each warns."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from http_clients import PollClient, StreamClient
from redis_servers import free_port, redis_server  # noqa: F401 (a fixture)

ROOT = Path(__file__).parent.parent


@pytest.fixture
def gunicorn():
    """``start(workers)``: gunicorn serving ``demo:app`` with the worker on a
    free port; ``(process, port)``; killed at the end if still running."""
    started = []

    def start(workers: int = 1, *options: str, booted: int = 1, **env: str):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "flask_atmosphere.gunicorn.Worker",
             "-w", str(workers), "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "30",
             *options, "demo:app"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT), **env))
        started.append(process)
        lines = []
        for line in process.stderr:  # until `booted` workers booted
            lines.append(line)
            booted -= "Booting worker" in line
            if booted == 0:
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
    answers: list[int] = []
    held = threading.Thread(target=lambda: answers.append(poller.http.get(
        poller.url, params=poller.query(), timeout=TIMEOUT).status_code), daemon=True)
    held.start()
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert ws.recv_close() == (1001, "server shutdown")  # a goodbye
    assert process.wait(TIMEOUT) == 0
    assert time.monotonic() - started < 5 + 1
    held.join(TIMEOUT)
    # Answered as it ends (200), or, if it got there as the worker stopped, told to come back.
    assert answers in ([200], [503])


def test_several_workers_without_a_backplane_warn(gunicorn):
    """Once per worker, in gunicorn's error log format (time, pid, level):
    the app configured no logging of its own."""
    process, _, lines = gunicorn(workers=2)
    warned = [line for line in lines if "2 workers without a backplane" in line]
    for line in process.stderr:  # once per worker, as each loads the app
        if "2 workers without a backplane" in line:
            warned.append(line)
        if len(warned) == 2:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=TIMEOUT)
    assert len(warned) == 2 and "without a backplane" not in rest
    logged = re.compile(r"^\[[^]]+\] \[\d+\] \[WARNING\] 2 workers without a backplane")
    assert all(logged.match(line) for line in warned), warned


@pytest.mark.parametrize("preload", [False, True], ids=["app per worker", "--preload"])
def test_long_polling_on_three_workers_without_sticky_sessions(gunicorn, redis_server, preload):
    """``gunicorn -w 3`` on one port with the Redis backplane: every request
    on a new connection, so each lands on whichever worker accepts it.
    Every message reaches the other client once, in the order sent; each
    client joins once. With ``--preload`` the app (and its backplane) is
    made before the fork: each worker must still have its own, and the
    master, which serves nothing, starts none (a thread running at a fork
    once left a worker a half-imported module)."""
    process, port, _ = gunicorn(3, *(["--preload"] if preload else []), booted=3,
                                FLASK_ATMOSPHERE_BACKPLANE=redis_server.url,
                                FLASK_ATMOSPHERE_REDIS_PROBE_INTERVAL="0.5")
    r = redis_server.client()
    deadline = time.monotonic() + TIMEOUT
    while len(nodes := sorted(r.scan_iter("atmosphere:node:*"))) < 3:
        # every worker: liveness keys are pid.random
        assert time.monotonic() < deadline, f"not every worker reached Redis: {nodes}"
        time.sleep(0.05)
    assert not any(node.startswith(f"atmosphere:node:{process.pid}.".encode())
                   for node in nodes)  # the master is no node
    base = f"http://127.0.0.1:{port}"

    def new_connection_each_time() -> requests.Session:
        http = requests.Session()
        http.headers["Connection"] = "close"
        return http

    reader = PollClient(base, "/the-chat?name=reader", http=new_connection_each_time())
    writer = PollClient(base, "/the-chat?name=writer", http=new_connection_each_time())
    for i in range(60):
        assert writer.post(json.dumps({"author": "writer", "message": f"m{i}"})
                           ).status_code == 200
    lines: list[dict] = []
    while len([line for line in lines if line["author"] == "writer"]) < 61:
        lines += [json.loads(message) for message in reader.poll()]
    assert [line["message"] for line in lines] == \
        ["joined the room"] * 2 + [f"m{i}" for i in range(60)]  # its own join, the writer's
    # The requests did land on other workers than the clients' holders.
    forwarded = sum(r.xlen(key) for key in r.scan_iter("atmosphere:{node:*}:inbox"))
    assert forwarded > 0
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 0


def test_a_reload_with_hup_hands_the_clients_over_to_the_new_worker(gunicorn, redis_server):
    """``kill -HUP`` on gunicorn's master (a deploy): a new worker boots,
    the old one stops and hands its clients over; a long-polling client's
    next poll, on the new worker, gets what was queued for it and what was
    published meanwhile, in order, once (and the demo announces no second
    join: it knows a takeover)."""
    process, port, _ = gunicorn(1, FLASK_ATMOSPHERE_BACKPLANE=redis_server.url,
                                FLASK_ATMOSPHERE_REDIS_PROBE_INTERVAL="0.5")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT
    while True:  # the worker boots after the master said so
        try:
            reader = PollClient(base, "/the-chat?name=reader", acks=True)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert json.loads(reader.poll()[0])["message"] == "joined the room"
    writer = PollClient(base, "/the-chat?name=writer")
    writer.post(json.dumps({"author": "writer", "message": "before"}))
    process.send_signal(signal.SIGHUP)
    exiting = booted = False
    for line in process.stderr:  # the new worker boots, then the old one exits
        booted = booted or "Booting worker" in line
        exiting = exiting or "Worker exiting" in line
        if booted and exiting:
            break
    writer.post(json.dumps({"author": "writer", "message": "during"}))  # taken over too
    lines = [json.loads(text) for text in reader.poll_until(3)]
    assert [(line["author"], line["message"]) for line in lines] == [
        ("writer", "joined the room"), ("writer", "before"), ("writer", "during")]
    writer.post(json.dumps({"author": "writer", "message": "after"}))
    assert json.loads(reader.poll()[0])["message"] == "after"
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 0
