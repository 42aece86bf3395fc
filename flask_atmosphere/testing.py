"""A test client for apps: real clients on every transport, talking to the
real server, from a plain pytest process.

``atmosphere.test_client(path, transport)`` (or :func:`connect`) starts the
app's server (``flask_atmosphere.server.AtmosphereServer``, on 127.0.0.1 and
a free port, on a gevent hub in a thread of its own, so the test's process
needs no monkey-patching), and opens a client through the very transport
code a browser goes through::

    from chat import atmosphere

    def test_a_message_reaches_the_others():
        with atmosphere.test_client("/the-chat") as ada, \\
                atmosphere.test_client("/the-chat", "long-polling") as bob:
            ada.send_json({"message": "hello"})
            assert bob.receive_json(timeout=1.0)["message"] == "hello"

The clients are written in plain sockets with wsproto (WebSocket) and h11
(HTTP), in the test's thread (no thread of their own: what arrives is read
when the test asks for it), and speak the protocol as the bundled
JavaScript client does: the handshake, length framing, and
acknowledgements (``X-Atmosphere-Offset``), so a message ``"X"`` arrives
like any other. What they receive is de-framed: no handshake, no length
prefixes, no heartbeats (counted in :attr:`TestClient.heartbeats`).

One server per app. Clients open at the same time share it: a broadcast
must reach all of them, and an ``Atmosphere`` has one registry and fans out
from one hub. The first client starts it, the last one to close stops it
(a client still registered, a long-polling client in its grace period too,
then gets ``Disconnected(ServerDisconnected())``), so each test starts from
an empty registry, and a server costs a few milliseconds. Hold a
:class:`TestServer` to keep one across clients, or to get its port for
clients of your own. Every test server of the process runs on the same
hub thread (see :func:`_server_loop`).

Times are in seconds throughout.
"""
from __future__ import annotations

import codecs
import difflib
import json
import queue
import re
import socket
import threading
import warnings
import weakref
from collections import deque
from http.cookies import CookieError, SimpleCookie
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping,
                            RejectConnection, RejectData, Request, TextMessage)

from .config import KEYS, ConfigError, Settings

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .client import AtmosphereClient
    from .connection import Connection
    from .extension import Atmosphere

__all__ = ["TestClient", "TestServer", "connect", "TRANSPORTS", "ReceiveTimeout",
           "ConnectionClosed", "RequestRefused", "INIT_ONLY_KEYS"]

T = TypeVar("T")

#: The transports a test client speaks.
TRANSPORTS = ("websocket", "long-polling", "streaming", "sse")

#: Seconds that opening a client (the server's start included), a message
#: POST, or a goodbye may take before :class:`TimeoutError`.
CONNECT_TIMEOUT = 10.0

#: Keys read once, at ``init_app``: a test's ``config`` cannot change them.
INIT_ONLY_KEYS = frozenset(
    ["ATMOSPHERE_STATIC_URL_PATH", "ATMOSPHERE_STATS_URL_PATH", "ATMOSPHERE_METRICS_URL_PATH",
     "ATMOSPHERE_BACKPLANE"]
    + [key.name for key in KEYS if key.name.startswith("ATMOSPHERE_REDIS_")])

_KEY_NAMES = {key.name for key in KEYS}
assert INIT_ONLY_KEYS <= _KEY_NAMES

#: What the client says it is: the 5.x client's version, as the bundled client.
_FRAMEWORK = "5.0.7"
_READ_SIZE = 64 * 1024
#: How many of the messages received so far an error message shows.
_SHOWN = 10


# -- errors ------------------------------------------------------------------------

def _summary(received: list[str], heartbeats: int) -> str:
    if not received:
        shown = "nothing"
    elif len(received) <= _SHOWN:
        shown = repr(received)
    else:
        shown = f"{len(received)} messages, the last {_SHOWN}: {received[-_SHOWN:]!r}"
    return f"received so far: {shown}" + (f" (and {heartbeats} heartbeats)" if heartbeats else "")


class ReceiveTimeout(AssertionError):
    """No message arrived within the time given to :meth:`TestClient.receive`
    (a failed expectation, hence an ``AssertionError``). The message names
    every message the client received so far, which :attr:`received` holds."""

    def __init__(self, message: str, received: list[str]):
        super().__init__(message)
        #: Every message the client received so far, in order (those that
        #: ``receive`` returned already included).
        self.received = received


class ConnectionClosed(Exception):
    """The connection ended, and nothing received is left to return: the
    server closed the client (``client.close()`` in the app, a slow
    consumer, shutdown), or the client was closed by the test."""

    def __init__(self, message: str, code: int | None = None, reason: str = ""):
        super().__init__(message)
        #: The WebSocket close code, or the HTTP status that refused a
        #: long-polling client's next poll (410 once the app closed it);
        #: ``None`` when a stream just ended.
        self.code = code
        #: The close frame's or the refusal's reason.
        self.reason = reason


