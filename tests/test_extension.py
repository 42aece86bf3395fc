"""``init_app``: configuration checked at start-up, naming the key; a typo
warned about; a second ``init_app`` refused; the backplane built from the
configuration."""
from __future__ import annotations

import logging

import pytest
from flask import Flask

from flask_atmosphere import Atmosphere, ConfigError
from flask_atmosphere.backplane import MemoryBackplane, RedisBackplane


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
