"""The configuration keys of flask-atmosphere, with their defaults, in one place.

Set them on ``app.config`` before ``init_app``, or from the environment with
``app.config.from_prefixed_env()`` (``FLASK_ATMOSPHERE_HEARTBEAT_INTERVAL=10``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

__all__ = ["DEFAULTS", "Settings"]

#: Every key and its default. Times are in seconds, sizes in bytes.
DEFAULTS = {
    # Server heartbeat period: a heartbeat (the padding "X", framed like any
    # write; a ping for plain WebSocket clients) after this long without a
    # write. A client's X-Heartbeat-Server can raise it or (with 0) disable it.
    # 0 disables. Keep it well under the legacy client's 300 s timeout.
    "ATMOSPHERE_HEARTBEAT_INTERVAL": 30,
    # How often the handshake asks the client to send heartbeats; 0: never
    # (the Java server's default).
    "ATMOSPHERE_CLIENT_HEARTBEAT_INTERVAL": 0,
    # The largest inbound message: a larger one closes a WebSocket with 1009,
    # and an HTTP POST gets 413 (the client stays connected).
    "ATMOSPHERE_MAX_MESSAGE_SIZE": 1024 * 1024,
    # The bounds of each client's mailbox; past either one the client is
    # disconnected (close 1008, "slow consumer") and the reason is logged.
    "ATMOSPHERE_MAILBOX_MAX_MESSAGES": 1000,
    "ATMOSPHERE_MAILBOX_MAX_BYTES": 16 * 1024 * 1024,
    # What a full mailbox does: "disconnect" the slow client, or "drop-oldest"
    # messages (counted, and logged at 1, 10, 100, … drops) to keep it.
    "ATMOSPHERE_MAILBOX_OVERFLOW": "disconnect",
    # Seconds one write may take; a peer that stops reading longer than
    # this is cut off (its client then has the grace period to come back).
    "ATMOSPHERE_WRITE_TIMEOUT": 30,
    # How long a client may be away (a long-poll client between polls, any
    # client reconnecting with its tracking id) and still find its uuid and
    # every message queued meanwhile; after that it is Disconnected. The Java
    # server's UUIDBroadcasterCache keeps an idle client for 60 s too.
    "ATMOSPHERE_GRACE_PERIOD": 60,
    # How long a closing WebSocket waits for the peer's close frame.
    "ATMOSPHERE_CLOSE_TIMEOUT": 5,
    # The most seconds a held long-poll of a client that tracks message
    # sizes, woken by a message, waits for the server to be idle (gevent's
    # loop has nothing else to run) before it answers, taking what arrives
    # meanwhile: under load each poll then carries several messages (fewer
    # requests, less CPU per message); on a quiet server it waits for
    # nothing. A poll that finds messages queued answers at once. 0: answer
    # as soon as one message is there.
    "ATMOSPHERE_LONG_POLL_BATCH_WAIT": 0.01,
    # The transports this app offers. Leave "websocket" out to refuse
    # WebSocket upgrades (HTTP 501, as a server without WebSocket support
    # answers; the clients fall back). "long-polling" covers the legacy
    # client's "polling" too.
    "ATMOSPHERE_TRANSPORTS": ("websocket", "sse", "streaming", "long-polling", "jsonp"),
    # Origins that may connect, checked on every transport (403 otherwise):
    # exact "scheme://host[:port]" entries, "https://*.example.com" for every
    # subdomain (whole labels), or "*" for any. None: the same origin as the
    # request's Host only. Requests without an Origin header (not from a
    # browser page) are not checked.
    "ATMOSPHERE_ALLOWED_ORIGINS": None,
    # The most clients one process holds (clients within their grace period
    # count); a new one beyond it gets 503. None: no limit.
    "ATMOSPHERE_MAX_CONNECTIONS": None,
    # Where the bundled JavaScript client is served
    # (<path>/atmosphere-client.js); None to serve nothing.
    "ATMOSPHERE_STATIC_URL_PATH": "/_atmosphere",
}


@dataclass(frozen=True)
class Settings:
    """The settings of one app, read once from its config at ``init_app``."""
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
    transports: tuple
    allowed_origins: tuple | None
    max_connections: int | None
    static_url_path: str | None

    @classmethod
    def from_config(cls, config: Mapping) -> "Settings":
        """Read the ``ATMOSPHERE_*`` keys of ``config``, defaults filled in."""
        values = {}
        for field in fields(cls):
            key = "ATMOSPHERE_" + field.name.upper()
            values[field.name] = config.get(key, DEFAULTS[key])
        return cls(**values)