class RequestRefused(Exception):
    """The server answered a request with an error status: the client's
    opening (a ``before_connect`` hook's ``Refused(401)``, a foreign origin's
    403, 503 past ``ATMOSPHERE_MAX_CONNECTIONS``, …) or one of its messages
    over HTTP (413 past ``ATMOSPHERE_MAX_MESSAGE_SIZE``)."""

    def __init__(self, status: int, reason: str, what: str):
        super().__init__(f"{what} refused with HTTP {status}: {reason}")
        #: The HTTP status.
        self.status = status
        #: The reason the server gave (``X-Atmosphere-error``, else the body).
        self.reason = reason


# -- the server ----------------------------------------------------------------------

def _checked_overrides(app: "Flask", config: Mapping[str, Any] | None) -> Settings | None:
    """The app's settings with ``config`` over its own, checked like
    ``init_app`` checks them; ``None`` for no ``config``.

    Raises:
        ConfigError: a value a key does not accept (naming the key), a key
            that does not exist (with the nearest one), or one that only
            ``init_app`` reads (:data:`INIT_ONLY_KEYS`).
    """
    if not config:
        return None
    for name in config:
        if name not in _KEY_NAMES:
            near = difflib.get_close_matches(str(name), sorted(_KEY_NAMES), n=1, cutoff=0.6)
            raise ConfigError(f"{name!r} is not a configuration key"
                              + (f" (did you mean {near[0]}?)" if near else ""))
        if name in INIT_ONLY_KEYS:
            raise ConfigError(f"{name} is read once, by init_app: a test client cannot change "
                              "it; set it on app.config before Atmosphere(app)")
    return Settings.from_config({**app.config, **config})


_hub_lock = threading.Lock()
_hub_loop: Any = None


def _server_loop(timeout: float = CONNECT_TIMEOUT) -> Any:
    """The gevent loop of the thread that serves every test server of the
    process, started on first use; it runs as long as the process.

    One thread for all, rather than one per server: a hub's loop holds
    file descriptors until it is destroyed, and the sockets of the
    requests it served are closed only when the garbage collector gets to
    them (pywsgi's handlers are in reference cycles), which needs their
    loop alive; so a loop per server would either leak or break those
    closes."""
    global _hub_loop
    with _hub_lock:
        if _hub_loop is None:
            found: list[Any] = []
            ready = threading.Event()

            def run() -> None:
                import gevent
                found.append(gevent.get_hub().loop)
                ready.set()
                while True:  # a timer keeps the loop alive between servers
                    gevent.sleep(3600)

            threading.Thread(target=run, name="flask-atmosphere-test-servers",
                             daemon=True).start()
            if not ready.wait(timeout):
                raise RuntimeError(f"the test servers' thread did not start within {timeout}s")
            _hub_loop = found[0]
        return _hub_loop


def _on_loop(loop: Any, fn: Callable[..., T], args: tuple[Any, ...], timeout: float) -> T:
    """``fn(*args)`` run in a greenlet on ``loop``'s hub, from another thread."""
    import gevent
    results: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def run() -> None:
        try:
            results.put((True, fn(*args)))
        except BaseException as exc:  # noqa: B036 -- handed back to the caller
            results.put((False, exc))

    loop.run_callback_threadsafe(gevent.spawn, run)
    try:
        ok, value = results.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"{fn!r} did not return within {timeout}s on the server") from None
    if not ok:
        raise value
    result: T = value
    return result


