"""The request context a client's events run in (context.py): what an app
reads in ``receive`` (request, session, url_for, g, teardown functions) is
what Flask's own context gives, whether the request is made at once or on
first use."""
from __future__ import annotations

import pytest
from flask import (Flask, copy_current_request_context, g, has_app_context, request, session,
                   url_for)
from flask.ctx import RequestContext
from werkzeug.test import EnvironBuilder

from flask_atmosphere import context
from flask_atmosphere.client import ReadOnlySession
from flask_atmosphere.context import LazyRequestContext, client_request_context


def frozen(data: dict) -> ReadOnlySession:
    """A client's session, as ``opening.new_connection`` keeps it."""
    return ReadOnlySession(data, False)


@pytest.fixture
def app():
    app = Flask(__name__)

    @app.route("/rooms/<int:n>")
    def room(n):
        return ""
    return app


def opening_environ():
    return EnvironBuilder(path="/rooms/7", query_string="q=1", base_url="http://example.com/app",
                          headers={"X-Page": "a"}).get_environ()


def read(app) -> tuple:
    """What an app's ``receive`` reads, in the current context."""
    g.seen = 1
    return (request.path, request.script_root, request.view_args, request.args.get("q"),
            request.headers.get("X-Page"), dict(session), url_for("room", n=2),
            url_for("room", n=3, _external=True), g.seen, request.get_data())


EXPECTED = ("/rooms/7", "/app", {"n": 7}, "1", "a", {"user": "ada"}, "/app/rooms/2",
            "http://example.com/app/rooms/3", 1, b"")


@pytest.mark.parametrize("lazy", [True, False])
def test_the_context_gives_what_flask_gives(app, monkeypatch, lazy):
    monkeypatch.setattr(context, "LAZY", lazy and context.LAZY)
    environ = opening_environ()
    ctx = client_request_context(app, environ, frozen({"user": "ada"}))
    assert isinstance(ctx, LazyRequestContext) == lazy
    with ctx:
        assert read(app) == EXPECTED
    assert not has_app_context()
    # The opening request's environ is copied, never changed.
    assert environ == opening_environ() | {"wsgi.input": environ["wsgi.input"]}


def test_the_request_is_made_on_first_use(app):
    assert context.LAZY  # under the Flask this package is tested with
    ctx = client_request_context(app, opening_environ(), frozen({}))
    with ctx:
        g.x = 1  # g and the session need no request
        assert dict(session) == {} and ctx._request is None
        assert request.view_args == {"n": 7}
        assert ctx._request is not None


@pytest.mark.parametrize("touch", [False, True])
def test_teardown_functions_run_as_under_flask(app, touch):
    torn = []
    app.teardown_request(lambda exc: torn.append((request.path, exc)))
    app.teardown_appcontext(lambda exc: torn.append(("app", exc)))
    with client_request_context(app, opening_environ(), frozen({})):
        if touch:
            assert request.args.to_dict() == {"q": "1"}
    assert torn == [("/rooms/7", None), ("app", None)]
    error = ValueError("boom")
    with pytest.raises(ValueError):
        with client_request_context(app, opening_environ(), frozen({})):
            raise error
    assert torn[2:] == [("/rooms/7", error), ("app", error)]


def test_a_copy_is_flasks_own_context_with_the_same_request_and_session(app):
    with client_request_context(app, opening_environ(), frozen({"user": "ada"})) as ctx:
        copied = ctx.copy()

        @copy_current_request_context
        def later():
            return request.path, dict(session), request.view_args
        first = request._get_current_object()
    assert type(copied) is RequestContext and copied.request is first
    assert later() == ("/rooms/7", {"user": "ada"}, {"n": 7})


def test_a_route_that_no_longer_matches_raises_on_use_not_on_push(app):
    environ = opening_environ()
    environ["PATH_INFO"] = "/gone"
    with client_request_context(app, environ, frozen({})):
        assert request.view_args is None and request.routing_exception.code == 404
        assert url_for("room", n=1) == "/app/rooms/1"
