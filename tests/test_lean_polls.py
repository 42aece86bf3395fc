"""The lean path (lean/polls.py): the polls of a known long-polling
client answered before Flask, exactly as Flask's way would answer them; and
everything else still going through Flask."""
from __future__ import annotations

import threading

import pytest
import requests
from werkzeug.middleware.proxy_fix import ProxyFix

from conftest import TIMEOUT
from http_clients import Decoder, PollClient, params
from test_websocket import make_app
from flask_atmosphere import Connected
from flask_atmosphere.lean import LeanPath


class Counted:
    """Counts the requests that reach Flask (behind the lean path)."""

    def __init__(self, app):
        self.lean = app.wsgi_app
        assert isinstance(self.lean, LeanPath)
        self.flask = self.lean.wsgi_app
        self.count = 0
        self._lock = threading.Lock()
        self.lean.wsgi_app = self

    def __call__(self, environ, start_response):
        with self._lock:
            self.count += 1
        return self.flask(environ, start_response)


@pytest.fixture
def served(live, recorder):
    """(server, atmosphere, base url, Counted) for the recording test app."""
    def start(prepare=None, **config):
        app, atmosphere = make_app(recorder, **config)
        if prepare is not None:
            prepare(app)
        counted = Counted(app) if isinstance(app.wsgi_app, LeanPath) else None
        server = live(app)
        return server, atmosphere, f"http://127.0.0.1:{server.port}", counted
    return start


def without_date(response: requests.Response) -> dict:
    return {k: v for k, v in response.headers.items() if k != "Date"}


def test_polls_of_a_known_client_do_not_reach_flask(served):
    server, atmosphere, base, flask = served()
    client = PollClient(base, "/quiet")
    assert flask.count == 1  # the handshake: a new client goes through Flask
    for i in range(3):
        atmosphere.broadcast("/quiet", f"m{i}")
        assert client.poll() == [f"m{i}"]
    # A page of the same origin: no CORS headers.
    atmosphere.broadcast("/quiet", "same origin")
    response = client.http.get(client.url, params=client.query(), headers={"Origin": base},
                               timeout=TIMEOUT)
    assert Decoder().feed(response.text) == ["same origin"]
    assert "Access-Control-Allow-Origin" not in response.headers
    assert flask.count == 1


def test_a_lean_answer_is_the_answer_of_the_full_path(served):
    server, atmosphere, base, flask = served()
    client = PollClient(base, "/quiet")
    answers = []
    # A real X-Atmosphere-* header (§1.3) sends a poll the full way.
    for headers, through_flask in (({}, 1), ({"X-Atmosphere-Framework": "5.0.7"}, 2)):
        server.call(atmosphere.broadcast, "/quiet", "same ж")  # queued before the poll
        response = client.http.get(client.url, params=client.query(), headers=headers,
                                   timeout=TIMEOUT)
        assert flask.count == through_flask
        answers.append((response.status_code, without_date(response), response.content))
    assert answers[0] == answers[1]
    status, headers, body = answers[0]
    assert Decoder().feed(body.decode()) == ["same ж"]
    # Queued already: one piece with a length, not a chunked stream.
    assert headers["Content-Length"] == str(len(body)) and "Transfer-Encoding" not in headers


@pytest.mark.parametrize("header, value", [("X-Heartbeat-Server", "60"),
                                           ("X-atmo-protocol", "true"),
                                           ("X-Atmosphere-TrackMessageSize", "true")])
def test_a_poll_with_a_parameter_as_a_header_goes_through_flask(served, header, value):
    server, atmosphere, base, flask = served()
    client = PollClient(base, "/quiet")
    server.call(atmosphere.broadcast, "/quiet", "a")
    response = client.http.get(client.url, params=client.query(), headers={header: value},
                               timeout=TIMEOUT)
    assert Decoder().feed(response.text) == ["a"]
    assert flask.count == 2  # §1.3: a real header overrides the query, the full way


def test_a_held_lean_poll_sends_its_headers_at_once_and_is_chunked(served):
    server, atmosphere, base, flask = served()
    client = PollClient(base, "/quiet")
    held = client.http.get(client.url, params=client.query(), stream=True, timeout=TIMEOUT)
    assert held.status_code == 200 and held.headers["Transfer-Encoding"] == "chunked"
    atmosphere.broadcast("/quiet", "now")
    assert Decoder().feed(held.raw.read().decode()) == ["now"]
    assert flask.count == 1


def test_unknown_and_zero_tracking_ids_go_through_flask(served, recorder):
    server, atmosphere, base, flask = served()
    response = requests.get(base + "/chat", params=params("long-polling", "nobody-here"),
                            timeout=TIMEOUT)
    assert response.status_code == 200
    assert flask.count == 1
    assert ("nobody-here", Connected()) in recorder.items
    requests.get(base + "/chat", params=params("long-polling"), timeout=TIMEOUT)
    assert flask.count == 2