class TestServer:
    """``flask_atmosphere.server.AtmosphereServer`` serving ``app`` on
    127.0.0.1 and a free port, on a gevent hub in a thread of its own
    (shared by every test server of the process), so that the calling
    process need not be patched by gevent. A context manager: started on
    entry, stopped on exit.

    Args:
        app: a Flask app with ``Atmosphere`` initialised on it.
        config: ``ATMOSPHERE_*`` keys that hold while the server runs, over
            the app's own (e.g. ``{"ATMOSPHERE_HEARTBEAT_INTERVAL": 0.5}``,
            in seconds); ``app.config`` and ``atmosphere.settings(app)`` say
            them meanwhile, and are put back at :meth:`stop`.

    Raises:
        RuntimeError: ``app`` has no ``Atmosphere``.
        ConfigError: ``config`` has a value its key does not accept, a key
            that does not exist, or one of :data:`INIT_ONLY_KEYS`.
    """
    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, app: "Flask", config: Mapping[str, Any] | None = None):
        atmosphere = app.extensions.get("atmosphere")
        if atmosphere is None:
            raise RuntimeError("the app has no Atmosphere: call Atmosphere(app) first")
        self.app = app
        self.atmosphere: "Atmosphere" = atmosphere
        self.config = dict(config or {})
        self._settings = _checked_overrides(app, self.config)
        self._saved: tuple[Settings, dict[str, Any]] | None = None
        self._server: Any = None
        self._port: int | None = None
        self._users = 0  # clients holding it, for the shared server (see connect)

    def __repr__(self) -> str:
        return f"<TestServer {self.app.name} on {self.url('/') if self._port else 'stopped'}>"

    @property
    def running(self) -> bool:
        """Whether the server is started and not stopped."""
        return self._port is not None

    @property
    def port(self) -> int:
        """The TCP port it listens on.

        Raises:
            RuntimeError: it is not running.
        """
        if self._port is None:
            raise RuntimeError("the test server is not running")
        return self._port

    def url(self, path: str, scheme: str = "http") -> str:
        """``scheme://127.0.0.1:<port><path>`` (``ws`` for a WebSocket)."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Apply the config, and serve within ``timeout`` seconds.

        Raises:
            RuntimeError: it runs already.
            TimeoutError: it did not start in time.
            OSError: the server could not listen.
        """
        if self._server is not None:
            raise RuntimeError("the test server runs already")
        if self._settings is not None:
            app = self.app
            old = {name: app.config[name] for name in self.config if name in app.config}
            self._saved = (self.atmosphere.settings(app), old)
            self.atmosphere._apps[app] = self._settings
            app.config.update(self.config)

        def start() -> Any:
            from .server import AtmosphereServer
            server = AtmosphereServer(self.app, "127.0.0.1", 0)
            server.start()
            return server
        try:
            self._server = _on_loop(_server_loop(timeout), start, (), timeout)
        except BaseException:
            self._restore()
            raise
        self._port = self._server.port

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (``AtmosphereServer.stop``: each client still
        registered gets ``Disconnected(ServerDisconnected())``) within about
        ``timeout`` seconds, and put the app's config back. Stopping a
        server that is not running does nothing."""
        server = self._server
        if server is None:
            return
        try:
            _on_loop(_server_loop(), server.stop, (timeout,), timeout + 5)
        finally:
            self._server = self._port = None
            self._restore()

    def _restore(self) -> None:
        if self._saved is None:
            return
        settings, old = self._saved
        self._saved = None
        self.atmosphere._apps[self.app] = settings
        for name in self.config:
            if name in old:
                self.app.config[name] = old[name]
            else:
                self.app.config.pop(name, None)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = CONNECT_TIMEOUT) -> T:
        """Run ``fn(*args)`` in a greenlet on the server's hub and return
        what it returns (or raise what it raises): for server state, such
        as ``atmosphere.clients()``, that must be read there.

        Raises:
            RuntimeError: the server is not running.
            TimeoutError: ``fn`` did not return within ``timeout`` seconds.
        """
        if self._server is None:
            raise RuntimeError("the test server is not running")
        return _on_loop(_server_loop(), fn, args, timeout)

    def client(self, path: str, transport: str = "websocket", *,
               headers: Mapping[str, str] | None = None,
               timeout: float = CONNECT_TIMEOUT) -> "TestClient":
        """A client of this (running) server: see :func:`connect`."""
        return TestClient(self, path, transport, headers=headers, timeout=timeout)

    def __enter__(self) -> "TestServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_shared: "weakref.WeakKeyDictionary[Flask, TestServer]" = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()
#: Shared servers that lost a user to the garbage collector (see ``_abandoned``):
#: counted down by the next ``_acquire`` or ``_release``, which hold the lock.
_dropped: deque[TestServer] = deque()


def _count_dropped() -> None:
    while _dropped:
        _dropped.popleft()._users -= 1


def _acquire(app: "Flask", config: Mapping[str, Any] | None) -> TestServer:
    """The shared server of ``app``, started if need be, with one more user."""
    with _shared_lock:
        _count_dropped()
        server = _shared.get(app)
        if server is not None and server._users == 0:
            server.stop()  # its last users were abandoned, not closed (see TestClient)
            server = None
        if server is None:
            server = TestServer(app, config)
            server.start()
            _shared[app] = server
        elif config and _checked_overrides(app, config) != server._settings:
            raise RuntimeError(
                f"the app's test server runs with config {server.config!r} for the clients "
                f"open now, not {dict(config)!r}: clients open at the same time share one "
                "server; give the same config to each (or to the first only)")
        server._users += 1
        return server


def _release(server: TestServer) -> None:
    """One user of a shared server less; the last one stops it."""
    with _shared_lock:
        _count_dropped()
        server._users -= 1
        if server._users == 0:
            server.stop()
            if _shared.get(server.app) is server:
                del _shared[server.app]


def connect(atmosphere: "Atmosphere", path: str, transport: str = "websocket", *,
            config: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
            app: "Flask | None" = None, timeout: float = CONNECT_TIMEOUT) -> "TestClient":
    """Open a client of ``atmosphere``'s app on ``path`` over ``transport``,
    through the real server (what ``atmosphere.test_client`` does).

    It returns once the client is open: its ``Connected`` has run, it is
    registered, so broadcasts reach it. The app's server is started for it
    if no client of the app is open (see the module's description).

    Args:
        atmosphere: the extension.
        path: the URL path, and query string if any (``"/the-chat?name=Ada"``;
            both are percent-encoded as needed).
        transport: ``"websocket"``, ``"long-polling"``, ``"streaming"`` or ``"sse"``.
        config: ``ATMOSPHERE_*`` keys over the app's own while the server
            runs (units as in ``config.py``: seconds, bytes), checked as
            ``init_app`` checks them. Clients open at once share the server,
            so its config: give it to the first (or the same to each).
        headers: extra request headers (``Cookie``, ``Authorization``,
            ``Origin``) on each of the client's requests.
        app: the app, if ``atmosphere`` serves more than one.
        timeout: seconds that starting and opening may take.
    Returns:
        the open :class:`TestClient`; close it (or use it as a context manager).
    Raises:
        ValueError: an unknown transport, or ``app`` is needed.
        ConfigError: ``config`` is refused (see :class:`TestServer`).
        RuntimeError: ``config`` differs from that of the server that the
            app's clients open now share.
        RequestRefused: the server refused to open the client.
        TimeoutError: it did not open within ``timeout`` seconds.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if app is None:
        apps = list(atmosphere._apps)
        if len(apps) != 1:
            raise ValueError("this Atmosphere serves " + ("no app yet: call init_app(app)"
                             if not apps else f"{len(apps)} apps: say which one with app="))
        app = apps[0]
    server = _acquire(app, config)
    try:
        return TestClient(server, path, transport, headers=headers, timeout=timeout,
                          shared=True)
    except BaseException:
        _release(server)
        raise


# -- de-framing ------------------------------------------------------------------------

_WHITESPACE = " \t\r\n"


class _Deframer:
    """The bundled client's parser of length-framed writes (§3):
    ``<length>|<text>``, the length in UTF-16 code units, a message split
    across reads reassembled; whitespace between two messages is a
    heartbeat (the server's, for a client that acknowledges)."""

    def __init__(self) -> None:
        self.buffer = ""
        self.heartbeats = 0

    def feed(self, text: str) -> list[str]:
        """The messages ``text`` completes, in order.

        Raises:
            ValueError: the server wrote something that is not framed.
        """
        data = self.buffer + text
        out: list[str] = []
        pos, end = 0, len(data)
        while True:
            start = pos
            while pos < end and data[pos] in _WHITESPACE:
                pos += 1
            self.heartbeats += data.count("\n", start, pos)
            bar = data.find("|", pos)
            if bar < 0:
                if not data[pos:].isdigit() and pos < end:
                    raise ValueError(f"not a length-framed message: {data[pos:pos + 80]!r}")
                break
            head = data[pos:bar]
            if not head.isdigit():
                raise ValueError(f"not a length-framed message: {data[pos:pos + 80]!r}")
            stop = _after_units(data, bar + 1, int(head))
            if stop is None:
                break
            out.append(data[bar + 1:stop])
            pos = stop
        self.buffer = data[pos:]
        return out


def _after_units(text: str, start: int, units: int) -> int | None:
    """The index in ``text`` after ``units`` UTF-16 code units from
    ``start``, or ``None`` if ``text`` ends before."""
    if text.isascii():
        return start + units if start + units <= len(text) else None
    index, count = start, 0
    while count < units:
        if index >= len(text):
            return None
        count += 2 if ord(text[index]) > 0xFFFF else 1
        index += 1
    return index


_LINE_END = re.compile(r"\r\n|\r(?!$)|\n")


class _EventStream:
    """An EventSource's parser (the HTML standard's): lines end with CRLF,
    LF or CR; an empty line ends an event; its ``data:`` lines are joined
    with LF. Gives the data of each event."""

    def __init__(self) -> None:
        self.buffer = ""
        self.data: list[str] = []

    def feed(self, text: str) -> list[str]:
        *lines, self.buffer = _LINE_END.split(self.buffer + text)
        events: list[str] = []
        for line in lines:
            if line == "":
                if self.data:
                    events.append("\n".join(self.data))
                self.data = []
            elif line.startswith("data:"):
                value = line[5:]
                self.data.append(value[1:] if value.startswith(" ") else value)
        return events


# -- the client ------------------------------------------------------------------------

class _Cookies:
    """The cookies the server set (the resume key), sent back on each
    request, after the test's own ``Cookie`` header if any."""

    def __init__(self, header: str | None):
        self.header = header
        self.jar: dict[str, str] = {}

    def take(self, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name.lower() == b"set-cookie":
                try:
                    cookie = SimpleCookie(value.decode("latin-1"))
                except CookieError:
                    continue
                for key, morsel in cookie.items():
                    self.jar[key] = morsel.value

    def value(self) -> str | None:
        ours = "; ".join(f"{key}={value}" for key, value in self.jar.items())
        return "; ".join(part for part in (self.header, ours) if part) or None


def _deadline_left(deadline: float) -> float:
    return deadline - monotonic()


def _reason(headers: list[tuple[bytes, bytes]], body: bytes) -> str:
    """The reason of a refusal: ``X-Atmosphere-error``, else the body's first line."""
    for name, value in headers:
        if name.lower() == b"x-atmosphere-error":
            return value.decode("latin-1")
    lines = body.decode("utf-8", "replace").strip().splitlines()
    return lines[0] if lines else ""


class _HTTP:
    """One HTTP/1.1 connection to the server (h11 over a plain socket)."""

    def __init__(self, port: int, timeout: float, cookies: _Cookies):
        self.port = port
        self.cookies = cookies
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h11 = h11.Connection(h11.CLIENT)

    def request(self, method: str, target: str, headers: Mapping[str, str],
                body: bytes | None = None) -> None:
        """Send a request; its answer is read with :meth:`next_event`."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        elif self.h11.our_state is not h11.IDLE:  # the server closes after each answer
            self.close()
            self.sock = socket.create_connection(("127.0.0.1", self.port),
                                                 timeout=CONNECT_TIMEOUT)
            self.h11 = h11.Connection(h11.CLIENT)
        fields = [("Host", f"127.0.0.1:{self.port}"), *headers.items()]
        cookie = self.cookies.value()
        if cookie:
            fields.append(("Cookie", cookie))
        if body is not None:
            fields += [("Content-Type", "text/plain; charset=utf-8"),
                       ("Content-Length", str(len(body)))]
        data = self.h11.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            data = (data or b"") + (self.h11.send(h11.Data(data=body)) or b"")
        data = (data or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
        self.sock.sendall(data)

    def next_event(self, deadline: float) -> Any:
        """The next h11 event of the answer, or ``None`` if none came by
        ``deadline`` (a ``monotonic`` time)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, (h11.Response, h11.InformationalResponse)):
                    self.cookies.take(list(event.headers))
                return event
            left = _deadline_left(deadline)
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(_READ_SIZE)
            except (socket.timeout, BlockingIOError):
                return None
            except OSError:
                data = b""
            self.h11.receive_data(data)

    def exchange(self, method: str, target: str, headers: Mapping[str, str],
                 body: bytes | None, timeout: float) -> tuple[int, list[tuple[bytes, bytes]],
                                                              bytes]:
        """A whole request and answer: ``(status, headers, body)``.

        Raises:
            TimeoutError: no whole answer within ``timeout`` seconds.
            ConnectionError: the server closed the connection instead.
        """
        self.request(method, target, headers, body)
        deadline = monotonic() + timeout
        status, fields, parts = 0, [], []
        while True:
            event = self.next_event(deadline)
            if event is None:
                raise TimeoutError(f"no answer to {method} {target} within {timeout}s")
            if isinstance(event, h11.Response):
                status, fields = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, fields, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError(f"the server closed the connection before answering "
                                      f"{method} {target}")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _Link:
    """One client's connection on its transport. The base holds what is
    common: the query, the de-framing, what was received, the end."""

    def __init__(self, port: int, path: str, transport: str, headers: Mapping[str, str]):
        self.port = port
        split = urlsplit(path)
        self.path = quote(split.path or "/", safe="/%:@!$&'()*+,;=~")
        self.query = parse_qsl(split.query, keep_blank_values=True)
        self.transport = transport
        self.headers = {k: v for k, v in headers.items() if k.lower() != "cookie"}
        self.cookies = _Cookies(next((v for k, v in headers.items() if k.lower() == "cookie"),
                                     None))
        self.uuid = "0"
        self.offset = 0  # messages received: X-Atmosphere-Offset
        self.deframer = _Deframer()
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.inbox: deque[str] = deque()
        self.received: list[str] = []
        #: The end: ``(what, code, reason)``, or ``None`` while open.
        self.ended: tuple[str, int | None, str] | None = None
        self.posts: _HTTP | None = None

    def target(self, transport: str | None = None) -> str:
        """The request target with the protocol's parameters (§1.1), as the
        bundled client sends them, then the test's own."""
        params = [("X-Atmosphere-tracking-id", self.uuid),
                  ("X-Atmosphere-Framework", _FRAMEWORK),
                  ("X-Atmosphere-Transport", transport or self.transport),
                  ("X-Atmosphere-TrackMessageSize", "true"),
                  ("X-atmo-protocol", "true"),
                  ("X-Atmosphere-Offset", str(self.offset))]
        return f"{self.path}?{urlencode(params + self.query)}"

    def handshake(self, message: str) -> None:
        self.uuid = message.split("|", 1)[0]

    def deliver(self, text: str) -> None:
        """Hand what arrived to the de-framer: the handshake first, then messages."""
        for message in self.deframer.feed(text):
            if self.uuid == "0":
                self.handshake(message)
                continue
            self.offset += 1
            self.received.append(message)
            self.inbox.append(message)

    def end(self, what: str, code: int | None = None, reason: str = "") -> None:
        if self.ended is None:
            self.ended = (what, code, reason)

    def open(self, deadline: float) -> None:
        """Until the handshake (``Connected`` has run then)."""
        raise NotImplementedError

    def pump(self, deadline: float) -> None:
        """Read what arrives by ``deadline``, or until something ends."""
        raise NotImplementedError

    def send(self, text: str) -> None:
        """One message upstream: a POST to the same URL (§4.6)."""
        if self.posts is None:
            self.posts = _HTTP(self.port, CONNECT_TIMEOUT, self.cookies)
        status, headers, body = self.posts.exchange(
            "POST", self.target(), self.headers, text.encode("utf-8", "surrogatepass"),
            CONNECT_TIMEOUT)
        if not 200 <= status < 300:
            raise RequestRefused(status, _reason(headers, body), "the message")

    def goodbye(self) -> None:
        """Say the client is gone (§4.7); its ``Disconnected`` runs before the answer."""
        if self.posts is None:
            self.posts = _HTTP(self.port, CONNECT_TIMEOUT, self.cookies)
        target = f"{self.path}?" + urlencode([("X-Atmosphere-Transport", "close"),
                                              ("X-Atmosphere-tracking-id", self.uuid)])
        self.posts.exchange("GET", target, self.headers, None, CONNECT_TIMEOUT)

    def close(self) -> None:
        """Say goodbye (if still open) and drop every socket."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop every socket, without a goodbye (whatever was opened yet)."""
        for name in ("sock", "polls", "stream", "posts"):
            held = getattr(self, name, None)
            if held is not None:
                try:
                    held.close()
                except OSError:
                    pass


class _WebSocketLink(_Link):
    """A WebSocket (wsproto over a plain socket): one text frame per message."""

    def open(self, deadline: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port),
                                             timeout=max(_deadline_left(deadline), 0.01))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.partial: list[str] = []
        self.accepted = False
        self.refusal: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        cookie = self.cookies.value()
        if cookie:
            headers.append((b"Cookie", cookie.encode("latin-1")))
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{self.port}",
                                               target=self.target(), extra_headers=headers)))
        while self.uuid == "0" and self.ended is None:
            if _deadline_left(deadline) <= 0:
                raise TimeoutError("the WebSocket did not open within the time given")
            self.pump(deadline)
        if self.refusal is not None:
            status, fields, body = self.refusal
            self.abort()
            raise RequestRefused(status, _reason(fields, b"".join(body)), "the WebSocket")
        if self.ended is not None:
            raise ConnectionError(f"the WebSocket ended before its handshake: {self.ended}")

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.end("the connection broke", None, str(exc))

    def pump(self, deadline: float) -> None:
        left = _deadline_left(deadline)
        if left <= 0 or self.ended is not None:
            return
        self.sock.settimeout(left)
        try:
            data: bytes | None = self.sock.recv(_READ_SIZE)
        except (socket.timeout, BlockingIOError):
            return
        except OSError:
            data = b""
        if not data:
            if self.refusal is not None:
                self.end("refused")
                return
            self.end("the server closed the connection without a close frame")
            return
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
                self.cookies.take(list(event.extra_headers))
            elif isinstance(event, RejectConnection):
                self.refusal = (event.status_code, list(event.headers), [])
                if not event.has_body:
                    self.end("refused")
            elif isinstance(event, RejectData):
                assert self.refusal is not None
                self.refusal[2].append(bytes(event.data))
                if event.body_finished:
                    self.end("refused")
            elif isinstance(event, TextMessage):
                self.partial.append(event.data)
                if event.message_finished:
                    text, self.partial = "".join(self.partial), []
                    self.deliver(text)
            elif isinstance(event, BytesMessage):
                pass  # the server sends text only
            elif isinstance(event, Ping):
                self._write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self._write(self.ws.send(event.response()))
                self.end("closed", event.code, event.reason or "")

    def send(self, text: str) -> None:
        if self.ended is not None:
            raise ConnectionClosed(f"cannot send on a closed WebSocket ({self.ended[0]})",
                                   self.ended[1], self.ended[2])
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def close(self) -> None:
        deadline = monotonic() + CONNECT_TIMEOUT
        if self.ended is None and self.ws.state is ConnectionState.OPEN:
            self._write(self.ws.send(CloseConnection(code=1000)))
        # The server answers the close, then shuts the socket once the
        # client is gone: read up to its end.
        while self.ended is None and _deadline_left(deadline) > 0:
            self.pump(deadline)
        while _deadline_left(deadline) > 0:
            self.sock.settimeout(_deadline_left(deadline))
            try:
                if not self.sock.recv(_READ_SIZE):
                    break
            except (socket.timeout, OSError):
                break
        self.end("closed by the test")
        self.abort()



