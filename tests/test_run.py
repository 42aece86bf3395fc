"""``atmosphere.run`` in a process of its own: serving, and a clean stop on
SIGTERM or SIGINT."""
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def demo_process():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "demo", "--port", str(port)],
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:  # wait for the server to say it listens
            if "serving on" in line:
                break
        else:
            raise AssertionError(f"the demo did not start (exit {process.wait()})")
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_closes_every_client_cleanly_and_the_process_exits(demo_process, signum):
    process, port = demo_process
    url = f"ws://127.0.0.1:{port}/the-chat?" + "&".join(f"{k}={v}" for k, v in ATMOSPHERE_PARAMS.items())
    client = WSClient(url, track=True, protocol=True)
    assert json.loads(client.recv())["message"] == "joined the room"
    started = time.monotonic()
    process.send_signal(signum)
    assert client.recv_close() == (1001, "server shutdown")
    assert process.wait(TIMEOUT) == 0
    assert time.monotonic() - started < 5 + 1
    said = process.stderr.read()  # what it logged after it started, to its exit
    assert "Traceback" not in said and "Exception ignored" not in said, said
    with pytest.raises(OSError):  # no longer listening
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


def test_a_busy_port_is_one_line_and_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "demo", "--port", str(port)],
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"cannot serve on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
