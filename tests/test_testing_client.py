"""``atmosphere.test_client``, used as an app author would: real clients on
every transport, through the real server, in this plain (not monkey-patched)
pytest process; and the README's "Testing your app", run as written."""
from __future__ import annotations

import gc
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from flask import Flask, current_app
from gevent import monkey

from flask_atmosphere import (Atmosphere, AtmosphereClient, ClientDisconnected, ConfigError,
                              Connected, Disconnected, Everyone, JsonMessage, Refused,
                              ServerDisconnected, TextMessage)
from flask_atmosphere.testing import (INIT_ONLY_KEYS, TRANSPORTS, ConnectionClosed,
                                      ReceiveTimeout, RequestRefused, TestServer)

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block of the README's section ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {heading}"
    return match.group(1)


def readme_chat() -> tuple[Flask, Atmosphere]:
    """A fresh app of the README's 30-line chat, run from the README's own text."""
    namespace: dict = {"__name__": "readme_chat"}
    code = readme_block("## A chat in 30 lines")
    # It patches the standard library first, as an entry point does; this
    # test process is not one (the test client needs no patching).
    patch = "from gevent import monkey; monkey.patch_all()"
    assert code.startswith(patch)
    code = "\n" + code[code.index("\n") + 1:]  # the same line numbers
    exec(compile(code, "README chat", "exec"), namespace)
    return namespace["app"], namespace["atmosphere"]


def make_app():
    """An app that records what its clients' ``receive`` saw."""
    app = Flask(__name__)
    atmosphere = Atmosphere(app)
    events: list = []

    @atmosphere.route("/echo")
    class Echo(AtmosphereClient):
        def receive(self, event):
            events.append((self.uuid, event))
            match event:
                case Connected():
                    self.greeted = self.request.args.get("name", "nobody")
                    self.send({"hello": self.greeted,
                               "heartbeat": current_app.config["ATMOSPHERE_HEARTBEAT_INTERVAL"]})
                case TextMessage("bye"):
                    self.close(4000, "asked to leave")
                case TextMessage(text):
                    self.send("echo:" + text)
                case JsonMessage(json):
                    self.broadcast(json, to=Everyone)

    return app, atmosphere, events


def test_this_process_is_not_patched_by_gevent():
    assert not monkey.is_module_patched("socket")
    assert not monkey.is_module_patched("threading")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_readme_chat_on_every_transport(transport):
    app, atmosphere = readme_chat()
    with atmosphere.test_client("/the-chat?name=Ada", transport) as ada, \
            atmosphere.test_client("/the-chat?name=Bob", transport) as bob:
        assert ada.receive_json() == {"author": "Ada", "message": "joined the room",
                                      "event": "joined"}
        assert ada.receive_json()["author"] == "Bob"
        assert bob.receive_json()["author"] == "Bob"

        ada.send_json({"author": "Ada", "message": "hello 👋"})
        hello = bob.receive_json()
        assert (hello["author"], hello["message"]) == ("Ada", "hello 👋")
        assert hello["time"].isdigit()

        bob.send("not json")
        assert bob.receive_json()["message"] == "Only json is allowed"
        bob.send_json({"author": "Bob", "message": "hi"})
        assert ada.receive_json()["message"] == "hi"  # her own "hello" never came back

        bob.close()
        assert ada.receive_json() == {"author": "Bob", "message": "has left the room",
                                      "event": "left"}