class _PollLink(_Link):
    """Long-polling (§4.2): a GET held until there is something to say, the
    next one sent as soon as one is answered."""

    def open(self, deadline: float) -> None:
        self.polls = _HTTP(self.port, max(_deadline_left(deadline), 0.01), self.cookies)
        status, headers, body = self.polls.exchange("GET", self.target(), self.headers, None,
                                                    max(_deadline_left(deadline), 0.01))
        if status != 200:
            self.abort()
            raise RequestRefused(status, _reason(headers, body), "the first poll")
        self.deliver(body.decode("utf-8"))
        if self.uuid == "0":
            self.abort()
            raise ConnectionError(f"the first poll brought no handshake: {body[:200]!r}")
        self.status = 0
        self.refusal: list[bytes] = []
        self.polls.request("GET", self.target(), self.headers)

    def pump(self, deadline: float) -> None:
        while self.ended is None:
            event = self.polls.next_event(deadline)
            if event is None:
                return
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.fields = list(event.headers)
            elif isinstance(event, h11.Data):
                if self.status == 200:
                    self.deliver(self.utf8.decode(bytes(event.data)))
                    if self.inbox:
                        return  # the rest of the answer on the next call
                else:
                    self.refusal.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if self.status != 200:
                    self.end("refused", self.status, _reason(self.fields, b"".join(self.refusal)))
                    return
                self.polls.request("GET", self.target(), self.headers)  # the next poll
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.end("the server closed the connection")

    def close(self) -> None:
        if self.ended is None:
            self.goodbye()
            self.end("closed by the test")
        self.abort()



