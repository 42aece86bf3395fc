"""Several real processes of one app, sharing a Redis backplane
(``backplane_app.py``), for the scale-out tests; stopped at the end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

import conftest

HERE = Path(__file__).parent
TIMEOUT = 10


class AppProcess:
    """``python tests/backplane_app.py`` with ``url`` and ``config``, and
    ``env`` added to its environment."""

    def __init__(self, url: str, env: dict[str, str] | None = None, **config: object):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]),
                   **(env or {}))
        args = [f"{key}={json.dumps(value)}" for key, value in config.items()]
        self.process = subprocess.Popen([sys.executable, str(HERE / "backplane_app.py"), url, *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                        text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the app did not start: {line!r} {self.process.stderr.read()}")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        # What it logs is read as it comes: a pipe left full would stop it.
        self._log: list[str] = []
        self._reader = threading.Thread(target=self._log.extend, args=(self.process.stderr,),
                                        daemon=True)
        self._reader.start()

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def push(self, path: str, msg: str) -> None:
        requests.get(self.base + "/push", params={"path": path, "msg": msg},
                     timeout=TIMEOUT).raise_for_status()

    def stats(self) -> dict:
        return requests.get(self.base + "/stats", timeout=TIMEOUT).json()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(TIMEOUT)

    def stop(self) -> str:
        """Stop it; return what it logged."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(TIMEOUT)
        return "".join(self._log)


@pytest.fixture
def app_processes():
    """``start(url, **config)`` starts one more process of the app; all are stopped after."""
    started: list[AppProcess] = []

    def start(url: str, env: dict[str, str] | None = None, **config: object) -> AppProcess:
        process = AppProcess(url, env, **config)
        started.append(process)
        return process

    yield start
    while conftest._open_clients:  # a client that does not read holds up a clean stop
        conftest._open_clients.pop().ws.abort()
    for process in started:
        process.stop()
