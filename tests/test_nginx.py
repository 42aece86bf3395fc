"""Behind a real nginx, configured with the README's own block ("Behind
nginx"): every transport delivers a broadcast at once (not at the next
heartbeat), with nginx's gzip on too; nginx terminates TLS, and with
Werkzeug's ``ProxyFix`` a page of the proxy's https origin is admitted on
every transport, the WebSocket upgrade included, while without it the same
requests are refused with 403 and a WARNING that names the origin expected.

nginx is Debian's binary (``bash .ci/run`` installs it), started with its
prefix, configuration, logs and temporary files in the test's directory;
the certificate is a self-signed one that ``openssl`` makes for the test.
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import pytest
import requests
import websocket
from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, LiveServer, WSClient
from http_clients import Decoder, PollClient, StreamClient
from redis_servers import free_port
from flask_atmosphere import Atmosphere, AtmosphereClient, Connected, TextMessage
from flask_atmosphere.lean import LeanPath

README = Path(__file__).parent.parent / "README.md"

#: The app's heartbeat: long, so that a message held back by the proxy
#: until the next write would arrive far too late to pass.
HEARTBEAT = 30

#: The most a broadcast may take to reach a client through nginx.
PROMPT = 0.2

TRANSPORTS = ["websocket", "long-polling", "streaming", "sse"]

#: What the gzip variant adds to nginx's configuration.
GZIP = "gzip on;\ngzip_types text/plain text/event-stream application/json;"

#: nginx as the README configures it, and variants: (directives added to its
#: ``http`` context, ``(old, new)`` replacements in the README's block).
#: Either way of turning nginx's buffering off suffices on its own: the
#: README's ``proxy_buffering off``, and the server's ``X-Accel-Buffering: no``.
VARIANTS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "readme": ("", ()),
    "gzip": (GZIP, ()),
    "x-accel-buffering-only": ("", (("proxy_buffering off;", "proxy_buffering on; "),)),
    "proxy-buffering-only": ("proxy_ignore_headers X-Accel-Buffering;", ()),
}


# -- nginx -------------------------------------------------------------------

def nginx_binary() -> str:
    """The nginx executable: on the PATH, or Debian's ``/usr/sbin/nginx``
    (``/usr/sbin`` is not on every PATH). Its absence fails the test."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        pytest.fail("nginx is not installed (Debian's package `nginx`; `bash .ci/run` installs it)")
    return found


def readme_block() -> str:
    """The nginx configuration that the README's section "Behind nginx" gives."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Behind nginx\n", 1)
    assert len(section) == 2, "README.md has no section \"### Behind nginx\""
    block = re.search(r"^```nginx\n(.*?)^```$", section[1], re.S | re.M)
    assert block is not None, "the section \"Behind nginx\" has no ```nginx block"
    return block.group(1)


def substitute(text: str, old: str, new: str) -> str:
    """``text`` with the one occurrence of ``old`` replaced by ``new``: the
    README's block must still say what the test expects it to say."""
    assert text.count(old) == 1, f"the README's nginx block should hold {old!r} once"
    return text.replace(old, new)


def nginx_conf(tmp: Path, port: int, upstream: int, cert: Path, key: Path,
               variant: str = "readme") -> str:
    """A whole nginx configuration: the README's block as it stands, with
    the port, the upstream and the certificate of the test, changed as
    ``variant`` (a key of :data:`VARIANTS`) says."""
    extra, replacements = VARIANTS[variant]
    block = readme_block()
    for old, new in replacements:
        block = substitute(block, old, new)
    block = substitute(block, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    block = substitute(block, "proxy_pass http://127.0.0.1:8080;",
                       f"proxy_pass http://127.0.0.1:{upstream};")
    for directive, path in (("ssl_certificate", cert), ("ssl_certificate_key", key),
                            ("access_log", tmp / "access.log")):
        template = "\\g<1>" + str(path).replace("\\", "\\\\")  # the path; the rest stays
        block, found = re.subn(rf"^(\s*{directive}\s+)[^\s;]+(?=[ ;])", template, block,
                               flags=re.M)
        assert found == 1, f"the README's nginx block should name its {directive} once"
    assert "log_format no_query" in block  # what its access_log refers to
    temp = "\n".join(f"{kind}_temp_path {tmp / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
worker_processes 1;
error_log {tmp / 'error.log'} info;
error_log stderr notice;
events {{ worker_connections 256; }}
http {{
access_log {tmp / 'access.log'};
{temp}
{extra}
{block}
}}
"""


class Nginx:
    """A real nginx in the foreground, its prefix and files in ``tmp``,
    serving ``conf``; it is listening once this returns.

    Its notices go to stderr, read by a thread: "start worker processes"
    comes after the listening sockets are open, and an nginx that cannot
    start says why there before it exits.
    """

    def __init__(self, tmp: Path, conf: str):
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        (tmp / "nginx.conf").write_text(conf)
        self.lines: list[str] = []
        self._started = False
        self._said = threading.Event()  # that it started, or it exited
        self.process = subprocess.Popen(
            [nginx_binary(), "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
             "-g", f"daemon off; pid {tmp / 'nginx.pid'};"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._said.wait(TIMEOUT) or not self._started:
            self.stop()
            pytest.fail("nginx did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "start worker processes" in line:
                self._started = True
                self._said.set()
        self._said.set()  # it exited

    def stop(self) -> None:
        """Stop it (SIGTERM: nginx's fast shutdown), or kill it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by ``openssl``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl binary is not installed (Debian's package `openssl`)")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=TIMEOUT)
    return cert, key


# -- the app behind it -------------------------------------------------------

class Proxied:
    """An app served by a live server behind its own nginx.

    Attributes:
        server: the live server (the upstream).
        atmosphere: the app's extension.
        app: the Flask app.
        base: the proxy's URL, ``https://127.0.0.1:<port>``: the page's origin.
        cert: the certificate that the clients trust.
        seen: of each client's opening request, its ``remote_addr``, its
            protocol and its ``Connection`` header.
        flask_calls: how many requests reached Flask (behind the lean path).
    """

    def __init__(self, server: LiveServer, atmosphere: Atmosphere, app: Flask, port: int,
                 cert: Path, seen: list[Opening], flask_calls: list[int]):
        self.server = server
        self.atmosphere = atmosphere
        self.app = app
        self.base = f"https://127.0.0.1:{port}"
        self.cert = cert
        self.seen = seen
        self.flask_calls = flask_calls

    def session(self) -> requests.Session:
        """An HTTP session of a page of the proxy's origin, trusting its
        certificate, and claiming a client address of its own (which the
        proxy must not let through as the client's)."""
        http = requests.Session()
        http.trust_env = False  # else REQUESTS_CA_BUNDLE, if set, overrides ``verify``
        http.verify = str(self.cert)
        http.headers.update({"Origin": self.base, "X-Forwarded-For": "203.0.113.9"})
        return http

    def websocket(self) -> WSClient:
        """A WebSocket of the page, through the proxy, with the handshake read."""
        query = "&".join(f"{name}={value}" for name, value in ATMOSPHERE_PARAMS.items())
        return WSClient(f"wss://127.0.0.1:{self.base.rsplit(':', 1)[1]}/feed?{query}",
                        track=True, protocol=True, origin=self.base,
                        header={"X-Forwarded-For": "203.0.113.9"},
                        sslopt={"ca_certs": str(self.cert)})


class Opening(NamedTuple):
    """What the app saw of a client's opening request."""
    remote_addr: str | None
    protocol: str
    connection: str | None


def make_app(proxy_fix: bool, seen: list[Opening], flask_calls: list[int]
             ) -> tuple[Flask, Atmosphere]:
    """An app with one route, ``/feed``, whose clients answer a text with
    ``echo <text>`` and note their opening request in ``seen``; wrapped in
    ``ProxyFix`` as the README says (after ``Atmosphere(app)``) if
    ``proxy_fix``. ``flask_calls[0]`` counts the requests that reach Flask
    (not answered by the lean path)."""
    app = Flask(__name__)
    app.config["ATMOSPHERE_HEARTBEAT_INTERVAL"] = HEARTBEAT
    atmosphere = Atmosphere(app)

    @atmosphere.route("/feed")
    class Feed(AtmosphereClient):
        def receive(self, event: Any) -> None:
            match event:
                case Connected():
                    seen.append(Opening(request.remote_addr, request.environ["SERVER_PROTOCOL"],
                                        request.headers.get("Connection")))
                case TextMessage(text):
                    self.send(f"echo {text}")

    lean = app.wsgi_app
    assert isinstance(lean, LeanPath)
    flask_wsgi = lean.wsgi_app

    def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        flask_calls[0] += 1
        return flask_wsgi(environ, start_response)
    lean.wsgi_app = counted
    if proxy_fix:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    return app, atmosphere


@pytest.fixture
def proxied(live: Callable[..., LiveServer], tmp_path: Path,
            certificate: tuple[Path, Path]) -> Iterator[Callable[..., Proxied]]:
    """``proxied(proxy_fix=True, variant="readme")``: the app behind nginx
    (the README's block, changed as ``variant`` says); nginx is stopped at
    the end, before the app's server."""
    started: list[Nginx] = []
    cert, key = certificate

    def start(proxy_fix: bool = True, variant: str = "readme") -> Proxied:
        seen: list[Opening] = []
        flask_calls = [0]
        app, atmosphere = make_app(proxy_fix, seen, flask_calls)
        server = live(app)
        port = free_port()
        tmp = tmp_path / f"nginx{len(started)}"
        started.append(Nginx(tmp, nginx_conf(tmp, port, server.port, cert, key, variant)))
        return Proxied(server, atmosphere, app, port, cert, seen, flask_calls)

    yield start
    for nginx in started:
        nginx.stop()


# -- clients of each transport, through the proxy ------------------------------

class Client(Protocol):
    """One client of a transport, through the proxy."""

    def arm(self) -> None:
        """Be ready for the next message (a held poll for long-polling)."""

    def receive(self, deadline: float) -> list[str]:
        """The messages of the next read, waiting until ``deadline``
        (``time.monotonic()``) at most."""

    def post(self, text: str) -> None:
        """Send ``text`` to the server."""

    def encodings(self) -> list[str | None]:
        """The ``Content-Encoding`` of each HTTP response so far."""


class WebSocketClient:
    """A WebSocket: each message a frame, each post a frame."""

    def __init__(self, proxied: Proxied):
        self.client = proxied.websocket()

    def arm(self) -> None:
        pass

    def receive(self, deadline: float) -> list[str]:
        self.client.ws.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            return [self.client.recv()]
        finally:
            self.client.ws.settimeout(TIMEOUT)

    def post(self, text: str) -> None:
        self.client.send(text)

    def encodings(self) -> list[str | None]:
        return []


class StreamingClient:
    """A streaming or SSE response, read by a thread; posts as POSTs."""

    def __init__(self, proxied: Proxied, transport: str):
        self.stream = StreamClient(proxied.base, "/feed", transport, http=proxied.session())

    def arm(self) -> None:
        pass

    def receive(self, deadline: float) -> list[str]:
        message = self.stream.messages.get(timeout=max(deadline - time.monotonic(), 0.001))
        assert message is not None, "the stream ended"
        return [message]

    def post(self, text: str) -> None:
        assert self.stream.post(text).status_code == 200

    def encodings(self) -> list[str | None]:
        return [self.stream.response.headers.get("Content-Encoding")]


class LongPollingClient:
    """Each poll in a thread of its own; :meth:`arm` returns once the server
    holds it (server state that announces nothing: polled)."""

    def __init__(self, proxied: Proxied):
        self.proxied = proxied
        self.client = PollClient(proxied.base, "/feed", http=proxied.session())
        self.responses: list[requests.Response] = [self.client.handshake_response]
        self.pool = ThreadPoolExecutor(1)
        self.poll: Future[requests.Response] | None = None
        self.carriers: list[Any] = []  # of the polls so far, held on to: none is new again

    def arm(self) -> None:
        client = self.client
        self.poll = self.pool.submit(client.http.get, client.url, params=client.query(),
                                     timeout=TIMEOUT)
        registry, known = self.proxied.atmosphere.registry, self.carriers

        def carrier() -> Any:  # what serves the client now
            connection = registry.get(client.uuid)
            assert connection is not None
            return connection.carrier

        def held() -> bool:
            now = carrier()
            return now is not None and all(now is not old for old in known)

        self.proxied.server.wait_until(held)
        known.append(self.proxied.server.call(carrier))

    def receive(self, deadline: float) -> list[str]:
        assert self.poll is not None
        response = self.poll.result(timeout=max(deadline - time.monotonic(), 0.001))
        self.responses.append(response)
        assert response.status_code == 200, response.text
        return Decoder().feed(response.text)

    def post(self, text: str) -> None:
        assert self.client.post(text).status_code == 200

    def encodings(self) -> list[str | None]:
        return [r.headers.get("Content-Encoding") for r in self.responses[1:]]


def open_client(proxied: Proxied, transport: str) -> Client:
    """A client of ``transport`` through the proxy, its handshake received."""
    if transport == "websocket":
        return WebSocketClient(proxied)
    if transport == "long-polling":
        return LongPollingClient(proxied)
    return StreamingClient(proxied, transport)


# -- the tests -----------------------------------------------------------------

@pytest.mark.parametrize("transport, variant", [
    (transport, variant) for transport in TRANSPORTS for variant in VARIANTS
    if transport != "websocket" or variant in ("readme", "gzip")])  # a tunnel buffers nothing
def test_a_broadcast_goes_through_nginx_at_once(proxied: Callable[..., Proxied],
                                                transport: str, variant: str) -> None:
    """Within ``PROMPT`` of the broadcast, though the next heartbeat is 30 s
    away: nginx holds nothing back, compressing or not."""
    behind = proxied(variant=variant)
    client = open_client(behind, transport)
    for i in range(3):  # a poll's answer: first chunked, then with a length
        message = f"news {i}: " + "the same words again, " * 4  # longer than gzip's minimum
        client.arm()
        start = time.monotonic()
        behind.atmosphere.broadcast("/feed", message)
        assert client.receive(start + PROMPT) == [message], f"message {i}"
    if transport == "websocket":  # the upgrade reached the app as the protocol wants it
        opening = behind.seen[0]
        assert opening.protocol == "HTTP/1.1" and "upgrade" in (opening.connection or "").lower()
    else:  # nginx did compress them, or not
        assert set(client.encodings()) == {"gzip" if variant == "gzip" else None}
    client.arm()
    client.post("ping")
    assert client.receive(time.monotonic() + TIMEOUT) == ["echo ping"]


def test_with_proxy_fix_a_page_of_the_https_origin_is_admitted_on_every_transport(
        proxied: Callable[..., Proxied], tmp_path: Path) -> None:
    behind = proxied(proxy_fix=True)
    ws = behind.websocket()
    assert "Secure" in (ws.ws.getheaders() or {})["set-cookie"]
    ws.send("ping")
    assert ws.recv() == "echo ping"
    for transport in ("streaming", "sse"):
        stream = StreamClient(behind.base, "/feed", transport, http=behind.session())
        assert "Secure" in stream.response.headers["Set-Cookie"]
        assert stream.post("ping").status_code == 200
        assert stream.next() == "echo ping"
    poller = PollClient(behind.base, "/feed", http=behind.session())
    assert "Secure" in poller.handshake_response.headers["Set-Cookie"]
    assert poller.post("ping").status_code == 200
    assert poller.poll() == ["echo ping"]  # Flask's way: now the lean path knows the client
    reached_flask = behind.flask_calls[0]
    for i in range(2):
        behind.atmosphere.broadcast("/feed", f"lean {i}")
        assert poller.poll() == [f"lean {i}"]
    assert behind.flask_calls[0] == reached_flask  # answered in front of Flask, behind ProxyFix
    # Four clients, each from the address nginx saw, not the one the page claimed.
    assert [opening.remote_addr for opening in behind.seen] == ["127.0.0.1"] * 4
    # nginx logged the polls without their query strings: no tracking id.
    logged = (tmp_path / "nginx0" / "access.log").read_text()
    assert logged.count('"GET /feed HTTP/1.1" 200') >= 3 and "?" not in logged
    assert poller.uuid not in logged


def test_without_proxy_fix_the_same_page_is_refused_on_every_transport_and_logged(
        proxied: Callable[..., Proxied], caplog: pytest.LogCaptureFixture) -> None:
    behind = proxied(proxy_fix=False)
    upstream = f"http://127.0.0.1:{behind.server.port}"
    with caplog.at_level(logging.INFO, logger="flask_atmosphere"):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            behind.websocket()
        assert refused.value.status_code == 403
        http = behind.session()
        for transport in ("streaming", "sse", "long-polling"):
            query = ATMOSPHERE_PARAMS | {"X-Atmosphere-Transport": transport}
            response = http.get(behind.base + "/feed", params=query, timeout=TIMEOUT)
            assert response.status_code == 403, transport
            assert response.headers["X-Atmosphere-error"] == "origin not allowed"
    lines = [record for record in caplog.records
             if record.name == "flask_atmosphere" and "refused" in record.getMessage()]
    assert len(lines) == 4
    assert lines[0].levelno == logging.WARNING
    for line in lines:
        assert f"from origin {behind.base}: the page must come from {upstream}, " \
               "or from an origin listed in ATMOSPHERE_ALLOWED_ORIGINS" in line.getMessage()
    assert behind.seen == []