class _StreamLink(_Link):
    """HTTP streaming (§4.3) or SSE (§4.4): one response that stays open."""

    def open(self, deadline: float) -> None:
        self.events = _EventStream() if self.transport == "sse" else None
        self.stream = _HTTP(self.port, max(_deadline_left(deadline), 0.01), self.cookies)
        self.stream.request("GET", self.target(), self.headers)
        self.status = 0
        fields: list[tuple[bytes, bytes]] = []
        body: list[bytes] = []
        while self.uuid == "0" and self.ended is None:
            event = self.stream.next_event(deadline)
            if event is None:
                self.abort()
                raise TimeoutError(f"the {self.transport} stream did not open in time")
            if isinstance(event, h11.Response):
                self.status, fields = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                if self.status == 200:
                    self._feed(bytes(event.data))
                else:
                    body.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                self.abort()
                if self.status != 200:
                    raise RequestRefused(self.status, _reason(fields, b"".join(body)),
                                         f"the {self.transport} stream")
                raise ConnectionError(f"the {self.transport} stream ended before its handshake")

    def _feed(self, data: bytes) -> None:
        text = self.utf8.decode(data)
        if self.events is None:
            self.deliver(text)
            return
        for event in self.events.feed(text):
            self.deliver(event)

    def pump(self, deadline: float) -> None:
        while self.ended is None:
            event = self.stream.next_event(deadline)
            if event is None:
                return
            if isinstance(event, h11.Data):
                self._feed(bytes(event.data))
                if self.inbox:
                    return
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                self.end("the server ended the stream")

    def close(self) -> None:
        if self.ended is None:
            self.goodbye()
            self.end("closed by the test")
        self.abort()



