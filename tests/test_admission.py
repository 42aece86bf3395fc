"""Who may connect: origins, CORS, before_connect hooks, the connection limit."""
import pytest
import requests
import websocket
from flask import session

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from http_clients import PollClient, params
from test_websocket import make_app
from flask_atmosphere import Connected, Refused
from flask_atmosphere.admission import origin_allowed


@pytest.mark.parametrize("origin, allowed, own, ok", [
    (None, None, "http://h:80", True),                     # not a browser page
    ("http://h", None, "http://h:80", True),               # default port filled in
    ("http://h:8080", None, "http://h:8080", True),
    ("http://h:8081", None, "http://h:8080", False),       # port differs
    ("https://h:8080", None, "http://h:8080", False),      # scheme differs
    ("http://evil.example", None, "http://h", False),
    ("https://a.example.com", ("https://*.example.com",), "http://h", True),
    ("https://a.b.example.com", ("https://*.example.com",), "http://h", True),
    ("https://example.com", ("https://*.example.com",), "http://h", False),
    ("https://badexample.com", ("https://*.example.com",), "http://h", False),
    ("https://a.example.com:444", ("https://*.example.com",), "http://h", False),
    ("http://a.example.com", ("https://*.example.com",), "http://h", False),
    ("http://anything", ("*",), "http://h", True),
    ("null", None, "http://h", False),
])
def test_origin_matching(origin, allowed, own, ok):
    assert origin_allowed(origin, allowed, own) is ok


def connect_ws(server, path="/chat", origin=None, **extra):
    return websocket.create_connection(server.url(path, **ATMOSPHERE_PARAMS), timeout=TIMEOUT,
                                       origin=origin, suppress_origin=origin is None, **extra)


@pytest.fixture
def server_of(live, recorder):
    def start(**config):
        app, atmosphere = make_app(recorder, **config)
        return live(app), atmosphere, app
    return start


ALL_TRANSPORTS = ["websocket", "sse", "streaming", "long-polling", "jsonp"]


def test_a_foreign_origin_gets_403_on_every_transport_and_no_client(server_of, recorder):
    server, atmosphere, _ = server_of(ATMOSPHERE_TRANSPORTS=ALL_TRANSPORTS)
    base = f"http://127.0.0.1:{server.port}"
    foreign = {"Origin": "http://evil.example"}
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect_ws(server, origin="http://evil.example")
    assert info.value.status_code == 403
    for transport in ("long-polling", "streaming", "sse", "jsonp"):
        response = requests.get(base + "/chat", params=params(transport), headers=foreign, timeout=TIMEOUT)
        assert response.status_code == 403, transport
        assert "Access-Control-Allow-Origin" not in response.headers
    post = requests.post(base + "/chat", params=params("long-polling", "someone"), data="hi",
                         headers=foreign, timeout=TIMEOUT)
    assert post.status_code == 403
    assert recorder.items == [] and server.call(lambda: len(atmosphere.registry)) == 0
    # The same origin is fine.
    own = f"http://127.0.0.1:{server.port}"
    ws = connect_ws(server, origin=own)
    assert ws.recv().endswith("|0|X|")
    ws.close()


def test_allowed_origins_and_cors_headers(server_of):
    server, _, _ = server_of(ATMOSPHERE_ALLOWED_ORIGINS=["https://*.example.com"])
    base = f"http://127.0.0.1:{server.port}"
    good = {"Origin": "https://app.example.com"}
    response = requests.get(base + "/chat", params=params("long-polling"), headers=good, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    preflight = requests.options(base + "/chat", headers=good | {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"}, timeout=TIMEOUT)
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    bad = requests.options(base + "/chat", headers={"Origin": "https://example.org"}, timeout=TIMEOUT)
    assert bad.status_code == 403 and "Access-Control-Allow-Origin" not in bad.headers


def test_before_connect_can_refuse_with_401(server_of, recorder):
    server, atmosphere, app = server_of()

    @atmosphere.before_connect
    def logged_in():
        if "user" not in session:
            raise Refused(401, "log in first")

    base = f"http://127.0.0.1:{server.port}"
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect_ws(server)
    assert info.value.status_code == 401
    response = requests.get(base + "/chat", params=params("long-polling"), timeout=TIMEOUT)
    assert response.status_code == 401 and response.headers["X-Atmosphere-error"] == "log in first"
    assert recorder.items == []
    http = requests.Session()
    http.get(base + "/login", timeout=TIMEOUT)
    cookie = http.cookies["session"]
    ws = connect_ws(server, cookie=f"session={cookie}")
    assert ws.recv().endswith("|0|X|")
    ws.close()
    assert http.get(base + "/chat", params=params("long-polling"), timeout=TIMEOUT).status_code == 200


def test_the_connection_limit_gives_503_to_new_clients_only(server_of):
    server, atmosphere, _ = server_of(ATMOSPHERE_MAX_CONNECTIONS=2)
    base = f"http://127.0.0.1:{server.port}"
    first = PollClient(base, "/quiet")
    second = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect_ws(server, "/quiet")
    assert info.value.status_code == 503
    assert requests.get(base + "/quiet", params=params("sse"), timeout=TIMEOUT).status_code == 503
    # The clients already in keep going.
    assert first.post("still me").status_code == 200
    atmosphere.broadcast("/quiet", "to both")
    assert first.poll() == ["to both"] and second.recv() == "to both"


def test_no_new_clients_while_shutting_down(server_of, recorder):
    server, atmosphere, _ = server_of()
    base = f"http://127.0.0.1:{server.port}"
    server.call(atmosphere.shutdown, 1)
    response = requests.get(base + "/chat", params=params("long-polling"), timeout=TIMEOUT)
    assert response.status_code == 503
    assert Connected() not in [e for _, e in recorder.items]