def test_one_broadcast_reaches_a_client_of_each_transport_at_once():
    app, atmosphere = readme_chat()
    clients = [atmosphere.test_client(f"/the-chat?name={name}", name) for name in TRANSPORTS]
    try:
        for index, client in enumerate(clients):  # each sees its own arrival and the later ones
            assert [client.receive_json()["author"] for _ in TRANSPORTS[index:]] \
                == list(TRANSPORTS[index:])
        atmosphere.broadcast("/the-chat", {"author": "server", "message": "to all"})
        for client in clients:
            assert client.receive_json() == {"author": "server", "message": "to all"}
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_messages_arrive_deframed_whatever_they_hold(transport):
    app, atmosphere, _ = make_app()
    with atmosphere.test_client("/echo?name=A%20b c", transport) as client:
        assert client.receive_json()["hello"] == "A b c"
        for text in ["X", "12|34", "ünï 😀 𝄞", "two\nlines", " padded ", "{not json"]:
            client.send(text)
            assert client.receive() == "echo:" + text
        assert client.received[-2:] == ["echo: padded ", "echo:{not json"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_close_returns_once_disconnected_has_run(transport):
    app, atmosphere, events = make_app()
    client = atmosphere.test_client("/echo", transport)
    assert isinstance(events[0][1], Connected) and events[0][0] == client.uuid
    assert client.app_client.greeted == "nobody"
    client.close()
    assert events[-1] == (client.uuid, Disconnected(ClientDisconnected()))
    client.close()  # again: nothing


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_the_app_closes(transport):
    app, atmosphere, events = make_app()
    with atmosphere.test_client("/echo", transport) as client:
        client.receive_json()
        client.send("bye")
        client.wait_closed()
        assert events[-1] == (client.uuid, Disconnected(ServerDisconnected()))
        with pytest.raises(ConnectionClosed) as closed:
            client.receive()
        if transport == "websocket":
            assert (closed.value.code, closed.value.reason) == (4000, "asked to leave")
        elif transport == "long-polling":  # its next poll is refused
            assert (closed.value.code, closed.value.reason) == (410, "asked to leave")
        assert client.closed


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_client_raises_with_the_status_and_reason(transport):
    app, atmosphere, events = make_app()

    @atmosphere.before_connect
    def logged_in():
        raise Refused(401, "log in first")

    with pytest.raises(RequestRefused) as refused:
        atmosphere.test_client("/echo", transport)
    assert (refused.value.status, refused.value.reason) == (401, "log in first")
    assert events == []


def test_headers_reach_the_app():
    app, atmosphere, _ = make_app()
    seen = []

    @atmosphere.before_connect
    def look():
        from flask import request
        seen.append((request.headers.get("Authorization"), request.cookies.get("theme")))

    with atmosphere.test_client("/echo", "long-polling",
                                headers={"Authorization": "Bearer t", "Cookie": "theme=dark"}
                                ) as client:
        client.send("hi")  # a POST: with the headers too, and the resume cookie
        assert client.receive_json()["hello"] == "nobody"
    assert set(seen) == {("Bearer t", "dark")} and len(seen) >= 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_config_for_the_test_holds_while_its_clients_are_open(transport):
    app, atmosphere, _ = make_app()
    limits = {"ATMOSPHERE_MAX_MESSAGE_SIZE": "16b", "ATMOSPHERE_HEARTBEAT_INTERVAL": "500ms"}
    with atmosphere.test_client("/echo", transport, config=limits) as client:
        assert client.receive_json()["heartbeat"] == "500ms"  # app.config says it meanwhile
        assert atmosphere.settings(app).max_message_size == 16
        client.send("x" * 16)
        assert client.receive() == "echo:" + "x" * 16
        if transport == "websocket":
            client.send("x" * 17)  # closed with 1009 Message Too Big
            with pytest.raises(ConnectionClosed) as closed:
                client.receive()
            assert closed.value.code == 1009
        else:
            with pytest.raises(RequestRefused) as refused:
                client.send("x" * 17)
            assert refused.value.status == 413
    assert atmosphere.settings(app).max_message_size == 1024 * 1024
    assert app.config["ATMOSPHERE_HEARTBEAT_INTERVAL"] == 30


@pytest.mark.parametrize("transport", ["websocket", "long-polling", "sse"])
def test_heartbeats_are_skipped_and_counted(transport):
    app, atmosphere, _ = make_app()
    with atmosphere.test_client("/echo", transport,
                                config={"ATMOSPHERE_HEARTBEAT_INTERVAL": 0.02}) as client:
        client.receive_json()
        with pytest.raises(ReceiveTimeout) as timeout:  # nothing but heartbeats for 0.1 s
            client.receive(timeout=0.1)
        assert client.heartbeats >= 2
        message = str(timeout.value)
        assert "no message within 0.1s" in message and "heartbeats" in message
        assert '{"hello":"nobody","heartbeat":0.02}' in message  # what came meanwhile
        client.send("still here")
        assert client.receive() == "echo:still here"


def test_bad_config_is_refused_naming_the_key():
    app, atmosphere, _ = make_app()
    with pytest.raises(ConfigError, match="ATMOSPHERE_GRACE_PERIOD must be a number of seconds"):
        atmosphere.test_client("/echo", config={"ATMOSPHERE_GRACE_PERIOD": "soon"})
    with pytest.raises(ConfigError, match="did you mean ATMOSPHERE_GRACE_PERIOD"):
        atmosphere.test_client("/echo", config={"ATMOSPHERE_GRACE_PERIOUD": 1})
    with pytest.raises(ConfigError, match="read once, by init_app"):
        atmosphere.test_client("/echo", config={"ATMOSPHERE_STATIC_URL_PATH": "/x"})
    assert "ATMOSPHERE_REDIS_PREFIX" in INIT_ONLY_KEYS
    with pytest.raises(ValueError, match="transport must be one of"):
        atmosphere.test_client("/echo", "jsonp")
    with atmosphere.test_client("/echo") as client:  # nothing was left behind
        assert client.receive_json()["heartbeat"] == 30


def test_clients_open_at_once_share_one_server_and_its_config():
    app, atmosphere, _ = make_app()
    fast = {"ATMOSPHERE_GRACE_PERIOD": 1}
    with atmosphere.test_client("/echo", config=fast) as first:
        with atmosphere.test_client("/echo", "sse") as second, \
                atmosphere.test_client("/echo", config={"ATMOSPHERE_GRACE_PERIOD": "1s"}) as third:
            assert first.server is second.server is third.server
        with pytest.raises(RuntimeError, match="share one server"):
            atmosphere.test_client("/echo", config={"ATMOSPHERE_GRACE_PERIOD": 2})
        server = first.server
    assert not server.running  # the last client stopped it
    with atmosphere.test_client("/echo") as fourth:  # a fresh server, an empty registry
        assert fourth.server is not server
        assert fourth.server.call(lambda: len(atmosphere.clients())) == 1


def test_a_client_left_open_is_dropped_and_its_server_stopped_by_the_next():
    app, atmosphere, events = make_app()
    client = atmosphere.test_client("/echo", "streaming")
    server, uuid = client.server, client.uuid
    with pytest.warns(ResourceWarning, match="was not closed"):
        del client
        gc.collect()
    with atmosphere.test_client("/echo") as other:
        assert other.server is not server and not server.running
        assert (uuid, Disconnected(ServerDisconnected())) in events


def test_a_server_held_for_several_clients():
    app, atmosphere, _ = make_app()
    with TestServer(app, config={"ATMOSPHERE_HEARTBEAT_INTERVAL": 5}) as server:
        assert server.url("/echo").startswith("http://127.0.0.1:")
        with server.client("/echo", "long-polling") as one:
            assert one.receive_json()["heartbeat"] == 5
        with server.client("/echo") as two:  # the same server
            assert two.server is server and two.receive_json()["heartbeat"] == 5
    assert not server.running and app.config["ATMOSPHERE_HEARTBEAT_INTERVAL"] == 30


def test_an_atmosphere_of_two_apps_needs_to_be_told_which():
    atmosphere = Atmosphere()
    atmosphere.init_app(Flask("one"))
    second = Flask("two")
    atmosphere.init_app(second)
    with pytest.raises(ValueError, match="say which one with app="):
        atmosphere.test_client("/echo")


def test_each_test_takes_a_few_milliseconds():
    app, atmosphere = readme_chat()
    started = time.perf_counter()
    for transport in TRANSPORTS:
        with atmosphere.test_client("/the-chat", transport) as client:
            client.receive_json()
    assert time.perf_counter() - started < 1.0  # four servers started and stopped


def test_importing_the_package_does_not_import_the_test_client():
    code = ("import sys, flask_atmosphere; from flask_atmosphere import Atmosphere; "
            "Atmosphere.test_client; assert 'flask_atmosphere.testing' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_readme_testing_section_runs_as_written(tmp_path):
    """"Testing your app" beside the chat of "A chat in 30 lines", in a
    pytest process of its own, as an app author would run it."""
    (tmp_path / "chat.py").write_text(readme_block("## A chat in 30 lines"), encoding="utf-8")
    (tmp_path / "test_chat.py").write_text(readme_block("## Testing your app"),
                                           encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         "test_chat.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b[1-9]\d* passed", result.stdout), result.stdout


def test_a_closed_websocket_leaves_no_socket_to_the_garbage_collector():
    """The server closes the upgrade request's reader, so the socket is
    closed with the WebSocket, not by the collector with a ResourceWarning
    (an error under ``-W error``, as in the README test's run)."""
    app, atmosphere, _ = make_app()
    gc.collect()
    with atmosphere.test_client("/echo") as client:
        client.receive_json()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert [str(warning.message) for warning in caught] == []
