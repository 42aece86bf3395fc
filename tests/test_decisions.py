"""The request-level decisions, sans-IO (``decisions.py``), and that the two
entry paths that use them decide alike: whatever the lean path answers in
front of Flask, the endpoint would have answered the same way."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from conftest import ATMOSPHERE_PARAMS, WSClient
from http_clients import PollClient
from test_websocket import make_app
from flask_atmosphere import endpoint, lean
from flask_atmosphere.environ import UPGRADE_KEY
from flask_atmosphere.decisions import (MISSING_TRANSPORT, NOT_UPGRADED, Ask, Kind, Open,
                                        Refusal, Resume, classify, client_for, handshake_only,
                                        parameter_refusal, poll_limit)
from flask_atmosphere.protocol import AtmosphereParams, ProtocolError, VersionNotSupported
from flask_atmosphere.transports.wsframes import echo_close_code, sendable_close_code

ALL = ("websocket", "sse", "streaming", "long-polling", "jsonp")


def p(**kwargs) -> AtmosphereParams:
    return AtmosphereParams(**kwargs)


@pytest.mark.parametrize("method, websocket, can_upgrade, params, post_body, offered, expected", [
    ("OPTIONS", False, False, p(), False, ALL, Ask(Kind.PREFLIGHT)),
    ("GET", False, False, p(transport="close"), False, ALL, Ask(Kind.GOODBYE)),
    ("POST", False, False, p(transport="close"), False, ALL, Ask(Kind.GOODBYE)),  # §4.7 first
    ("GET", True, True, p(transport="websocket"), False, ALL, Ask(Kind.OPEN, "websocket")),
    ("GET", True, True, p(), False, ALL, Ask(Kind.OPEN, "websocket")),  # a plain WebSocket client
    ("GET", True, True, p(), False, ("sse",), NOT_UPGRADED),
    ("GET", True, False, p(transport="websocket"), False, ALL, Ask(Kind.PROBE)),  # no support
    ("GET", False, False, p(transport="websocket"), False, ALL, Ask(Kind.PROBE)),
    ("POST", False, False, p(transport="long-polling"), False, ALL, Ask(Kind.MESSAGE)),  # §4.6
    ("POST", False, False, p(transport="sse"), False, ALL, Ask(Kind.MESSAGE)),
    ("GET", False, False, p(transport="jsonp"), True, ALL, Ask(Kind.MESSAGE)),  # the body in the query
    ("GET", False, False, p(transport="polling"), False, ALL, Ask(Kind.OPEN, "long-polling")),
    ("GET", False, False, p(transport="jsonp"), False, ALL[:4],
     Refusal(501, "transport jsonp not supported")),
    ("GET", False, False, p(transport="sse"), False, ALL, Ask(Kind.OPEN, "sse")),
    ("GET", False, False, p(), False, ALL, MISSING_TRANSPORT),
])
def test_what_a_request_asks_for(method, websocket, can_upgrade, params, post_body, offered,
                                 expected):
    assert classify(method, websocket, can_upgrade, params, post_body, offered) == expected


def test_which_client_a_request_serves():
    closed = Refusal(410, "banned", close_code=4001)
    assert client_for("abc", held=False, resumable=False, closed=closed) is closed
    assert client_for("abc", held=True, resumable=True, closed=None) == Resume()
    assert client_for("abc", held=True, resumable=False, closed=None) == Open(None)  # never adopted
    assert client_for("abc", held=False, resumable=False, closed=None) == Open("abc")  # as Java
    assert client_for("0", held=False, resumable=False, closed=None) == Open(None)
    assert client_for("no good!", held=False, resumable=False, closed=None) == Open(None)


def test_refusals_of_parameters_and_their_close_codes():
    assert parameter_refusal(VersionNotSupported("old")).status == 501
    refusal = parameter_refusal(ProtocolError("bad"))
    assert (refusal.status, refusal.websocket_close_code()) == (400, 1008)
    assert Refusal(503, "busy").websocket_close_code() == 1013
    assert Refusal(500, "oops").websocket_close_code() == 1011
    assert Refusal(403, "no").websocket_close_code() == 1008
    assert Refusal(410, "banned", close_code=4001).websocket_close_code() == 4001


def test_long_polling_rules():
    assert handshake_only(p(protocol=True, tracking_id="0"))
    assert not handshake_only(p(protocol=True, tracking_id="abc"))
    assert not handshake_only(p(protocol=False, tracking_id="0"))
    assert poll_limit(True) is None and poll_limit(False) == 1  # Appendix C


@pytest.mark.parametrize("code, sendable, echo", [
    (1000, True, 1000), (1001, True, 1001), (1005, False, 1000), (1006, False, 1000),
    (1015, False, 1000), (1004, False, 1000), (1011, True, 1011), (3000, True, 3000),
    (4999, True, 4999), (5000, False, 1000),
])
def test_close_codes(code, sendable, echo):
    assert sendable_close_code(code) is sendable
    assert echo_close_code(code) == echo


# -- the lean path decides as the endpoint does ----------------------------------------

@pytest.fixture
def poller(live, recorder):
    """A server with every transport and one foreign origin allowed, and a
    long-polling client whose polls may take the lean path."""
    app, atmosphere = make_app(recorder, ATMOSPHERE_TRANSPORTS=list(ALL),
                               ATMOSPHERE_ALLOWED_ORIGINS="https://app.example.com")
    server = live(app)
    client = PollClient(f"http://127.0.0.1:{server.port}", "/quiet")
    return server, atmosphere, app, client


def environ_of(route_key, path, method, query, headers):
    path_info, script_name, host, scheme, server_name, server_port = route_key
    environ = EnvironBuilder(path=path_info if path is None else path, method=method,
                             query_string=query, headers=headers).get_environ()
    environ.update({"SCRIPT_NAME": script_name, "HTTP_HOST": host, "wsgi.url_scheme": scheme,
                    "SERVER_NAME": server_name, "SERVER_PORT": server_port})
    return environ


def test_the_lean_path_decides_as_the_endpoint(poller):
    server, atmosphere, app, client = poller
    connection = server.call(atmosphere.registry.get, client.uuid)
    route_key = lean.polls._tickets[connection].route_key
    key = client.http.cookies["atmosphere_resume"]
    own = f"http://{route_key[2]}"
    taken = []

    # A poll the lean path serves, and the ways a request may differ from it:
    # each example changes up to three of its fields, so that the lean path is
    # taken often and every boundary around it is crossed.
    lean_poll = {
        "method": "GET", "path": None,
        "X-Atmosphere-tracking-id": client.uuid, "X-Atmosphere-Transport": "long-polling",
        "X-Atmosphere-TrackMessageSize": "true", "X-atmo-protocol": "true",
        "X-Atmosphere-Framework": "5.0.7", "X-Atmosphere-Offset": None,
        "X-Atmosphere-Post-Body": None, "jsonpTransport": None,
        "Origin": None, "Cookie": f"atmosphere_resume={key}", "Upgrade": None,
        "Sec-Fetch-Site": None, "Referer": None, "header X-Atmosphere-Transport": None,
    }
    alternatives = {
        "method": ["POST"], "path": ["/chat"],
        "X-Atmosphere-tracking-id": ["0", "someone-else", "bad id!", None],
        "X-Atmosphere-Transport": ["polling", "jsonp", "streaming", "sse", "websocket", "close",
                                   "bogus", None],
        "X-Atmosphere-TrackMessageSize": ["false", None, "maybe"],
        "X-atmo-protocol": [None],
        "X-Atmosphere-Framework": ["2.3.8-javascript", "1.0", None],
        "X-Atmosphere-Offset": ["0", "3", "x"],
        "X-Atmosphere-Post-Body": ["hi"],
        "jsonpTransport": ["cb1"],
        "Origin": [own, "https://app.example.com", "http://evil.example"],
        "Cookie": [None, "atmosphere_resume=wrong"],
        "Upgrade": ["websocket"],
        "Sec-Fetch-Site": ["same-origin", "cross-site"],
        "Referer": ["https://app.example.com/page"],
        "header X-Atmosphere-Transport": ["sse"],
    }
    changes = st.lists(st.one_of(*[st.tuples(st.just(field), st.sampled_from(values))
                                   for field, values in alternatives.items()]), max_size=3)
    query_fields = [f for f in lean_poll if f.startswith("X-") or f == "jsonpTransport"]

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(changes)
    def decide_alike(changed):
        request = {**lean_poll, **dict(changed)}
        query = {k: request[k] for k in query_fields if request[k] is not None}
        header = {k.removeprefix("header "): v for k, v in request.items()
                  if k not in query_fields and k not in ("method", "path") and v is not None}
        environ = environ_of(route_key, request["path"], request["method"], query, header)

        def both():
            decided = app.wsgi_app.decide(dict(environ))
            with app.request_context(dict(environ)):
                settings_ = atmosphere.settings(app)
                chosen = endpoint.plan(atmosphere, settings_, None)
                callback = None
                if chosen.ask is not None and chosen.ask.transport == "jsonp":
                    from flask import request
                    callback = request.args.get("jsonpTransport", "atmosphere")
                from flask_atmosphere.admission import cors_headers
                return decided, chosen, callback, cors_headers(settings_)

        decided, chosen, callback, cors = server.call(both)
        if decided is None:
            return  # the full way: the endpoint decides alone
        taken.append(1)
        lean_connection, params, lean_callback, lean_cors = decided
        assert chosen.refusal is None
        assert chosen.ask in (Ask(Kind.OPEN, "long-polling"), Ask(Kind.OPEN, "jsonp"))
        assert chosen.client == Resume() and chosen.existing is lean_connection
        assert chosen.params == params
        assert lean_callback == callback and lean_cors == cors

    decide_alike()
    assert len(taken) >= 40  # the lean path did take polls: the property was tested


@pytest.fixture
def websockets(live, recorder):
    """A server with every transport and one foreign origin allowed, where a
    WebSocket handshake went the full way to ``/quiet``, and that client."""
    app, atmosphere = make_app(recorder, ATMOSPHERE_TRANSPORTS=list(ALL),
                               ATMOSPHERE_ALLOWED_ORIGINS="https://app.example.com")
    server = live(app)
    client = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS), track=True, protocol=True,
                      suppress_origin=True)
    return server, atmosphere, app, client


def test_the_lean_path_opens_websockets_as_the_endpoint(websockets):
    server, atmosphere, app, client = websockets
    (route_key,) = lean.websocket._routes[app]
    own = f"http://{route_key[2]}"
    taken = []
    handshake = {
        "method": "GET", "path": None,
        "X-Atmosphere-tracking-id": "0", "X-Atmosphere-Transport": "websocket",
        "X-Atmosphere-TrackMessageSize": "true", "X-atmo-protocol": "true",
        "X-Atmosphere-Framework": "5.0.7", "X-Atmosphere-Offset": None,
        "X-Atmosphere-Post-Body": None, "colour": None,
        "Origin": None, "Cookie": None, "Upgrade": "websocket",
        "header X-Atmosphere-Transport": None,
    }
    alternatives = {
        "method": ["POST", "OPTIONS"], "path": ["/chat", "/quiet/more"],
        "X-Atmosphere-tracking-id": [client.uuid, "5d7b6e7c-36b5-4bd1-9d0f-2a1c4f6e8b90",
                                     "bad id!", None],
        "X-Atmosphere-Transport": ["long-polling", "sse", "close", "bogus", None],
        "X-Atmosphere-TrackMessageSize": ["false", "maybe"],
        "X-atmo-protocol": [None, "false"],
        "X-Atmosphere-Framework": ["2.3.8-javascript", "1.0", None],
        "X-Atmosphere-Offset": ["0", "3", "x"],
        "X-Atmosphere-Post-Body": ["hi"],
        "colour": ["red", "%ff"],
        "Origin": [own, "https://app.example.com", "http://evil.example", "null"],
        "Cookie": ["session=abc", "atmosphere_resume=someone", f"atmosphere_resume={client.cookie}"],
        "Upgrade": [None, "h2c"],
        "header X-Atmosphere-Transport": ["websocket"],
    }
    changes = st.lists(st.one_of(*[st.tuples(st.just(field), st.sampled_from(values))
                                   for field, values in alternatives.items()]), max_size=3)
    query_fields = [f for f in handshake if f.startswith("X-") or f == "colour"]

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(changes)
    def decide_alike(changed):
        request = {**handshake, **dict(changed)}
        query = {k: request[k] for k in query_fields if request[k] is not None}
        header = {k.removeprefix("header "): v for k, v in request.items()
                  if k not in query_fields and k not in ("method", "path") and v is not None}
        environ = environ_of(route_key, request["path"], request["method"], query, header)
        environ[UPGRADE_KEY] = None  # this server can upgrade it

        def both():
            decided = lean.websocket.decide(atmosphere, app, dict(environ))
            with app.request_context(dict(environ)):
                from flask import request as flask_request
                chosen = endpoint.plan(atmosphere, atmosphere.settings(app), None)
                return decided, chosen, flask_request.args.to_dict(), flask_request.view_args

        decided, chosen, args, view_args = server.call(both)
        if decided is None:
            return  # the full way: the endpoint decides alone
        taken.append(1)
        ticket, params, lean_args, uuid, _ = decided
        assert chosen.refusal is None and chosen.ask == Ask(Kind.OPEN, "websocket")
        assert chosen.existing is None and chosen.client == Open(uuid)
        assert chosen.params == params and lean_args == args
        assert ticket.view_args == view_args

    decide_alike()
    assert len(taken) >= 40  # the lean path did open WebSockets: the property was tested
