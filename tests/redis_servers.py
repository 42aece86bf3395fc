"""Real ``redis-server`` processes for the tests, on free ports of 127.0.0.1,
with nothing kept on disk: started, stopped, killed, paused and restarted
as a test needs, and always stopped at the end."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis

TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000, which must stay
    below 65536) is free too: a cluster node cannot start without both."""
    while True:
        with socket.socket() as sock, socket.socket() as bus:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port + 10000 > 65535:
                continue
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port


class RedisServer:
    """One ``redis-server`` on ``port`` (a free one by default)."""

    def __init__(self, port: int | None = None, *extra: str):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)",
                        pytrace=False)
        self.port = port or free_port()
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "redis.log")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=TIMEOUT)

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", self.log, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while True:  # until it answers (it has no other way to say it is ready)
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    with open(self.log, errors="replace") as log:
                        pytest.fail(f"redis-server on port {self.port} exited: {log.read()[-800:]}",
                                    pytrace=False)
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def kill(self) -> None:
        """``kill -9``: everything it held is gone."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(TIMEOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.resume()
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    """A fresh ``redis-server`` for the test, stopped after it."""
    server = RedisServer()
    yield server
    server.close()


class RedisCluster:
    """A local Redis Cluster of ``size`` masters (no replicas), each a real
    ``redis-server`` on a free port, its slots spread by ``redis-cli --cluster
    create``; stopped by :meth:`close`."""

    def __init__(self, size: int = 3):
        self.nodes = [RedisServer(free_cluster_port(), "--cluster-enabled", "yes", "--cluster-config-file",
                                  "nodes.conf", "--cluster-node-timeout", "2000")
                      for _ in range(size)]
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{node.port}" for node in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        for node in self.nodes:  # until every node agrees the cluster is whole (polled: it tells nobody)
            while node.client().cluster("info").get("cluster_state") != "ok":
                assert time.monotonic() < deadline, "the cluster did not form"
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def redis_cluster():
    """A fresh three-node Redis Cluster for the test."""
    cluster = RedisCluster()
    yield cluster
    cluster.close()
