"""Every configuration key of flask-atmosphere, defined once in :data:`KEYS`:
its name, what it accepts, its default, its unit and what it does.
:data:`DEFAULTS`, :class:`Settings` and the README's configuration table
(``python -m flask_atmosphere.config`` prints it) all come from there.

Set the keys on ``app.config`` before ``init_app`` (or ``Atmosphere(app)``)::

    app.config["ATMOSPHERE_GRACE_PERIOD"] = 120
    app.config["ATMOSPHERE_ALLOWED_ORIGINS"] = ["https://app.example.com"]

or from the environment, with ``app.config.from_prefixed_env()``, which reads
``FLASK_ATMOSPHERE_GRACE_PERIOD=120``, ``FLASK_ATMOSPHERE_TRANSPORTS=websocket,sse``
or ``FLASK_ATMOSPHERE_TRANSPORTS='["long-polling"]'``. ``init_app`` reads them
once; a value it does not accept raises :class:`ConfigError`.

Units. Times are in seconds; sizes in bytes. A number may be given as an
``int`` or a ``float`` (never a ``bool``), or as a string: a plain number
(``"60"``, ``"0.5"``), or, for a time, a number ending in ``ms``, ``s``, ``m``
(minutes) or ``h`` (``"500ms"``, ``"2m"``); for a size, a number ending in
``b``, or in ``k``, ``kb`` or ``kib`` (all three 1024 bytes), ``m``, ``mb`` or
``mib`` (1024² bytes), ``g``, ``gb`` or ``gib`` (1024³ bytes), in any case
(``"64KiB"``, ``"16MB"`` is 16 MiB). Counts (of messages, of clients) are
whole numbers without a unit. A key that takes a whole number refuses one
with a fraction (``2.5``, ``"0.1kb"``); a whole float (``1000.0``) is fine.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

__all__ = ["ConfigError", "Key", "KEYS", "DEFAULTS", "Settings", "unknown_keys",
           "markdown_table", "redis_url"]

_PREFIX = "ATMOSPHERE_"


class ConfigError(ValueError):
    """A configuration value that is not accepted. The message names the
    key, the value given and what the key accepts, e.g. ``ATMOSPHERE_GRACE_PERIOD
    must be a number of seconds >= 0, not '60 seconds'``."""


def _show(value: object) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Key:
    """One configuration key.

    Attributes:
        name: the key, ``ATMOSPHERE_...``.
        accepts: what it accepts, worded to follow "must be".
        default: its value when the config lacks it, as one would write it.
        unit: the unit of its number (``"seconds"``, ``"bytes"``,
            ``"messages"``, ``"clients"``), or ``None``.
        doc: one paragraph (markdown) on what it does; it names the unit.
        convert: turns a value given into the value :class:`Settings` holds;
            raises ``ValueError`` (its message, if any, saying more than
            ``accepts``) for a value it does not accept.
    """

    name: str
    accepts: str
    default: object
    unit: str | None
    doc: str
    convert: Callable[[object], object]

    @property
    def field(self) -> str:
        """The :class:`Settings` field: the name, less ``ATMOSPHERE_``, in lower case."""
        return self.name[len(_PREFIX):].lower()

    def parse(self, value: object) -> object:
        """``value`` converted for :class:`Settings`.

        Raises:
            ConfigError: the key does not accept ``value``.
        """
        try:
            return self.convert(value)
        except ValueError as refused:
            detail = f" ({refused})" if str(refused) else ""
            raise ConfigError(
                f"{self.name} must be {self.accepts}, not {_show(value)}{detail}") from None


# -- numbers ---------------------------------------------------------------------

_NUMBER = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?) *([a-zA-Z]*)")
_NO_UNIT = {"": Decimal(1)}
_SECONDS = {"": Decimal(1), "s": Decimal(1), "ms": Decimal("0.001"), "m": Decimal(60),
            "h": Decimal(3600)}
_BYTES = {"": Decimal(1), "b": Decimal(1)} | {
    prefix + suffix: Decimal(1024) ** power
    for power, prefix in enumerate("kmg", start=1) for suffix in ("", "b", "ib")}
_HINTS = {"seconds": "a string may end in ms, s, m or h",
          "bytes": "a string may end in b, k/kb/kib (1024), m/mb/mib (1024²) or g/gb/gib"}


def _number(value: object, unit: str) -> Decimal:
    """``value`` as a finite number of ``unit``: an int, a float, or a string
    holding a number with an optional suffix of that unit (see the module).

    Raises:
        ValueError: anything else (a ``bool`` included).
    """
    if isinstance(value, str):
        units = {"seconds": _SECONDS, "bytes": _BYTES}.get(unit, _NO_UNIT)
        match = _NUMBER.fullmatch(value.strip())
        suffix = match.group(2).lower() if match else ""
        if match is None or suffix not in units:
            raise ValueError(_HINTS.get(unit, ""))
        number = Decimal(match.group(1)) * units[suffix]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = Decimal(value)
    else:
        raise ValueError()
    if not math.isfinite(float(number)):  # nor so large that it is no float
        raise ValueError()
    return number


def _seconds(name: str, default: float, doc: str, *, positive: bool) -> Key:
    """A key holding a number of seconds, > 0 if ``positive``, else >= 0."""
    def convert(value: object) -> float:
        number = _number(value, "seconds")
        if number < 0 or (positive and number == 0):
            raise ValueError()
        return float(number)
    return Key(name, f"a number of seconds {'> 0' if positive else '>= 0'}", default,
               "seconds", doc, convert)


def _whole(name: str, default: int | None, unit: str, doc: str, *, positive: bool,
           optional: bool = False) -> Key:
    """A key holding a whole number of ``unit``, > 0 if ``positive``, else
    >= 0; or ``None`` too if ``optional``."""
    def convert(value: object) -> int | None:
        if optional and value is None:
            return None
        number = _number(value, unit)
        if number != number.to_integral_value() or number < (1 if positive else 0):
            raise ValueError()
        return int(number)
    accepts = f"a whole number of {unit} {'> 0' if positive else '>= 0'}"
    return Key(name, "None or " + accepts if optional else accepts, default, unit, doc, convert)


# -- names and origins -------------------------------------------------------------

def _entries(value: object) -> list[str]:
    """The strings of a list, tuple or set (a set's in sorted order), or of a
    string: a JSON list, or a comma-separated list; each stripped.

    Raises:
        ValueError: another type, or an entry that is not a string.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [part.strip() for part in text.split(",")] if text else []
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError("not a JSON list") from None
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    if not isinstance(value, (list, tuple)):
        raise ValueError()
    if not all(isinstance(item, str) for item in value):
        raise ValueError("every entry must be a string")
    return [item.strip() for item in value]


_TRANSPORT_NAMES = ("websocket", "sse", "streaming", "long-polling", "jsonp")


def _transports(value: object) -> tuple[str, ...]:
    names = _entries(value)
    if not names:
        raise ValueError("no transport at all")
    unknown = [name for name in names if name not in _TRANSPORT_NAMES]
    if unknown:
        raise ValueError("unknown: " + ", ".join(map(repr, unknown)))
    return tuple(dict.fromkeys(names))


_WEB_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_ORIGIN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^/:?#\[\]]*)"
                     r"(?::(?P<port>[^/?#]*))?(?P<rest>.*)", re.DOTALL)
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _origin(entry: str) -> str:
    """An entry of ``ATMOSPHERE_ALLOWED_ORIGINS``, ``scheme://host[:port]``,
    normalised: lower case, ``ws``/``wss`` as ``http``/``https``, no trailing
    ``/``, an IPv6 address compressed.

    Raises:
        ValueError: saying what is wrong with ``entry``.
    """
    text = entry.lower()
    match = _ORIGIN.fullmatch(text)
    if match is None:
        raise ValueError(f"{entry!r} is not scheme://host[:port]")
    scheme = _WEB_SCHEME.get(match["scheme"])
    if scheme is None:
        raise ValueError(f"{entry!r}: the scheme must be http or https")
    if "@" in text:
        raise ValueError(f"{entry!r}: an origin has no user name")
    if match["rest"] not in ("", "/"):
        raise ValueError(f"{entry!r}: nothing may follow host[:port]: no path, query or fragment")
    port = match["port"]
    if port is not None and not (re.fullmatch("[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        raise ValueError(f"{entry!r}: the port must be 1-65535")
    host = match["host"]
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise ValueError(f"{entry!r}: {host} is not an IPv6 address") from None
    else:
        name = host.removeprefix("*.")
        if not _HOST_NAME.fullmatch(name):
            raise ValueError(f"{entry!r}: a '*' may only be the whole first label of the host, "
                             "as in https://*.example.com" if "*" in host
                             else f"{entry!r}: {host!r} is not a host name or IP address")
        if name != host and "." not in name:
            raise ValueError(f"{entry!r}: '*.' must be followed by two labels or more, "
                             "as in https://*.example.com")
    return f"{scheme}://{host}" + (f":{int(port)}" if port is not None else "")


def _origins(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    entries = _entries(value)
    if not entries:
        raise ValueError("None means the same origin only")
    if "" in entries:
        raise ValueError("an empty entry")
    origins = tuple(dict.fromkeys("*" if entry == "*" else _origin(entry) for entry in entries))
    return ("*",) if "*" in origins else origins


def _overflow(value: object) -> str:
    if value not in ("disconnect", "drop-oldest"):
        raise ValueError()
    return str(value)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 6265 cookie-name (RFC 2616 token)


def _cookie_name(value: object) -> str | None:
    if value is not None and not (isinstance(value, str) and _TOKEN.fullmatch(value)):
        raise ValueError()
    return value


def _backplane(value: object) -> str | None:
    """``None``, or a Redis URL (see :func:`redis_url`)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError()
    return redis_url(value)


def redis_url(value: str) -> str:
    """``value`` if it is a Redis URL the backplane can use:
    ``redis://[:password@]host[:port][/db]`` or ``rediss://`` (TLS).

    Raises:
        ValueError: it is not; the message says why.
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("the scheme must be redis:// or rediss://")
    if not parts.hostname:
        raise ValueError("a host is missing")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("the path must be a database number")
    return value


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError()


def _prefix(value: object) -> str:
    if not isinstance(value, str) or not value or not value.isprintable() \
            or any(c in value for c in "{} "):
        raise ValueError()
    return value


def _url_path(value: object) -> str | None:
    if value is not None and not (isinstance(value, str) and value.startswith("/")):
        raise ValueError()
    return value


# -- the keys --------------------------------------------------------------------

#: Every key, in the order of the README's table and of :class:`Settings`.
KEYS: tuple[Key, ...] = (
    _seconds("ATMOSPHERE_HEARTBEAT_INTERVAL", 30, positive=False, doc="""
        Seconds without a write after which the server sends a heartbeat (the
        padding `X`, framed like any write; a line feed for a client that
        acknowledges what it got; a ping for plain WebSocket clients).
        A client's `X-Heartbeat-Server` may raise it, or turn it off with `0`;
        `0` here disables heartbeats. Keep it well under the legacy client's
        300 s timeout."""),
    _seconds("ATMOSPHERE_CLIENT_HEARTBEAT_INTERVAL", 0, positive=False, doc="""
        Seconds between the heartbeats that the handshake asks the client to
        send; `0` asks for none (the Java server's default)."""),
    _whole("ATMOSPHERE_MAX_MESSAGE_SIZE", 1024 * 1024, "bytes", positive=True, doc="""
        The largest inbound message, in bytes: a larger one closes a WebSocket
        with 1009, and an HTTP POST gets 413 (the client stays connected)."""),
    _whole("ATMOSPHERE_MAILBOX_MAX_MESSAGES", 1000, "messages", positive=True, doc="""
        How many messages may wait for one client; past this bound (or
        `ATMOSPHERE_MAILBOX_MAX_BYTES`) its mailbox is full, and
        `ATMOSPHERE_MAILBOX_OVERFLOW` says what happens."""),
    _whole("ATMOSPHERE_MAILBOX_MAX_BYTES", 16 * 1024 * 1024, "bytes", positive=True, doc="""
        The same bound in bytes."""),
    Key("ATMOSPHERE_MAILBOX_OVERFLOW", '"disconnect" or "drop-oldest"', "disconnect", None,
        """What a full mailbox does: `"disconnect"` the slow client (close
        1008, "slow consumer", logged), or `"drop-oldest"` messages to keep
        it (counted, told to the client object as `MessagesLost` once per
        burst, and logged at 1, 10, 100, … drops).""", _overflow),
    _seconds("ATMOSPHERE_WRITE_TIMEOUT", 30, positive=True, doc="""
        Seconds one write may take; a peer that stops reading for longer is
        cut off (its client then has the grace period to come back)."""),
    _seconds("ATMOSPHERE_GRACE_PERIOD", 60, positive=False, doc="""
        Seconds a client may be away (a long-poll client between polls, any
        client reconnecting with its tracking id after its connection dropped)
        and still find its uuid and every message queued meanwhile; after that
        it is disconnected. The Java server's UUIDBroadcasterCache keeps an
        idle client for 60 s too."""),
    _seconds("ATMOSPHERE_CLOSE_TIMEOUT", 5, positive=True, doc="""
        Seconds a closing WebSocket waits for the peer's close frame."""),
    _seconds("ATMOSPHERE_LONG_POLL_BATCH_WAIT", 0.01, positive=False, doc="""
        The most seconds a held long-poll of a client that tracks message
        sizes, woken by a message, waits for the server to be idle before it
        answers, taking what arrives meanwhile: under load each poll then
        carries several messages, on a quiet server it waits for nothing. A
        poll that finds messages queued answers at once; `0` answers as soon
        as one message is there."""),
    Key("ATMOSPHERE_TRANSPORTS",
        "a list of transports among " + ", ".join(_TRANSPORT_NAMES)
        + " (or one string of them, comma-separated)",
        ("websocket", "sse", "streaming", "long-polling"), None, """
        The transports offered: a list, or one comma-separated string, of
        `websocket`, `sse`, `streaming`, `long-polling` (which serves the
        legacy client's `polling` too) and `jsonp`. Without `websocket`,
        upgrades are answered with 501 and the clients fall back. `jsonp` is
        opt-in: it answers `<script>` tags, which send no `Origin` header.""",
        _transports),
    Key("ATMOSPHERE_ALLOWED_ORIGINS",
        'None (the same origin only), "*" (any), or origins scheme://host[:port] '
        '(a list, or one comma-separated string)',
        None, None, """
        Origins whose pages may connect, checked on every transport (403
        otherwise): `None` for the same origin as the request's Host only;
        `"*"` for any; or entries `scheme://host[:port]` (http or https, no
        path), as a list or one comma-separated string, such as
        `"https://app.example.com:8443"`, where the host may start with one
        `*.` label for every subdomain (`"https://*.example.com"`: whole
        labels, not `example.com` itself). Requests without an `Origin`
        header (not from a browser page) are not checked, but for JSONP,
        which must prove its page (`Sec-Fetch-Site` or `Referer`).""", _origins),
    _whole("ATMOSPHERE_MAX_CONNECTIONS", None, "clients", positive=True, optional=True, doc="""
        The most clients one process holds (clients within their grace period
        count); a new one beyond it gets 503. `None`: no limit."""),
    Key("ATMOSPHERE_STATIC_URL_PATH", 'None or a URL path starting with "/"', "/_atmosphere",
        None, """
        The URL path where the bundled JavaScript client is served
        (`<path>/atmosphere-client.js`); `None` serves nothing.""", _url_path),
    Key("ATMOSPHERE_STATS_URL_PATH", 'None or a URL path starting with "/"', None, None, """
        A URL path where `Atmosphere.stats()` is served as JSON (e.g.
        `"/_atmosphere/stats"`); `None` serves nothing. The app's own
        `before_request` hooks apply: guard it as any internal page.""", _url_path),
    Key("ATMOSPHERE_METRICS_URL_PATH", 'None or a URL path starting with "/"', None, None, """
        A URL path where the same figures are served in the Prometheus text
        format (needs the `prometheus` extra, `prometheus_client`); `None`
        serves nothing.""", _url_path),
    Key("ATMOSPHERE_RESUME_COOKIE",
        "None or a cookie name (visible ASCII, without spaces or ()<>@,;:\\\"/[]?={})",
        "atmosphere_resume", None, """
        The name of an HttpOnly cookie holding a random key that binds a
        client's tracking id to the browser that opened it, so that a
        tracking id seen in a log cannot resume the client; `None` turns the
        binding off.""", _cookie_name),
    _whole("ATMOSPHERE_HISTORY_MAX_MESSAGES", 1000, "messages", positive=False, doc="""
        How many of the messages sent to a client are kept, so that a client
        that reports what it received (the bundled client, or SSE with
        `Last-Event-ID`) gets what a dropped connection lost replayed; `0`
        keeps none."""),
    _whole("ATMOSPHERE_HISTORY_MAX_BYTES", 1024 * 1024, "bytes", positive=False, doc="""
        The same bound in bytes."""),
    Key("ATMOSPHERE_BACKPLANE", "None or a Redis URL, redis://[:password@]host[:port][/db] "
        "or rediss:// (TLS)", None, None, """
        How broadcasts reach the clients of other processes: `None` keeps
        them in this one (the embedded default); a Redis URL
        (`"redis://127.0.0.1:6379/0"`, `rediss://` for TLS) carries them
        through Redis to every process of the app.""", _backplane),
    Key("ATMOSPHERE_REDIS_CLUSTER", "True or False", False, None, """
        Whether `ATMOSPHERE_BACKPLANE` names a node of a Redis Cluster (7 or
        later): the backplane then finds the others, keeps each shard's keys
        in one slot and uses sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`).""", _flag),
    Key("ATMOSPHERE_REDIS_PREFIX", "a non-empty string without spaces or braces",
        "atmosphere", None, """
        The prefix of every Redis key and channel of the backplane: apps with
        other prefixes share a Redis without seeing each other.""", _prefix),
    _whole("ATMOSPHERE_REDIS_SHARDS", 1, "shards", positive=True, doc="""
        How many shards the broadcaster paths are spread over, by their first
        segment; broadcasts are ordered per shard (one shard: one order for
        all). More shards spread the load over a Redis Cluster."""),
    _whole("ATMOSPHERE_REDIS_STREAM_MAX_LENGTH", 10_000, "publications", positive=True, doc="""
        How many publications each shard keeps in Redis, so that a process
        that missed some (a reconnect) gets them; older ones are lost to it,
        and announced."""),
    _seconds("ATMOSPHERE_REDIS_STREAM_MAX_AGE", 300, positive=True, doc="""
        Seconds a publication is kept in Redis at most (and an idle shard's
        stream)."""),
    _whole("ATMOSPHERE_REDIS_OUTBOX", 10_000, "publications", positive=True, doc="""
        How many publications may wait for Redis in one process; past it the
        oldest goes to this process's clients only (logged, counted)."""),
    _seconds("ATMOSPHERE_REDIS_PROBE_INTERVAL", 5, positive=True, doc="""
        Seconds between two probes of the backplane's own subscription; one
        that got none back for twice as long (and a second) is restarted."""),
    _seconds("ATMOSPHERE_REDIS_TIMEOUT", 2, positive=True, doc="""
        Seconds a Redis command or connect may take before the backplane
        counts Redis as unreachable."""),
)

_BY_NAME = {key.name: key for key in KEYS}

#: Every key and its default, as one would write it.
DEFAULTS: dict[str, object] = {key.name: key.default for key in KEYS}


@dataclass(frozen=True)
class Settings:
    """The settings of one app, read once from its config at ``init_app``:
    one field per key of :data:`KEYS` (the key without ``ATMOSPHERE_``, in
    lower case). Times are in seconds, sizes in bytes."""

    heartbeat_interval: float
    client_heartbeat_interval: float
    max_message_size: int
    mailbox_max_messages: int
    mailbox_max_bytes: int
    mailbox_overflow: str
    write_timeout: float
    grace_period: float
    close_timeout: float
    long_poll_batch_wait: float
    transports: tuple[str, ...]
    allowed_origins: tuple[str, ...] | None
    max_connections: int | None
    static_url_path: str | None
    stats_url_path: str | None
    metrics_url_path: str | None
    resume_cookie: str | None
    history_max_messages: int
    history_max_bytes: int
    backplane: str | None
    redis_cluster: bool
    redis_prefix: str
    redis_shards: int
    redis_stream_max_length: int
    redis_stream_max_age: float
    redis_outbox: int
    redis_probe_interval: float
    redis_timeout: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Read every key of :data:`KEYS` from ``config`` (its default when
        absent), converted and checked.

        Raises:
            ConfigError: a value the key does not accept (the first one found).
        """
        values: dict[str, Any] = {key.field: key.parse(config.get(key.name, key.default))
                                  for key in KEYS}
        return cls(**values)


def unknown_keys(config: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The keys of ``config`` that start with ``ATMOSPHERE_`` but are not
    known, in the order of ``config``, each with the nearest known key (a
    likely typo; the names are compared without their common prefix) or ``None``."""
    suffixes = [name[len(_PREFIX):] for name in _BY_NAME]
    unknown: list[tuple[str, str | None]] = []
    for name in config:
        if isinstance(name, str) and name.startswith(_PREFIX) and name not in _BY_NAME:
            near = difflib.get_close_matches(name[len(_PREFIX):], suffixes, n=1, cutoff=0.6)
            unknown.append((name, _PREFIX + near[0] if near else None))
    return unknown


def _literal(value: object) -> str:
    """``value`` as one would write it: strings in double quotes, tuples as lists."""
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def markdown_table() -> str:
    """The README's configuration table (markdown, no trailing newline):
    ``| key | default | meaning |``, one row per key of :data:`KEYS`."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key in KEYS:
        meaning = " ".join(key.doc.split()).replace("|", "\\|")
        rows.append(f"| `{key.name}` | `{_literal(key.default)}` | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
