"""``init_app``: configuration checked at start-up, naming the key; a typo
warned about; a second ``init_app`` refused; the backplane built from the
configuration."""
from __future__ import annotations

import logging
import time

import pytest
from flask import Flask

from flask_atmosphere import Atmosphere, ConfigError, extension
from flask_atmosphere.backplane import MemoryBackplane, RedisBackplane

from conftest import TIMEOUT
from redis_servers import redis_server  # noqa: F401 (a fixture)


def test_a_bad_value_stops_init_app_naming_the_key():
    app = Flask(__name__)
    app.config["ATMOSPHERE_TRANSPORTS"] = ["websocket", "pigeon"]
    with pytest.raises(ConfigError, match="ATMOSPHERE_TRANSPORTS"):
        Atmosphere(app)
    app.config["ATMOSPHERE_TRANSPORTS"] = ["websocket"]
    app.config["ATMOSPHERE_GRACE_PERIOD"] = "1 minute"
    with pytest.raises(ConfigError, match="ATMOSPHERE_GRACE_PERIOD"):
        Atmosphere(app)


def test_a_misspelt_key_is_a_warning_with_the_nearest(caplog):
    app = Flask(__name__)
    app.config["ATMOSPHERE_HEARTBEAT_INTERVALL"] = 10
    with caplog.at_level(logging.WARNING, logger="flask_atmosphere"):
        Atmosphere(app)
    assert "ATMOSPHERE_HEARTBEAT_INTERVALL (did you mean ATMOSPHERE_HEARTBEAT_INTERVAL?)" \
        in caplog.text


def test_init_app_twice_is_a_clear_error():
    app = Flask(__name__)
    atmosphere = Atmosphere(app)
    with pytest.raises(RuntimeError, match="has an Atmosphere already"):
        atmosphere.init_app(app)
    with pytest.raises(RuntimeError, match="has an Atmosphere already"):
        Atmosphere(app)


def test_the_backplane_comes_from_the_configuration_at_init_app():
    atmosphere = Atmosphere()
    assert isinstance(atmosphere.broadcaster.backplane, MemoryBackplane)
    app = Flask(__name__)
    app.config["ATMOSPHERE_BACKPLANE"] = "redis://127.0.0.1:1/0"  # nothing listens: no matter
    app.config["ATMOSPHERE_REDIS_PREFIX"] = "myapp"
    atmosphere.init_app(app)
    backplane = atmosphere.broadcaster.backplane
    try:
        assert isinstance(backplane, RedisBackplane) and backplane.prefix == "myapp"
        assert atmosphere.stats()["backplane"]["up"] is False  # and the app serves on
    finally:
        backplane.stop()


def test_a_deferred_backplane_starts_when_told(monkeypatch, caplog, redis_server):
    """gunicorn's master with ``--preload`` defers (``test_gunicorn.py``:
    each worker starts its own once patched): no threads until
    ``defer_backplane(False)``; a broadcast made meanwhile is said to reach
    no one."""
    monkeypatch.setattr(extension, "_deferred", False)  # as it was, at the end
    extension.defer_backplane(True)
    app = Flask(__name__)
    app.config["ATMOSPHERE_BACKPLANE"] = redis_server.url
    atmosphere = Atmosphere(app)
    assert atmosphere.remote is None  # no forwarding threads
    with caplog.at_level(logging.WARNING, logger="flask_atmosphere"):
        atmosphere.broadcast("/the-chat", "hi")
    assert "reaches no client" in caplog.text
    assert atmosphere.stats()["backplane"]["outbox"] == 0
    extension.defer_backplane(False)
    try:
        assert atmosphere.remote is not None
        with redis_server.client().pubsub(ignore_subscribe_messages=True) as listener:
            listener.psubscribe("*")  # the backplane publishes now
            atmosphere.broadcast("/the-chat", "hi")
            deadline = time.monotonic() + TIMEOUT
            while b"hi" not in ((listener.get_message(timeout=TIMEOUT) or {}).get("data") or b""):
                assert time.monotonic() < deadline  # else: a probe, or a confirmation
    finally:
        atmosphere.remote.stop()
        atmosphere.broadcaster.backplane.stop()
