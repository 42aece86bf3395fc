"""Shared fixtures: a real server on 127.0.0.1 in a thread of its own (with
its own gevent hub), and real WebSocket clients (websocket-client) talking to it."""
from __future__ import annotations

import queue
import socket
import struct
import threading
from typing import Any, Callable
from urllib.parse import urlencode

import gevent
import pytest
import websocket
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from flask_atmosphere.server import AtmosphereServer

TIMEOUT = 10  # seconds: the most any single wait in a test may take

BROWSER_MODULES = ("test_browser_", "test_compat_")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that drive Chromium ``browser`` (``-m "not browser"``)."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.startswith(BROWSER_MODULES):
            item.add_marker(pytest.mark.browser)


class LiveServer:
    """Serves ``app`` on a free port of 127.0.0.1 from a background thread:
    with ``atmosphere.run``'s server, or with ``plain`` pywsgi and
    gevent-websocket's own handler (as gunicorn's worker serves it)."""

    def __init__(self, app, plain: bool = False):
        self.app = app
        self.plain = plain
        self.atmosphere = app.extensions["atmosphere"]
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)
        self._thread.start()
        assert self._ready.wait(TIMEOUT), "the server did not start"

    def _run(self):
        if self.plain:
            self.server = WSGIServer(("127.0.0.1", 0), self.app, handler_class=WebSocketHandler,
                                     log=None)
        else:
            self.server = AtmosphereServer(self.app, "127.0.0.1", 0)
        self.server.start()
        self.loop = gevent.get_hub().loop
        self._stop = Event()
        self._ready.set()
        self._stop.wait()

    @property
    def port(self) -> int:
        return self.server.server_port if self.plain else self.server.port

    def url(self, path: str, scheme: str = "ws", **params: Any) -> str:
        query = ("?" + urlencode(params)) if params else ""
        return f"{scheme}://127.0.0.1:{self.port}{path}{query}"

    def call(self, fn: Callable, *args) -> Any:
        """Run ``fn(*args)`` in a greenlet of the server's hub; return its result."""
        results: queue.Queue = queue.Queue()

        def run():
            try:
                results.put((True, fn(*args)))
            except BaseException as exc:  # handed back to the test thread
                results.put((False, exc))

        self.loop.run_callback_threadsafe(gevent.spawn, run)
        ok, value = results.get(timeout=TIMEOUT)
        if not ok:
            raise value
        return value

    def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()``, run on the server's hub, is true: for
        server state that announces nothing (a stream seen closed)."""
        def poll():
            with gevent.Timeout(TIMEOUT, AssertionError(f"never true: {predicate}")):
                while not predicate():
                    gevent.sleep(0.005)
        self.call(poll)

    def stop(self, timeout: float = 5) -> None:
        def stop():
            if self.plain:
                self.atmosphere.shutdown(timeout)
            self.server.stop(timeout)
            self._stop.set()
        self.call(stop)
        self._thread.join(TIMEOUT)


class Recorder:
    """A thread-safe list of what the server's clients saw, with waits."""

    def __init__(self):
        self.items: list = []
        self._cond = threading.Condition()

    def add(self, item) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list], bool], timeout: float = TIMEOUT) -> list:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.items), timeout), \
                f"timed out; recorded so far: {self.items!r}"
            return list(self.items)


_open_clients: list = []


class WSClient:
    """A WebSocket client that understands the Atmosphere framing it asked for.
    Every one still open at the end of a test is closed before the servers stop."""

    def __init__(self, url: str, track: bool = False, protocol: bool = False, **options):
        self.ws = websocket.create_connection(url, timeout=TIMEOUT, **options)
        _open_clients.append(self)
        #: The resume key the upgrade set (a ``name=value`` cookie), or the
        #: one this client brought: pass it as ``cookie=`` to resume it, as a
        #: browser would.
        set_cookie = (self.ws.getheaders() or {}).get("set-cookie")
        self.cookie = set_cookie.split(";", 1)[0] if set_cookie else options.get("cookie")
        self.track = track
        self.uuid = None
        self._pending: list[str] = []
        if protocol:
            self.uuid = self.recv().split("|")[0]

    def _frames(self, data: str) -> list[str]:
        if not self.track:
            return [data]
        out = []
        while data.lstrip():  # whitespace between frames is a heartbeat (acknowledging clients)
            data = data.lstrip()
            length, _, rest = data.partition("|")
            n = int(length)
            # lengths count UTF-16 code units
            encoded = rest.encode("utf-16-le")
            out.append(encoded[: 2 * n].decode("utf-16-le"))
            data = encoded[2 * n:].decode("utf-16-le")
        return out

    def recv(self, skip_heartbeats: bool = True) -> str:
        while True:
            if not self._pending:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise ConnectionError(f"closed: {data!r}")
                self._pending.extend(self._frames(data.decode("utf-8")))
            message = self._pending.pop(0)
            if skip_heartbeats and message == "X":
                continue
            return message

    def recv_json(self) -> Any:
        import json
        return json.loads(self.recv())

    def send(self, text: str) -> None:
        self.ws.send(text)

    def recv_close(self) -> tuple[int | None, str]:
        """Read until the server's close frame, answer it as a browser would,
        and return its (code, reason)."""
        while True:
            frame = self.ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                try:
                    self.ws.send_close(code or 1000)
                except OSError:
                    pass
                return code, data[2:].decode("utf-8")

    def close(self) -> None:
        self.ws.close(timeout=TIMEOUT)
        self._forget()

    def reset(self) -> None:
        """Drop the connection with a TCP RST: no close frame, no FIN."""
        self.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.sock.close()
        self._forget()

    def _forget(self) -> None:
        if self in _open_clients:
            _open_clients.remove(self)


ATMOSPHERE_PARAMS = {
    "X-Atmosphere-tracking-id": "0",
    "X-Atmosphere-Framework": "5.0.7",
    "X-Atmosphere-Transport": "websocket",
    "X-Atmosphere-TrackMessageSize": "true",
    "Content-Type": "application/json",
    "X-atmo-protocol": "true",
}


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def live():
    """``live(app)`` starts a server for ``app``; every one started is stopped
    at the end of the test."""
    servers = []

    def start(app, plain: bool = False):
        server = LiveServer(app, plain)
        servers.append(server)
        return server

    yield start
    while _open_clients:
        _open_clients.pop().ws.abort()
    for server in servers:
        server.stop()
