"""Who may connect: origins, CORS, before_connect hooks, the connection limit,
JSONP's pages, and the resume key that binds a tracking id to its browser."""
import json

import pytest
import requests
import websocket
from flask import abort, request, session
from werkzeug.middleware.proxy_fix import ProxyFix

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from http_clients import Decoder, PollClient, params
from test_websocket import events_of, make_app
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


# -- JSONP: opt-in, and only for a page that proves its origin -------------------

def test_jsonp_is_off_unless_offered(server_of):
    server, _, _ = server_of()
    base = f"http://127.0.0.1:{server.port}"
    response = requests.get(base + "/chat", params=params("jsonp"), timeout=TIMEOUT)
    assert response.status_code == 501


@pytest.mark.parametrize("headers, status", [
    ({"Sec-Fetch-Site": "same-origin"}, 200),                           # the server's own page
    ({"Sec-Fetch-Site": "cross-site", "Referer": "http://evil.example/page"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403),                            # a Referer hidden
    ({}, 403),                                                          # nothing proves a page
    ({"Referer": "https://app.example.com/chat"}, 200),                 # an allowed page
])
def test_a_jsonp_script_must_prove_an_allowed_page(server_of, recorder, headers, status):
    server, atmosphere, _ = server_of(
        ATMOSPHERE_TRANSPORTS=ALL_TRANSPORTS,
        ATMOSPHERE_ALLOWED_ORIGINS=None if "Referer" not in headers or "evil" in headers["Referer"]
        else "https://app.example.com")
    base = f"http://127.0.0.1:{server.port}"
    response = requests.get(base + "/chat", params=params("jsonp") | {"jsonpTransport": "cb"},
                            headers=headers, timeout=TIMEOUT)
    assert response.status_code == status
    assert (Connected() in [e for _, e in recorder.items]) is (status == 200)


# -- tracking ids act for their clients only with the browser's resume key ---------

def test_a_tracking_id_without_the_resume_key_resumes_nothing(server_of, recorder):
    server, atmosphere, _ = server_of()
    base = f"http://127.0.0.1:{server.port}"
    victim = PollClient(base, "/chat")
    assert "atmosphere_resume" in victim.http.cookies
    greeting = victim.poll()
    atmosphere.broadcast("/chat", "private")
    held = atmosphere.registry.get(victim.uuid)
    server.wait_until(lambda: len(held.mailbox) == 1)  # fanned out before the stranger comes
    stranger = requests.Session()  # has the tracking id (from a log, say), not the cookie
    stolen = stranger.get(base + "/chat", params=params("long-polling", victim.uuid), timeout=TIMEOUT)
    greeting_of_stranger = json.loads(Decoder().feed(stolen.text)[0])
    assert greeting_of_stranger["hello"] != victim.uuid  # a fresh client, with its own greeting
    assert victim.poll() == ["private"]
    # Nor does it speak for the victim, or say goodbye for it.
    stranger.post(base + "/chat", params=params("long-polling", victim.uuid),
                  data='{"cmd": "broadcast", "to": "everyone", "msg": "forged"}', timeout=TIMEOUT)
    stranger.get(base + "/chat", params={"X-Atmosphere-Transport": "close",
                                         "X-Atmosphere-tracking-id": victim.uuid},
                 timeout=TIMEOUT)
    assert [e for e in events_of(recorder, victim.uuid)] == [Connected()]
    assert greeting and server.call(lambda: atmosphere.registry.get(victim.uuid) is not None)


def test_a_websocket_tracking_id_without_the_resume_key_supersedes_nothing(server_of):
    server, atmosphere, _ = server_of()
    victim = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    assert victim.cookie and victim.cookie.startswith("atmosphere_resume=")
    stranger = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS | {
        "X-Atmosphere-tracking-id": victim.uuid}), track=True, protocol=True)
    assert stranger.uuid != victim.uuid  # a fresh client, with a fresh uuid
    atmosphere.broadcast("/quiet", "to both")
    assert victim.recv() == "to both" and stranger.recv() == "to both"
    # The browser that holds the key does resume it.
    victim.reset()
    again = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS | {
        "X-Atmosphere-tracking-id": victim.uuid}), track=True, protocol=True, cookie=victim.cookie)
    assert again.uuid == victim.uuid


def test_before_connect_runs_on_every_return_and_can_refuse_it(server_of, recorder):
    server, atmosphere, _ = server_of()
    banned = set()

    @atmosphere.before_connect
    def not_banned():
        if request.args.get("who") in banned:
            raise Refused(403, "banned")

    base = f"http://127.0.0.1:{server.port}"
    client = PollClient(base, "/chat")
    client.url += "?who=ada"
    assert client.poll()  # its greeting
    banned.add("ada")
    for response in (client.http.get(client.url, params=client.query(), timeout=TIMEOUT),
                     client.post("still here?")):
        assert response.status_code == 403 and response.headers["X-Atmosphere-error"] == "banned"
    assert events_of(recorder, client.uuid) == [Connected()]  # the message never ran


@pytest.fixture(params=["atmosphere.run", "gevent-websocket"])
def ws_server_of(request, live, recorder):
    def start(**config):
        app, atmosphere = make_app(recorder, **config)
        return live(app, plain=request.param == "gevent-websocket"), atmosphere, app
    return start


def test_an_abort_in_before_connect_refuses_a_websocket_with_its_status_once(ws_server_of):
    server, atmosphere, app = ws_server_of()
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)
    seen = []

    @atmosphere.before_connect
    def forbid():
        seen.append(request.remote_addr)
        abort(403)

    if server.plain:  # upgraded before the app ran: the refusal is a close frame
        client = WSClient(server.url("/chat", **ATMOSPHERE_PARAMS),
                          header={"X-Forwarded-For": "203.0.113.9"})
        assert client.recv_close()[0] == 1008
    else:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect_ws(server, header={"X-Forwarded-For": "203.0.113.9"})
        assert info.value.status_code == 403
    assert seen == ["203.0.113.9"]  # once, through the app's middleware