def test_a_known_id_on_another_path_goes_through_flask(served, recorder):
    server, atmosphere, base, flask = served()
    client = PollClient(base, "/quiet")
    # The same uuid on /chat is not the /quiet client: a fresh client there (§8.1).
    response = requests.get(base + "/chat", params=client.query(), timeout=TIMEOUT)
    assert response.status_code == 200 and flask.count == 2
    connected = [who for who, event in recorder.items if event == Connected()]
    assert len(connected) == 2


def test_a_foreign_origin_is_refused_on_a_known_clients_poll(served):
    server, atmosphere, base, flask = served()
    client = PollClient(base, "/quiet")
    response = client.http.get(client.url, params=client.query(),
                               headers={"Origin": "http://evil.example"}, timeout=TIMEOUT)
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    atmosphere.broadcast("/quiet", "still here")
    assert client.poll() == ["still here"]  # the refused poll took nothing


def test_an_allowed_origin_gets_the_same_cors_headers_on_both_paths(served):
    server, atmosphere, base, flask = served(ATMOSPHERE_ALLOWED_ORIGINS=["https://*.example.com"])
    origin = {"Origin": "https://app.example.com"}
    client = PollClient(base, "/quiet")
    answers = []
    for headers in (origin, origin | {"X-Atmosphere-Framework": "5.0.7"}):
        server.call(atmosphere.broadcast, "/quiet", "x")
        response = client.http.get(client.url, params=client.query(), headers=headers,
                                   timeout=TIMEOUT)
        answers.append(without_date(response))
    assert flask.count == 2  # the handshake and the second poll
    assert answers[0] == answers[1]
    assert answers[0]["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert answers[0]["Access-Control-Allow-Credentials"] == "true"


def test_polls_run_the_apps_request_hooks_when_it_has_any(served):
    seen = []

    def prepare(app):
        @app.before_request
        def count():
            seen.append(1)

    server, atmosphere, base, flask = served(prepare)
    client = PollClient(base, "/quiet")
    atmosphere.broadcast("/quiet", "a")
    assert client.poll() == ["a"]
    assert len(seen) == 2 and flask.count == 2


def test_a_permanent_session_is_refreshed_on_every_poll(served):
    def prepare(app):
        @app.route("/stay")
        def stay():
            from flask import session
            session.permanent = True
            session["user"] = "me"
            return "ok"

    server, atmosphere, base, flask = served(prepare)
    client = PollClient(base, "/quiet")
    client.http.get(base + "/stay", timeout=TIMEOUT)
    atmosphere.broadcast("/quiet", "a")
    response = client.http.get(client.url, params=client.query(), timeout=TIMEOUT)
    assert "session=" in response.headers["Set-Cookie"]  # Flask's refresh, as before


def test_no_lean_path_behind_a_middleware_wrapped_before_init_app(live, recorder):
    from flask import Flask
    from flask_atmosphere import Atmosphere, AtmosphereClient

    app = Flask(__name__)
    app.wsgi_app = ProxyFix(app.wsgi_app)
    atmosphere = Atmosphere(app)

    @atmosphere.route("/quiet")
    class Quiet(AtmosphereClient):
        def receive(self, event):
            pass

    assert isinstance(app.wsgi_app, ProxyFix)
    server = live(app)
    client = PollClient(f"http://127.0.0.1:{server.port}", "/quiet")
    atmosphere.broadcast("/quiet", "through Flask")
    assert client.poll() == ["through Flask"]


def test_lean_jsonp_polls(served):
    server, atmosphere, base, flask = served(ATMOSPHERE_TRANSPORTS=["jsonp"])
    query = params("jsonp") | {"jsonpTransport": "atmosphere17"}
    script = requests.Session()  # a <script> of the page: no Origin, but Fetch Metadata
    script.headers["Sec-Fetch-Site"] = "same-origin"
    first = script.get(base + "/quiet", params=query, timeout=TIMEOUT)
    query["X-Atmosphere-tracking-id"] = first.text.split("|")[1]
    atmosphere.broadcast("/quiet", 'x"y')
    poll = script.get(base + "/quiet", params=query, timeout=TIMEOUT)
    assert poll.text == 'atmosphere17({"message" : "3|x\\"y"});'
    assert poll.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert flask.count == 1


def test_a_changed_query_is_parsed_anew(served):
    server, atmosphere, base, flask = served()
    client = PollClient(base, "/quiet")
    for extra in ({"_": "1"}, {"_": "2"}, {"X-Heartbeat-Server": "60"}):
        server.call(atmosphere.broadcast, "/quiet", "m")
        response = client.http.get(client.url, params=client.query() | extra, timeout=TIMEOUT)
        assert Decoder().feed(response.text) == ["m"]
    assert server.call(lambda: atmosphere.registry.get(client.uuid).params.heartbeat_server) == 60
    # The parameters spelt in lower case: the same client.
    lower = {name.lower(): value for name, value in client.query().items()}
    server.call(atmosphere.broadcast, "/quiet", "n")
    response = client.http.get(client.url, params=lower, timeout=TIMEOUT)
    assert Decoder().feed(response.text) == ["n"]
    assert flask.count == 1
