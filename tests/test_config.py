"""flask_atmosphere.config: the keys, their defaults, their validation, and
the README's table generated from them."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from flask_atmosphere.admission import origin_allowed
from flask_atmosphere.config import (DEFAULTS, KEYS, ConfigError, Settings, markdown_table,
                                     unknown_keys)

ROOT = Path(__file__).absolute().parent.parent
OWN = "http://own.invalid"  # the server's own origin, in origin_allowed calls


def read(key: str, value: object) -> object:
    """The Settings field of ``key`` read from a config holding ``value``."""
    field = key.removeprefix("ATMOSPHERE_").lower()
    return getattr(Settings.from_config({key: value}), field)


# -- the defaults and the one source --------------------------------------------

def test_defaults():
    assert Settings.from_config({}) == Settings(
        heartbeat_interval=30, client_heartbeat_interval=0, max_message_size=1024 * 1024,
        mailbox_max_messages=1000, mailbox_max_bytes=16 * 1024 * 1024,
        mailbox_overflow="disconnect", write_timeout=30, grace_period=60, close_timeout=5,
        long_poll_batch_wait=0.01, transports=("websocket", "sse", "streaming", "long-polling"),
        allowed_origins=None, max_connections=None, static_url_path="/_atmosphere",
        stats_url_path=None, metrics_url_path=None,
        resume_cookie="atmosphere_resume", history_max_messages=1000,
        history_max_bytes=1024 * 1024, backplane=None, redis_cluster=False,
        redis_prefix="atmosphere",
        redis_shards=1, redis_stream_max_length=10_000, redis_stream_max_age=300,
        redis_outbox=10_000, redis_probe_interval=5, redis_timeout=2)
    assert "jsonp" not in Settings.from_config({}).transports


def test_settings_fields_and_defaults_come_from_keys():
    names = [key.name for key in KEYS]
    assert [field.name for field in dataclasses.fields(Settings)] == \
        [name.removeprefix("ATMOSPHERE_").lower() for name in names]
    assert [key.field for key in KEYS] == [field.name for field in dataclasses.fields(Settings)]
    assert list(DEFAULTS) == names
    assert all(name.startswith("ATMOSPHERE_") for name in names)
    assert len(set(names)) == len(names)
    assert Settings.__dataclass_params__.frozen


def test_defaults_dict_read_back_gives_the_defaults():
    assert Settings.from_config(DEFAULTS) == Settings.from_config({})


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key.name)
def test_each_key_is_documented_with_its_unit(key):
    assert key.doc.strip() and key.accepts
    assert "|" not in key.doc
    if key.unit is not None:
        assert key.unit in key.doc.lower(), f"{key.name}: the doc should name {key.unit}"


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings.from_config({}).grace_period = 1


# -- bad values ------------------------------------------------------------------

SECONDS_FROM_ZERO = [-1, -0.5, "-1", "abc", "1 fortnight", "60 seconds", "5kb", "", True, False,
                     None, float("nan"), float("inf"), "inf", "1e999", [30], {}]
SECONDS_POSITIVE = SECONDS_FROM_ZERO + [0, 0.0, "0", "0ms"]
BYTES_POSITIVE = [0, -1, 1.5, "1.5", "0.1kb", "abc", "1 fortnight", "5s", "1tb", "", True,
                  None, float("inf"), 10 ** 400, "1e999"]
COUNT_POSITIVE = [0, -1, 2.5, "2.5", "1k", "1kb", "abc", "", True, False, None, float("nan")]
COUNT_FROM_ZERO = [-1, 2.5, "1k", "abc", "", True, None]

BAD = {
    "ATMOSPHERE_HEARTBEAT_INTERVAL": SECONDS_FROM_ZERO,
    "ATMOSPHERE_CLIENT_HEARTBEAT_INTERVAL": SECONDS_FROM_ZERO,
    "ATMOSPHERE_MAX_MESSAGE_SIZE": BYTES_POSITIVE,
    "ATMOSPHERE_MAILBOX_MAX_MESSAGES": COUNT_POSITIVE,
    "ATMOSPHERE_MAILBOX_MAX_BYTES": BYTES_POSITIVE,
    "ATMOSPHERE_MAILBOX_OVERFLOW": ["drop", "Disconnect", "", None, 1, ["disconnect"]],
    "ATMOSPHERE_WRITE_TIMEOUT": SECONDS_POSITIVE,
    "ATMOSPHERE_GRACE_PERIOD": SECONDS_FROM_ZERO,
    "ATMOSPHERE_CLOSE_TIMEOUT": SECONDS_POSITIVE,
    "ATMOSPHERE_LONG_POLL_BATCH_WAIT": SECONDS_FROM_ZERO,
    "ATMOSPHERE_TRANSPORTS": ["pigeon", "websocket,pigeon", "", [], (), None, ["sse", 1],
                              "polling", "WebSocket", '["sse"', 5, "websocket,,sse"],
    "ATMOSPHERE_ALLOWED_ORIGINS": ["", [], "https://ex*.com", 5, ["https://x.com", None]],
    "ATMOSPHERE_MAX_CONNECTIONS": [0, -1, 2.5, "2.5", "1k", "abc", "", True, float("nan"), "none",
                                   "None"],
    "ATMOSPHERE_STATIC_URL_PATH": ["", "_atmosphere", "static/", 5, ["/x"]],
    "ATMOSPHERE_STATS_URL_PATH": ["", "stats", 1],
    "ATMOSPHERE_METRICS_URL_PATH": ["", "metrics", True],
    "ATMOSPHERE_RESUME_COOKIE": ["", "a b", "a;b", "a=b", "a,b", "a/b", "(a)", 'a"b', "a\tb",
                                 "é", 5, ["atmosphere_resume"]],
    "ATMOSPHERE_HISTORY_MAX_MESSAGES": COUNT_FROM_ZERO,
    "ATMOSPHERE_HISTORY_MAX_BYTES": [-1, 1.5, "0.1kb", "5s", "abc", "", True, None],
    "ATMOSPHERE_BACKPLANE": ["", "localhost:6379", "http://127.0.0.1:6379", "redis://",
                             "redis://host:99999", "redis://host/zero", 6379, ["redis://x"]],
    "ATMOSPHERE_REDIS_CLUSTER": ["yes", "", None, 1, 0, "2"],
    "ATMOSPHERE_REDIS_PREFIX": ["", "a b", "{a}", 5, None],
    "ATMOSPHERE_REDIS_SHARDS": COUNT_POSITIVE,
    "ATMOSPHERE_REDIS_STREAM_MAX_LENGTH": COUNT_POSITIVE,
    "ATMOSPHERE_REDIS_STREAM_MAX_AGE": SECONDS_POSITIVE,
    "ATMOSPHERE_REDIS_OUTBOX": COUNT_POSITIVE,
    "ATMOSPHERE_REDIS_PROBE_INTERVAL": SECONDS_POSITIVE,
    "ATMOSPHERE_REDIS_TIMEOUT": SECONDS_POSITIVE,
}


def test_every_key_has_bad_values():
    assert set(BAD) == set(DEFAULTS)


@pytest.mark.parametrize("key,value", [(key, value) for key, values in BAD.items()
                                       for value in values])
def test_bad_value_is_refused_naming_the_key_and_the_value(key, value):
    with pytest.raises(ConfigError) as refused:
        Settings.from_config({key: value})
    message = str(refused.value)
    assert message.startswith(f"{key} must be "), message
    assert f"not {repr(value)[:40]}" in message, message
    assert isinstance(refused.value, ValueError)


def test_message_format():
    with pytest.raises(ConfigError) as refused:
        Settings.from_config({"ATMOSPHERE_GRACE_PERIOD": "60 seconds"})
    assert str(refused.value).startswith(
        "ATMOSPHERE_GRACE_PERIOD must be a number of seconds >= 0, not '60 seconds'")
    with pytest.raises(ConfigError, match=r"ATMOSPHERE_MAILBOX_OVERFLOW must be "
                                          r"\"disconnect\" or \"drop-oldest\", not 'drop'$"):
        Settings.from_config({"ATMOSPHERE_MAILBOX_OVERFLOW": "drop"})


def test_long_values_are_cut_in_the_message():
    with pytest.raises(ConfigError) as refused:
        Settings.from_config({"ATMOSPHERE_MAX_CONNECTIONS": "x" * 1000})
    assert "x" * 100 not in str(refused.value)
    assert len(str(refused.value)) < 200


def test_the_first_bad_key_is_reported_even_among_good_ones():
    with pytest.raises(ConfigError, match="ATMOSPHERE_CLOSE_TIMEOUT"):
        Settings.from_config({"ATMOSPHERE_GRACE_PERIOD": 10, "ATMOSPHERE_CLOSE_TIMEOUT": 0})


# -- good values -----------------------------------------------------------------

@pytest.mark.parametrize("key,value,expected", [
    ("ATMOSPHERE_GRACE_PERIOD", "60s", 60),
    ("ATMOSPHERE_GRACE_PERIOD", "60", 60),
    ("ATMOSPHERE_GRACE_PERIOD", " 2m ", 120),
    ("ATMOSPHERE_GRACE_PERIOD", "1h", 3600),
    ("ATMOSPHERE_GRACE_PERIOD", 0, 0),
    ("ATMOSPHERE_HEARTBEAT_INTERVAL", 0, 0),
    ("ATMOSPHERE_WRITE_TIMEOUT", "500ms", 0.5),
    ("ATMOSPHERE_WRITE_TIMEOUT", "500MS", 0.5),
    ("ATMOSPHERE_CLOSE_TIMEOUT", "0.5", 0.5),
    ("ATMOSPHERE_CLOSE_TIMEOUT", 2.5, 2.5),
    ("ATMOSPHERE_LONG_POLL_BATCH_WAIT", "10ms", 0.01),
    ("ATMOSPHERE_LONG_POLL_BATCH_WAIT", "0", 0),
    ("ATMOSPHERE_MAX_MESSAGE_SIZE", "1mb", 1024 * 1024),
    ("ATMOSPHERE_MAX_MESSAGE_SIZE", "1MiB", 1024 * 1024),
    ("ATMOSPHERE_MAX_MESSAGE_SIZE", "64KiB", 64 * 1024),
    ("ATMOSPHERE_MAX_MESSAGE_SIZE", "64kb", 64 * 1024),
    ("ATMOSPHERE_MAX_MESSAGE_SIZE", "512 KiB", 512 * 1024),
    ("ATMOSPHERE_MAX_MESSAGE_SIZE", "1.5k", 1536),
    ("ATMOSPHERE_MAX_MESSAGE_SIZE", "100b", 100),
    ("ATMOSPHERE_MAX_MESSAGE_SIZE", 1000.0, 1000),
    ("ATMOSPHERE_MAILBOX_MAX_BYTES", "16MB", 16 * 1024 * 1024),
    ("ATMOSPHERE_MAILBOX_MAX_BYTES", "1g", 1024 ** 3),
    ("ATMOSPHERE_MAILBOX_MAX_MESSAGES", "500", 500),
    ("ATMOSPHERE_MAILBOX_MAX_MESSAGES", 500.0, 500),
    ("ATMOSPHERE_MAILBOX_OVERFLOW", "drop-oldest", "drop-oldest"),
    ("ATMOSPHERE_MAX_CONNECTIONS", None, None),
    ("ATMOSPHERE_MAX_CONNECTIONS", "10000", 10000),
    ("ATMOSPHERE_STATIC_URL_PATH", None, None),
    ("ATMOSPHERE_STATIC_URL_PATH", "/static/atmosphere", "/static/atmosphere"),
    ("ATMOSPHERE_STATS_URL_PATH", "/stats", "/stats"),
    ("ATMOSPHERE_RESUME_COOKIE", None, None),
    ("ATMOSPHERE_RESUME_COOKIE", "__Host-resume", "__Host-resume"),
    ("ATMOSPHERE_HISTORY_MAX_MESSAGES", 0, 0),
    ("ATMOSPHERE_HISTORY_MAX_BYTES", "0", 0),
    ("ATMOSPHERE_HISTORY_MAX_BYTES", "256kib", 256 * 1024),
])
def test_good_value_is_read(key, value, expected):
    assert read(key, value) == expected


def test_numbers_have_their_field_types():
    settings = Settings.from_config({"ATMOSPHERE_GRACE_PERIOD": "2m",
                                     "ATMOSPHERE_MAX_MESSAGE_SIZE": 4096.0})
    assert type(settings.grace_period) is float and type(settings.heartbeat_interval) is float
    assert type(settings.max_message_size) is int and type(settings.mailbox_max_bytes) is int


# -- transports ------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("websocket, sse", ("websocket", "sse")),
    ("long-polling", ("long-polling",)),
    ('["long-polling"]', ("long-polling",)),
    (' [ "sse", "jsonp" ] ', ("sse", "jsonp")),
    (["jsonp", "websocket"], ("jsonp", "websocket")),
    (("sse",), ("sse",)),
    ({"sse", "streaming"}, ("sse", "streaming")),
    ("sse,sse, websocket,sse", ("sse", "websocket")),
])
def test_transports_read(value, expected):
    assert read("ATMOSPHERE_TRANSPORTS", value) == expected


def test_unknown_transport_is_named_with_the_accepted_names():
    with pytest.raises(ConfigError) as refused:
        Settings.from_config({"ATMOSPHERE_TRANSPORTS": "websocket, pigeon"})
    message = str(refused.value)
    assert "ATMOSPHERE_TRANSPORTS" in message and "'pigeon'" in message
    for name in ("websocket", "sse", "streaming", "long-polling", "jsonp"):
        assert name in message


def test_transports_from_the_environment(monkeypatch):
    from flask import Flask
    monkeypatch.setenv("FLASK_ATMOSPHERE_TRANSPORTS", '["long-polling", "jsonp"]')
    monkeypatch.setenv("FLASK_ATMOSPHERE_GRACE_PERIOD", "2m")
    monkeypatch.setenv("FLASK_ATMOSPHERE_MAX_MESSAGE_SIZE", "64KiB")
    monkeypatch.setenv("FLASK_ATMOSPHERE_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    app = Flask(__name__)
    app.config.from_prefixed_env()
    settings = Settings.from_config(app.config)
    assert settings.transports == ("long-polling", "jsonp")
    assert settings.grace_period == 120 and settings.max_message_size == 65536
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


# -- allowed origins -------------------------------------------------------------

def origins(value: object) -> tuple[str, ...] | None:
    stored = read("ATMOSPHERE_ALLOWED_ORIGINS", value)
    assert stored is None or isinstance(stored, tuple)
    return stored


def admits(value: object, origin: str) -> bool:
    return origin_allowed(origin, origins(value), OWN)


def test_wildcard_string_is_not_split_into_characters():
    value = "https://*.example.com"
    assert origins(value) == ("https://*.example.com",)
    for attacker in ("http://attacker.test", "https://attacker.test", "https://example.com",
                     "https://badexample.com", "http://a.example.com"):
        assert not admits(value, attacker), attacker
    assert admits(value, "https://a.example.com")
    assert admits(value, "https://a.b.example.com")


def test_one_origin_as_a_string_admits_exactly_it():
    value = "https://app.example.com:8443"
    assert origins(value) == ("https://app.example.com:8443",)
    assert admits(value, "https://app.example.com:8443")
    for other in ("https://app.example.com", "http://app.example.com:8443",
                  "https://evil.app.example.com:8443", "https://app.example.co:8443",
                  "http://attacker.test", "null"):
        assert not admits(value, other), other


@pytest.mark.parametrize("value,expected", [
    (None, None),
    ("*", ("*",)),
    (["*"], ("*",)),
    ("https://a.example, *", ("*",)),
    (["https://a.example", "*"], ("*",)),
    ("HTTPS://App.Example.COM/", ("https://app.example.com",)),
    ("wss://a.example:8443, ws://b.example", ("https://a.example:8443", "http://b.example")),
    ("http://[::1]:8080", ("http://[::1]:8080",)),
    ("http://[0:0::1]", ("http://[::1]",)),
    ("http://127.0.0.1:5000", ("http://127.0.0.1:5000",)),
    ("https://a.example:0443", ("https://a.example:443",)),
    (["https://a.example", "https://A.example/"], ("https://a.example",)),
    ('["https://a.example", "https://*.b.example"]', ("https://a.example", "https://*.b.example")),
    ({"https://b.example", "https://a.example"}, ("https://a.example", "https://b.example")),
])
def test_origins_are_normalised(value, expected):
    assert origins(value) == expected


def test_star_admits_any_and_none_only_the_own_origin():
    assert admits("*", "http://attacker.test")
    assert origin_allowed(OWN, origins(None), OWN)
    assert not origin_allowed("http://attacker.test", origins(None), OWN)


@pytest.mark.parametrize("value", [
    "https://ex*.com", "https://*", "https://*.com", "https://a.*.example.com",
    "https://*.*.example.com", "https://**.example.com", "https://*example.com",
    "https://example.*", "*.example.com", "ftp://x.com", "file:///etc", "javascript://x.com",
    "https://x.com/path", "https://x.com/path/", "https://x.com?x=1", "https://x.com#f",
    "https://x.com/?", "https://user@x.com", "https://user:pw@x.com", "x.com", "", "  ", ",",
    [], (), "https://x.com:99999", "https://x.com:0", "https://x.com:", "https://x.com:8o",
    "https://x.com,", "https://a.example,,https://b.example", "https://", "https://:443",
    "https://x .com", "https://x_y.com", "https://-x.com", "https://x-.com", "https://x.com.",
    "https://[zz::1]", "https://[fe80::1%25eth0]", "https://exämple.com", "https://x.com https://y.com",
    "null", ["https://x.com", ""], ["https://x.com", 5], '["https://x.com"',
])
def test_malformed_origins_are_refused(value):
    with pytest.raises(ConfigError, match="^ATMOSPHERE_ALLOWED_ORIGINS must be "):
        origins(value)


def test_empty_origins_say_none_is_the_same_origin():
    for value in ("", []):
        with pytest.raises(ConfigError, match="None means the same origin"):
            origins(value)


# The property: whatever shape a list of origins is given in, what is stored
# admits exactly the origins it names. Hosts come from few labels so that
# probes often hit (or nearly hit) an entry.
LABELS = st.sampled_from(["a", "b", "example", "x-1", "test", "attacker", "0"])
SCHEMES = st.sampled_from(["http", "https"])
PORTS = st.sampled_from([None, 80, 443, 8080, 8443])
DEFAULT_PORT = {"http": 80, "https": 443}


@st.composite
def entries(draw):
    """``(scheme, wildcard, labels, port)`` of an allowed origin."""
    wildcard = draw(st.booleans())
    labels = tuple(draw(st.lists(LABELS, min_size=2 if wildcard else 1, max_size=3)))
    return draw(SCHEMES), wildcard, labels, draw(PORTS)


@st.composite
def probes(draw):
    """``(scheme, labels, port)`` of an origin that may try to connect."""
    return draw(SCHEMES), tuple(draw(st.lists(LABELS, min_size=1, max_size=5))), draw(PORTS)


def entry_text(entry) -> str:
    scheme, wildcard, labels, port = entry
    host = ("*." if wildcard else "") + ".".join(labels)
    return f"{scheme}://{host}" + ("" if port is None else f":{port}")


def probe_text(probe) -> str:
    scheme, labels, port = probe
    return f"{scheme}://{'.'.join(labels)}" + ("" if port is None else f":{port}")


def names(entry, probe) -> bool:
    """Whether ``entry`` names ``probe``: same scheme and port (defaults
    filled in), the same host, or for ``*.`` one or more labels more."""
    scheme, wildcard, labels, port = entry
    seen_scheme, seen_labels, seen_port = probe
    if scheme != seen_scheme or (port or DEFAULT_PORT[scheme]) != (seen_port or DEFAULT_PORT[scheme]):
        return False
    if wildcard:
        return len(seen_labels) > len(labels) and seen_labels[-len(labels):] == labels
    return seen_labels == labels


def probes_near(entry):
    """Origins next to ``entry``: one label more or less, other scheme, other port."""
    scheme, wildcard, labels, port = entry
    other = "https" if scheme == "http" else "http"
    return [(scheme, labels, port), (scheme, ("evil",) + labels, port), (scheme, labels[1:] or labels, port),
            (other, ("a",) + labels, port), (scheme, ("a",) + labels, 9999),
            (scheme, ("a",) + labels, None)]


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(entries(), min_size=1, max_size=4), st.lists(probes(), max_size=10),
       st.sampled_from([", ", ",", " , "]), st.booleans())
def test_no_shape_admits_an_origin_it_does_not_name(allowed, extra_probes, separator, upper):
    texts = [entry_text(entry) for entry in allowed]
    if upper:
        texts = [text.upper() for text in texts]
    shapes: list[object] = [texts, tuple(texts), separator.join(texts), json.dumps(texts)]
    if len(texts) == 1:
        shapes.append(texts[0])
    tried = [probe for entry in allowed for probe in probes_near(entry)] + extra_probes + [
        ("http", ("attacker", "test"), None), ("https", ("attacker", "test"), None)]
    for shape in shapes:
        stored = origins(shape)
        assert stored is not None and "*" not in stored
        for probe in tried:
            expected = any(names(entry, probe) for entry in allowed)
            assert origin_allowed(probe_text(probe), stored, OWN) == expected, (shape, probe)


@hypothesis_settings(max_examples=500, deadline=None)
@given(st.text(alphabet="abhpstw0189.*:/,[]@ ?#", max_size=40))
def test_no_string_without_a_star_entry_admits_a_stranger(text):
    """Whatever string is accepted, it admits ``attacker.test`` (which its
    alphabet cannot spell) only if one of its entries is ``*``."""
    try:
        stored = origins(text)
    except ConfigError:
        return
    star = "*" in [part.strip() for part in text.split(",")]
    assert stored is not None and ("*" in stored) == star
    for stranger in ("http://attacker.test", "https://attacker.test", "http://attacker.test:80"):
        assert origin_allowed(stranger, stored, OWN) == star


# -- unknown keys ----------------------------------------------------------------

def test_unknown_keys():
    config = {"ATMOSPHERE_HEARTBEAT_INTERVALL": 10, "ATMOSPHERE_GRACE_PERIOD": 5,
              "ATMOSPHERE_NONSENSE_XYZZY": 1, "SECRET_KEY": "x", "atmosphere_grace": 1,
              "MY_ATMOSPHERE_X": 1, "ATMOSPHERE_TRANSPORT": "sse"}
    assert unknown_keys(config) == [
        ("ATMOSPHERE_HEARTBEAT_INTERVALL", "ATMOSPHERE_HEARTBEAT_INTERVAL"),
        ("ATMOSPHERE_NONSENSE_XYZZY", None),
        ("ATMOSPHERE_TRANSPORT", "ATMOSPHERE_TRANSPORTS")]
    assert unknown_keys(DEFAULTS) == []
    assert unknown_keys({}) == []


# -- the README's table ----------------------------------------------------------

def test_markdown_table_has_a_row_per_key():
    lines = markdown_table().splitlines()
    assert lines[:2] == ["| key | default | meaning |", "| --- | --- | --- |"]
    assert len(lines) == 2 + len(KEYS)
    for line, key in zip(lines[2:], KEYS):
        assert line.startswith(f"| `{key.name}` | `")
        assert line.count(" | ") == 2
    assert '| `["websocket", "sse", "streaming", "long-polling"]` |' in markdown_table()
    assert "| `ATMOSPHERE_ALLOWED_ORIGINS` | `None` |" in markdown_table()


def test_running_the_module_prints_the_table():
    printed = subprocess.run([sys.executable, "-m", "flask_atmosphere.config"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert printed.strip() == markdown_table().strip()


def test_readme_table_is_generated_from_the_keys():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- config-table:start -->", "<!-- config-table:end -->"
    assert start in readme and end in readme, "README.md lacks the config-table markers"
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table.strip() == markdown_table().strip(), \
        "regenerate the README's table with `python -m flask_atmosphere.config`"