_LINKS: dict[str, type[_Link]] = {"websocket": _WebSocketLink, "long-polling": _PollLink,
                                  "streaming": _StreamLink, "sse": _StreamLink}


def _abandoned(link: _Link, server: TestServer, shared: bool) -> None:
    """A client that was never closed is gone (garbage): drop its sockets,
    and let the next client of the app stop its server. This may run on any
    thread, the server's included: it takes no lock and waits for nothing."""
    warnings.warn(f"a test client of {link.path} ({link.transport}) was not closed: close it, "
                  "or use it in a with block", ResourceWarning, stacklevel=2)
    link.abort()
    if shared:
        _dropped.append(server)


class TestClient:
    """A client of the app's real server on one transport: see :func:`connect`
    (``atmosphere.test_client``), which opens it. A context manager that
    closes it on exit.

    Attributes:
        uuid: the client's uuid (its tracking id), as ``self.uuid`` of the
            app's client object.
        path: the path it was opened on.
        transport: its transport.
        server: the :class:`TestServer` serving it.
        received: every message received so far, in order, de-framed (those
            that :meth:`receive` returned, and those it will return).
    """
    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, server: TestServer, path: str, transport: str = "websocket", *,
                 headers: Mapping[str, str] | None = None, timeout: float = CONNECT_TIMEOUT,
                 shared: bool = False):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, "
                             f"not {transport!r}")
        self.server = server
        self.path = path
        self.transport = transport
        link = self._link = _LINKS[transport](server.port, path, transport, headers or {})
        try:
            link.open(monotonic() + timeout)
            self._connection: "Connection | None" = server.call(
                server.atmosphere.registry.get, link.uuid)
        except BaseException:
            link.abort()
            raise
        self.uuid = link.uuid
        self.received = link.received
        self._closed = False
        self._finalizer = weakref.finalize(self, _abandoned, link, server, shared)
        self._shared = shared

    def __repr__(self) -> str:
        return f"<TestClient {self.uuid} {self.path} ({self.transport})>"

    @property
    def app_client(self) -> "AtmosphereClient":
        """The app's client object (its ``AtmosphereClient`` subclass) that
        serves this connection on the server: read what ``receive`` left
        in it. It lives on the server's hub thread: change nothing of it
        from the test but through its thread-safe ``send``, ``broadcast``
        and ``close``.

        Raises:
            RuntimeError: the app closed the client while it opened.
        """
        if self._connection is None:
            raise RuntimeError(f"{self!r} has no client object on the server")
        return self._connection.client

    @property
    def heartbeats(self) -> int:
        """How many server heartbeats arrived so far (they are no messages)."""
        return self._link.deframer.heartbeats

    @property
    def closed(self) -> bool:
        """Whether the connection ended: closed by the test, or by the server
        as far as the client read (:meth:`receive` and :meth:`wait_closed` read)."""
        return self._link.ended is not None

    # -- sending ------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send ``text`` to the app as one message (a WebSocket text frame,
        or a POST on the HTTP transports), as a browser would; the app's
        ``receive`` gets a ``JsonMessage`` if it parses as a JSON object or
        array, else a ``TextMessage``.

        On the HTTP transports it returns once ``receive`` has run for it
        (the server answers the POST then); on WebSocket, once it is sent.
        An empty ``text`` is what this client sends as a heartbeat (the
        padding its handshake named, as the bundled client's): the server
        takes it for one, and ``receive`` never sees it.

        Raises:
            TypeError: ``text`` is not a ``str`` (see :meth:`send_json`).
            RequestRefused: the server refused the POST (413 past
                ``ATMOSPHERE_MAX_MESSAGE_SIZE``, 410 once the app closed the client).
            ConnectionClosed: the WebSocket is closed.
        """
        if not isinstance(text, str):
            raise TypeError(f"send() takes a str, not {type(text).__name__}: "
                            "send_json() sends any JSON value")
        self._link.send(text)

    def send_json(self, value: Any) -> None:
        """Send ``value`` as JSON (see :meth:`send`); a ``dict`` or a
        ``list`` reaches ``receive`` as a ``JsonMessage``.

        Raises:
            TypeError: ``value`` cannot be written as JSON.
        """
        self.send(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

    # -- receiving -------------------------------------------------------------------

    def receive(self, timeout: float = 1.0) -> str:
        """The next message the client received, de-framed, waiting for it
        at most ``timeout`` seconds (heartbeats are skipped, and counted in
        :attr:`heartbeats`).

        Raises:
            ReceiveTimeout: none arrived in time; the message names every
                message received so far.
            ConnectionClosed: the connection ended and every message
                received before was returned.
        """
        link = self._link
        deadline = monotonic() + timeout
        while not link.inbox:
            if link.ended is not None:
                what, code, reason = link.ended
                detail = f" {code}" if code is not None else ""
                detail += f" {reason!r}" if reason else ""
                raise ConnectionClosed(
                    f"{self!r} is closed ({what}{detail}); "
                    + _summary(link.received, self.heartbeats), code, reason)
            if _deadline_left(deadline) <= 0:
                raise ReceiveTimeout(
                    f"no message within {timeout}s on {self!r}; "
                    + _summary(link.received, self.heartbeats), list(link.received))
            link.pump(deadline)
        return link.inbox.popleft()

    def receive_json(self, timeout: float = 1.0) -> Any:
        """The next message (see :meth:`receive`), decoded from JSON.

        Raises:
            ValueError: it is not JSON (the message says what it is).
            ReceiveTimeout, ConnectionClosed: as :meth:`receive`.
        """
        text = self.receive(timeout)
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError(f"{self!r} received {text!r}, which is not JSON") from None

    # -- the end -------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Close the client as a browser leaving the page does (a close
        frame, or the protocol's goodbye request), and wait at most
        ``timeout`` seconds until the app's ``Disconnected`` has run for it
        (at once if the server closed it). Then, if it was the last client
        open of its app, the app's server stops. Closing twice does nothing.

        Raises:
            TimeoutError: ``Disconnected`` did not run in time.
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            if self.server.running:
                self._link.close()
                self._wait_gone(timeout)
            else:  # its server was stopped first: nobody to say goodbye to
                self._link.abort()
        finally:
            if self._shared:
                _release(self.server)

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait at most ``timeout`` seconds until the server closed the
        connection and the app's ``Disconnected`` has run for this client:
        after the app closed it (``self.close()`` in ``receive``), say. It
        reads meanwhile, as a browser would (a WebSocket's close frame is
        answered): what arrives before the end is kept for :meth:`receive`.

        Raises:
            TimeoutError: it did not happen in time.
        """
        link = self._link
        deadline = monotonic() + timeout
        while link.ended is None and _deadline_left(deadline) > 0:
            link.pump(deadline)
        self._wait_gone(max(_deadline_left(deadline), 0.0))

    def _wait_gone(self, timeout: float) -> None:
        connection = self._connection
        if connection is not None and self.server.running:
            self.server.call(_wait_gone, connection, timeout, timeout=timeout + 5)

    def __enter__(self) -> "TestClient":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _wait_gone(connection: "Connection", timeout: float) -> None:
    """On the hub: wait until ``connection`` is finished and unregistered,
    which ``Connection.finish`` does once ``Disconnected`` has run. Nothing
    announces it, so it is looked at every millisecond.

    Raises:
        TimeoutError: not within ``timeout`` seconds.
    """
    import gevent
    registry = connection.atmosphere.registry
    deadline = monotonic() + timeout
    while not connection.finished or registry.get(connection.uuid) is connection:
        if monotonic() > deadline:
            raise TimeoutError(f"Disconnected did not run for {connection.uuid} on "
                               f"{connection.path} within {timeout}s")
        gevent.sleep(0.001)
